// SPDX-License-Identifier: LGPL-2.1-only
import which from 'which';
import { execa } from 'execa';
import { KrunfwError } from './errors.js';
import type { Plan } from './plan.js';

/** A host tool or header the build needs, with the packages that provide it. */
export interface Requirement {
  /** The name shown to the user: a program or a header. */
  name: string;
  kind: 'program' | 'header';
  debian: string;
  fedora: string;
}

/** Returns what a native kernel build needs on this host, for the plan's arch. */
export function buildRequirements(plan: { cc: string[]; crossCompile?: string }): Requirement[] {
  const requirements: Requirement[] = [
    { name: 'make', kind: 'program', debian: 'make', fedora: 'make' },
    // The kernel's HOSTCC is gcc, whatever CC is set to.
    { name: 'gcc', kind: 'program', debian: 'gcc', fedora: 'gcc' },
    { name: 'flex', kind: 'program', debian: 'flex', fedora: 'flex' },
    { name: 'bison', kind: 'program', debian: 'bison', fedora: 'bison' },
    { name: 'bc', kind: 'program', debian: 'bc', fedora: 'bc' },
    { name: 'perl', kind: 'program', debian: 'perl', fedora: 'perl' },
    { name: 'tar', kind: 'program', debian: 'tar', fedora: 'tar' },
    { name: 'xz', kind: 'program', debian: 'xz-utils', fedora: 'xz' },
    { name: 'patch', kind: 'program', debian: 'patch', fedora: 'patch' },
    { name: 'libelf.h', kind: 'header', debian: 'libelf-dev', fedora: 'elfutils-libelf-devel' },
    { name: 'openssl/opensslv.h', kind: 'header', debian: 'libssl-dev', fedora: 'openssl-devel' },
  ];
  const cc = plan.cc[0]!;
  if (cc !== 'gcc') requirements.push({ name: cc, kind: 'program', debian: 'gcc', fedora: 'gcc' });
  const cross = plan.crossCompile;
  if (cross) {
    const triple = cross.replace(/-$/, '');
    requirements.push({ name: `${cross}gcc`, kind: 'program', debian: `gcc-${triple}`, fedora: `gcc-${triple}` });
  }
  return requirements;
}

async function isPresent(requirement: Requirement, cc: string[]): Promise<boolean> {
  if (requirement.kind === 'program') return (await which(requirement.name, { nothrow: true })) !== null;
  // Preprocess an empty file that includes the header: the same search path the kernel build uses.
  const [compiler, ...flags] = cc;
  const result = await execa(compiler!, [...flags, '-E', '-include', requirement.name, '-x', 'c', '/dev/null', '-o', '/dev/null'], {
    reject: false,
    stdin: 'ignore',
  });
  return result.exitCode === 0;
}

/** Returns the requirements missing on this host. */
export async function findMissing(requirements: Requirement[], cc: string[]): Promise<Requirement[]> {
  const present = await Promise.all(requirements.map((requirement) => isPresent(requirement, cc)));
  return requirements.filter((_, index) => !present[index]);
}

/** Fails listing every missing tool and the install command for Debian and Fedora. */
export function missingRequirementsError(missing: Requirement[]): KrunfwError {
  const unique = (packages: string[]) => [...new Set(packages)].join(' ');
  return new KrunfwError(`Missing build tools: ${missing.map((requirement) => requirement.name).join(', ')}`, {
    hint: [
      'Install them, then run the build again:',
      `  Debian/Ubuntu: sudo apt-get install ${unique(missing.map((requirement) => requirement.debian))}`,
      `  Fedora:        sudo dnf install ${unique(missing.map((requirement) => requirement.fedora))}`,
    ].join('\n'),
  });
}

export async function checkBuildHost(plan: Plan): Promise<void> {
  const missing = await findMissing(buildRequirements({ cc: plan.cc, crossCompile: plan.kernel.crossCompile }), plan.cc);
  if (missing.length > 0) throw missingRequirementsError(missing);
}

/** Checks the host C compiler, the only host tool a VM build needs (for the link and the self-test). */
export async function checkHostCompiler(plan: Plan): Promise<void> {
  const cc = plan.cc[0]!;
  const missing = await findMissing([{ name: cc, kind: 'program', debian: 'gcc', fedora: 'gcc' }], plan.cc);
  if (missing.length > 0) {
    if (plan.host.os === 'darwin') {
      throw new KrunfwError(`The C compiler ${cc} was not found`, { hint: 'Install the Xcode command line tools: xcode-select --install' });
    }
    throw missingRequirementsError(missing);
  }
}
