// SPDX-License-Identifier: LGPL-2.1-only
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleSourceFiles, LICENSE_FILES } from './dist.js';
import { KrunfwError } from './errors.js';
import type { Executor } from './exec/executor.js';
import { sha256File } from './hash.js';
import type { Host } from './host.js';
import { applyInstall, parseLibraryFileName, planInstall, readProvenance } from './install.js';
import { type TargetOs, type Variant, libraryBaseName, libraryNames } from './library.js';
import { linkLibrary } from './link.js';
import type { Provenance } from './provenance.js';
import { runSelfTest } from './selftest/selftest.js';
import { ABI_VERSION, LIBRARY_MINOR_VERSION, LIBRARY_PATCH_VERSION } from './versions.js';

/** A request to the Homebrew hook: the prebuilt directory, the target, and the prefix to install into. */
export interface HookRequest {
  /** The unpacked prebuilt directory (a formula's build directory). */
  directory: string;
  /** Installation prefix: the formula's prefix. */
  prefix: string;
  /** The prefix that the dylib's install name points into: the formula's opt prefix. */
  optPrefix: string;
  targetOs: TargetOs;
  host: Host;
  /** The C compiler and its leading arguments, from CC (Homebrew's compiler shim). */
  cc: string[];
  /** The clang target when the dylib is linked on another OS than macOS. */
  crossTarget?: string;
  executor: Executor;
  signal?: AbortSignal;
  /** Called with a line of progress after each step. */
  report?: (message: string) => void;
}

export interface HookResult {
  /** The installed library. */
  library: string;
  /** The dylib's install name, on macOS. */
  installName?: string;
  selfTest: 'passed' | 'skipped';
  /** Every file and symlink installed. */
  installed: string[];
  arch: string;
  kernelVersion: string;
}

/**
 * Returns the guest architecture that a library for this target carries.
 * libkrun runs only on Apple Silicon on macOS, and a Linux library carries
 * a guest of its host's architecture.
 */
export function targetArch(targetOs: TargetOs, host: Host): string {
  return targetOs === 'darwin' ? 'aarch64' : host.cpu;
}

/** Parses SHA256SUMS lines (`<hash>  <path>`) into a map from path to hash. */
function parseChecksums(text: string, path: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const match = /^([0-9a-f]{64}) [ *](.+)$/.exec(line);
    if (!match || match[2]!.split('/').includes('..') || match[2]!.startsWith('/')) {
      throw new KrunfwError(`${path} has an invalid line: ${line}`, { hint: 'Unpack the prebuilt archive again.' });
    }
    sums.set(match[2]!, match[1]!);
  }
  return sums;
}

/**
 * Checks an unpacked prebuilt directory before anything is compiled. The
 * bundle must be for this target's architecture and this ABI, kernel.c must
 * be the file the build recorded, and every file SHA256SUMS lists must be
 * intact. Fails listing every difference.
 */
export async function checkPrebuilt(directory: string, target: { os: TargetOs; arch: string }): Promise<Provenance> {
  const provenance = await readProvenance(join(directory, 'provenance.json'));
  const differences: string[] = [];
  const variant = provenance.variant as Variant;

  if (provenance.arch !== target.arch) {
    differences.push(`architecture: the bundle is for ${provenance.arch}, a ${target.os === 'darwin' ? 'macOS' : 'Linux'} library here needs ${target.arch}`);
  }
  const toolNames = libraryNames(target.os, variant, { abi: ABI_VERSION, minor: LIBRARY_MINOR_VERSION, patch: LIBRARY_PATCH_VERSION });
  if (provenance.abi !== ABI_VERSION) {
    differences.push(`ABI: the bundle was built for ABI ${provenance.abi}, this krunfw-mac links ABI ${ABI_VERSION} (${toolNames.soname})`);
  }
  const recordedNames = [libraryNames('linux', variant, { abi: provenance.abi, minor: 0, patch: 0 }).soname, libraryNames('darwin', variant, { abi: provenance.abi, minor: 0, patch: 0 }).soname];
  if (!recordedNames.includes(provenance.library.soname)) {
    differences.push(`library name: provenance.json names ${provenance.library.soname}, which is not the ABI ${provenance.abi} name (${recordedNames.join(' or ')})`);
  }
  if (variant === 'sev' && target.os === 'darwin') {
    differences.push('variant: the bundle is the SEV variant, which libkrun has only on Linux');
  }

  const mismatchedBundles = new Set<string>();
  for (const bundle of bundleSourceFiles(provenance)) {
    const actual = await sha256File(join(directory, bundle.file)).catch(() => undefined);
    if (actual === bundle.sha256) continue;
    mismatchedBundles.add(bundle.file);
    differences.push(actual === undefined
      ? `${bundle.file}: not found`
      : `${bundle.file}: SHA-256 ${actual}, but provenance.json records ${bundle.sha256} (the file was edited or comes from another build)`);
  }

  const checksumsPath = join(directory, 'SHA256SUMS');
  const checksumsText = await readFile(checksumsPath, 'utf8').catch(() => undefined);
  if (checksumsText === undefined) {
    differences.push('SHA256SUMS: not found');
  } else {
    const sums = parseChecksums(checksumsText, checksumsPath);
    for (const required of [...bundleSourceFiles(provenance).map((bundle) => bundle.file), 'provenance.json']) {
      if (!sums.has(required)) differences.push(`SHA256SUMS: does not list ${required}`);
    }
    for (const [path, expected] of sums) {
      // A bundle that differs from provenance.json is reported once, above.
      if (mismatchedBundles.has(path)) continue;
      const actual = await sha256File(join(directory, path)).catch(() => undefined);
      if (actual === undefined) differences.push(`${path}: listed in SHA256SUMS but not found`);
      else if (actual !== expected) differences.push(`${path}: SHA-256 ${actual}, but SHA256SUMS lists ${expected}`);
    }
  }

  if (differences.length > 0) {
    throw new KrunfwError(`The prebuilt bundle in ${directory} does not match this target or is damaged`, {
      details: differences.join('\n'),
      hint: `Use the prebuilt archive made for ${target.os === 'darwin' ? 'macOS' : 'Linux'} on ${target.arch} (${libraryBaseName(variant)}-prebuilt-${target.arch}.tar.gz), unpacked as it was downloaded, or run krunfw-mac dist again from a finished build.`,
    });
  }
  return provenance;
}

/**
 * Loads the library the way libkrun does and checks that it returns exactly
 * the bundle the build recorded. The prebuilt directory has no kernel
 * artifact to compare with, so the self-test program gets an empty one and
 * writes out the bundle it reads, whose SHA-256 must match provenance.json.
 * NOTE: the SEV variant's qboot and initrd are not compared: the prebuilt
 * directory holds only their C bundles, checked against provenance.json.
 */
async function selfTestPrebuilt(library: string, provenance: Provenance, workDirectory: string, request: HookRequest): Promise<void> {
  const emptyArtifact = join(workDirectory, 'empty');
  const dump = join(workDirectory, 'bundle.bin');
  await writeFile(emptyArtifact, '');
  await runSelfTest(
    {
      library,
      abi: ABI_VERSION,
      loadAddress: BigInt(provenance.bundle.loadAddress),
      entryAddress: BigInt(provenance.bundle.entryAddress),
      artifact: emptyArtifact,
      artifactOffset: 0,
      artifactLength: 0,
      dumpKernel: dump,
      workDirectory: join(workDirectory, 'selftest'),
      cc: request.cc,
    },
    request.executor,
  );
  const returned = await sha256File(dump);
  if (returned !== provenance.bundle.sha256) {
    throw new KrunfwError(`Self-test of ${library} failed: the kernel it returns is not the recorded bundle`, {
      details: `returned SHA-256         ${returned}\nprovenance.json SHA-256  ${provenance.bundle.sha256}`,
      hint: 'The compiler changed the bundle; compile with another CC, and report a bug if it fails again.',
    });
  }
}

/**
 * Runs the install step of a Homebrew formula. Checks the prebuilt
 * directory, compiles the bundle with CC into the library (a dylib's install
 * name points into the formula's opt prefix), runs the self-test when the
 * library can be loaded on this host, and installs the library, its
 * symlinks, the license texts and provenance.json into the prefix. Boots no
 * VM and uses no network.
 */
export async function runHomebrewHook(request: HookRequest): Promise<HookResult> {
  const report = request.report ?? (() => {});
  const arch = targetArch(request.targetOs, request.host);
  const provenance = await checkPrebuilt(request.directory, { os: request.targetOs, arch });
  report(`Checked ${request.directory}: Linux ${provenance.kernel.version} for ${provenance.arch}, ABI ${provenance.abi}, bundle intact`);

  const variant = provenance.variant as Variant;
  // A Linux build's file name carries the library's minor and patch version; keep them.
  const recorded = parseLibraryFileName(provenance.library.file);
  const version = recorded?.os === 'linux'
    ? { ...recorded.version, abi: ABI_VERSION }
    : { abi: ABI_VERSION, minor: LIBRARY_MINOR_VERSION, patch: LIBRARY_PATCH_VERSION };
  const names = libraryNames(request.targetOs, variant, version);
  const installName = request.targetOs === 'darwin' ? join(request.optPrefix, 'lib', names.fileName) : undefined;
  const workDirectory = await mkdtemp(join(tmpdir(), 'krunfw-homebrew-'));
  try {
    const libraryDirectory = join(workDirectory, 'lib');
    const library = await linkLibrary(
      {
        sources: bundleSourceFiles(provenance).map((bundle) => join(request.directory, bundle.file)),
        outputDirectory: libraryDirectory,
        targetOs: request.targetOs,
        version,
        names,
        cc: request.cc,
        installName,
        crossTarget: request.crossTarget,
      },
      (command) => request.executor.run(command, { signal: request.signal }),
    );
    report(`Compiled ${names.fileName} with ${request.cc.join(' ')}${installName ? ` (install name ${installName})` : ''}`);

    let selfTest: HookResult['selfTest'] = 'skipped';
    if (request.targetOs === request.host.os) {
      await selfTestPrebuilt(library, provenance, workDirectory, request);
      selfTest = 'passed';
      report('Self-test passed: the library returns the recorded bundle');
    } else {
      report(`Self-test skipped: a ${request.targetOs} library cannot be loaded on ${request.host.os}`);
    }

    const extraFiles = [
      { path: 'LICENSE', source: join(request.directory, 'LICENSE') },
      ...LICENSE_FILES.map(({ name }) => ({ path: name, source: join(request.directory, name) })),
      { path: `share/${libraryBaseName(variant)}/provenance.json`, source: join(request.directory, 'provenance.json') },
    ];
    for (const extra of extraFiles) {
      if (!(await stat(extra.source).catch(() => undefined))?.isFile()) {
        throw new KrunfwError(`${extra.source} is missing from the prebuilt directory`, { hint: 'Unpack the prebuilt archive again.' });
      }
    }
    // Homebrew records the formula's files itself, so no install record is kept.
    const plan = await planInstall({
      libraryDirectory,
      names,
      os: request.targetOs,
      variant,
      prefix: request.prefix,
      libdir: 'lib',
      extraFiles,
      keepRecord: false,
    });
    await applyInstall(plan, { signal: request.signal });
    const installed = plan.actions.filter((action) => action.kind !== 'directory').map((action) => action.path);
    report(`Installed into ${request.prefix}: ${installed.length} files and symlinks`);
    return {
      library: join(request.prefix, 'lib', names.fileName),
      installName,
      selfTest,
      installed,
      arch: provenance.arch,
      kernelVersion: provenance.kernel.version,
    };
  } finally {
    await rm(workDirectory, { recursive: true, force: true });
  }
}
