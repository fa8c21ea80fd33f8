// SPDX-License-Identifier: LGPL-2.1-only
import os from 'node:os';
import { join, resolve } from 'node:path';
import { KrunfwError } from './errors.js';
import { type GuestArch, type Host, GUEST_ARCHES, isGuestArch } from './host.js';
import { type LibraryNames, type LibraryVersion, type TargetOs, type Variant, libraryNames } from './library.js';
import { fragmentPaths } from './stages/config.js';
import { kernelTarballUrl } from './stages/download.js';
import { KERNEL_TARGETS } from './stages/kernel.js';
import {
  ABI_VERSION,
  DEFAULT_KERNEL_BASE_URL,
  DEFAULT_KERNEL_VERSION,
  LIBRARY_MINOR_VERSION,
  LIBRARY_PATCH_VERSION,
  packageRoot,
  toolVersion,
} from './versions.js';

/** What the user asked for on the command line, before defaults. */
export interface BuildRequest {
  /** Guest architecture; defaults to the host's. */
  arch?: string;
  /** Directory holding the build state and outputs; defaults to the current directory. */
  workDirectory?: string;
  /** Kernel release to download. */
  kernelVersion?: string;
  /** A local kernel tarball instead of a download. */
  kernelTarball?: string;
  /** Expected SHA-256 of the tarball, instead of kernel.org's sha256sums.asc. */
  kernelSha256?: string;
  /** Base URL of the kernel.org release tree, for mirrors. */
  mirror?: string;
  /** Patch series directory; false for no patches. */
  patches?: string | false;
  /** Extra config fragments, applied after the shipped ones. */
  configFragments?: string[];
  /** Warn instead of failing when the kernel drops a requested option. */
  allowDropped?: boolean;
  /** NR_CPUS of the guest kernel. */
  maxCpus?: number;
  /** Parallel make jobs; defaults to the host's CPU count. */
  jobs?: number;
  /** Where kernel.c, the library and the provenance file go. */
  outputDirectory?: string;
}

/** Where the kernel tarball comes from. */
export type KernelSourcePlan =
  | { kind: 'download'; version: string; baseUrl: string; url: string; expectedSha256?: string }
  | { kind: 'tarball'; path: string; expectedSha256?: string };

/** Everything a build does, resolved once before any work starts. */
export interface Plan {
  toolVersion: string;
  host: Host;
  guestArch: GuestArch;
  variant: Variant;
  targetOs: TargetOs;
  kernelSource: KernelSourcePlan;
  /** Patch series directory, or null for none. */
  patchDirectory: string | null;
  /** Config fragments in the order they apply. */
  configFragments: string[];
  maxCpus: number;
  allowDropped: boolean;
  jobs: number;
  kernel: {
    /** The kernel's ARCH. */
    makeArch: string;
    makeTarget: string;
    /** CROSS_COMPILE prefix, or undefined on a native build. */
    crossCompile?: string;
    /** The artifact's path inside the kernel tree. */
    artifact: string;
    /** Whether the artifact is an ELF file (bundled by segments) or a raw image. */
    artifactFormat: 'elf' | 'raw';
  };
  library: { version: LibraryVersion; names: LibraryNames };
  /** The host C compiler and its leading arguments, from CC. */
  cc: string[];
  paths: {
    workDirectory: string;
    cacheDirectory: string;
    /** Build tree, stamps and logs for this arch and variant. */
    stateDirectory: string;
    tree: string;
    logs: string;
    outputDirectory: string;
  };
}

const KERNEL_VERSION_PATTERN = /^\d+\.\d+(\.\d+)?(-rc\d+)?$/;
const SHA256_PATTERN = /^[0-9a-f]{64}$/;

/** The per-user download cache: KRUNFW_CACHE_DIR, else the platform's cache directory. */
export function defaultCacheDirectory(host: Host, env: NodeJS.ProcessEnv): string {
  if (env.KRUNFW_CACHE_DIR) return resolve(env.KRUNFW_CACHE_DIR);
  if (host.os === 'darwin') return join(os.homedir(), 'Library', 'Caches', 'krunfw-mac');
  return join(env.XDG_CACHE_HOME || join(os.homedir(), '.cache'), 'krunfw-mac');
}

/** Splits CC the way make does for simple values ("gcc", "ccache gcc"); no shell quoting. */
export function compilerCommand(env: NodeJS.ProcessEnv): string[] {
  const words = (env.CC ?? '').trim().split(/\s+/).filter(Boolean);
  return words.length > 0 ? words : ['cc'];
}

export function resolvePlan(request: BuildRequest, host: Host, env: NodeJS.ProcessEnv = process.env): Plan {
  const defaultArch = isGuestArch(host.cpu) ? host.cpu : undefined;
  const arch = request.arch ?? defaultArch;
  if (arch === undefined || !isGuestArch(arch)) {
    throw new KrunfwError(`Unsupported guest architecture: ${arch ?? host.cpu}`, {
      hint: `Pass --arch with one of: ${GUEST_ARCHES.join(', ')}.`,
    });
  }
  if (host.os !== 'linux') {
    throw new KrunfwError(`Native kernel builds need a Linux host; this host is ${host.os}.`);
  }

  const maxCpus = request.maxCpus ?? 16;
  if (!Number.isInteger(maxCpus) || maxCpus < 2) {
    throw new KrunfwError(`Invalid --max-cpus value: ${request.maxCpus}`, { hint: 'NR_CPUS must be a whole number of at least 2.' });
  }
  const jobs = request.jobs ?? host.cpus;
  if (!Number.isInteger(jobs) || jobs < 1) {
    throw new KrunfwError(`Invalid --jobs value: ${request.jobs}`, { hint: 'Pass a whole number of at least 1.' });
  }
  const expectedSha256 = request.kernelSha256?.toLowerCase();
  if (expectedSha256 !== undefined && !SHA256_PATTERN.test(expectedSha256)) {
    throw new KrunfwError(`Invalid --kernel-sha256 value: ${request.kernelSha256}`, { hint: 'Pass 64 hexadecimal digits.' });
  }

  const workDirectory = resolve(request.workDirectory ?? process.cwd());
  let kernelSource: KernelSourcePlan;
  if (request.kernelTarball !== undefined) {
    kernelSource = { kind: 'tarball', path: resolve(workDirectory, request.kernelTarball), expectedSha256 };
  } else {
    const version = request.kernelVersion ?? DEFAULT_KERNEL_VERSION;
    if (!KERNEL_VERSION_PATTERN.test(version)) {
      throw new KrunfwError(`Invalid kernel version: ${version}`, { hint: 'Use a release number such as 6.12.44.' });
    }
    const baseUrl = (request.mirror ?? env.KRUNFW_KERNEL_MIRROR ?? DEFAULT_KERNEL_BASE_URL).replace(/\/+$/, '');
    kernelSource = { kind: 'download', version, baseUrl, url: kernelTarballUrl(baseUrl, version), expectedSha256 };
  }

  const root = packageRoot();
  const patchDirectory = request.patches === false ? null : resolve(workDirectory, request.patches ?? join(root, 'patches'));
  const configFragments = [
    ...fragmentPaths(join(root, 'config-generic'), arch),
    ...(request.configFragments ?? []).map((fragment) => resolve(workDirectory, fragment)),
  ];

  const target = KERNEL_TARGETS[arch];
  const crossCompile = host.cpu === arch ? undefined : env.CROSS_COMPILE || target.crossPrefix;
  const variant: Variant = 'generic';
  const version: LibraryVersion = { abi: ABI_VERSION, minor: LIBRARY_MINOR_VERSION, patch: LIBRARY_PATCH_VERSION };
  const stateDirectory = join(workDirectory, '.krunfw', `${arch}-${variant}`);

  return {
    toolVersion: toolVersion(),
    host,
    guestArch: arch,
    variant,
    targetOs: 'linux',
    kernelSource,
    patchDirectory,
    configFragments,
    maxCpus,
    allowDropped: request.allowDropped ?? false,
    jobs,
    kernel: {
      makeArch: target.makeArch,
      makeTarget: target.makeTarget,
      crossCompile,
      artifact: target.artifact,
      artifactFormat: arch === 'x86_64' ? 'elf' : 'raw',
    },
    library: { version, names: libraryNames('linux', variant, version) },
    cc: compilerCommand(env),
    paths: {
      workDirectory,
      cacheDirectory: defaultCacheDirectory(host, env),
      stateDirectory,
      tree: join(stateDirectory, 'tree'),
      logs: join(stateDirectory, 'logs'),
      outputDirectory: resolve(workDirectory, request.outputDirectory ?? join('out', arch)),
    },
  };
}
