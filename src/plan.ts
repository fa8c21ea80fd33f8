// SPDX-License-Identifier: LGPL-2.1-only
import os from 'node:os';
import { join, resolve } from 'node:path';
import { KrunfwError } from './errors.js';
import { type GuestArch, type Host, GUEST_ARCHES, isGuestArch } from './host.js';
import { type LibraryNames, type LibraryVersion, type TargetOs, type Variant, libraryNames } from './library.js';
import type { LoadedBuilder } from './builders/definition.js';
import type { SourceRevision, SourceTree } from './source-tree.js';
import { fragmentPaths } from './stages/config.js';
import { type VmPlan, checkMappablePath, vmNameFor } from './vm.js';
import { DEFAULT_KERNEL_BASE_URL, kernelTarballUrl } from './stages/download.js';
import { KERNEL_TARGETS } from './stages/kernel.js';
import {
  ABI_VERSION,
  DEFAULT_KERNEL_VERSION,
  LIBRARY_MINOR_VERSION,
  LIBRARY_PATCH_VERSION,
  packageRoot,
  toolVersion,
} from './versions.js';

/** The user's request from the command line, before defaults. */
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
  /** The SEV variant's own series, applied after the generic one. */
  sevPatches?: string;
  /** 'generic', or 'sev' for AMD SEV guests (x86_64 on Linux only). */
  variant?: Variant;
  /** SEV: the qboot firmware image (exactly 64 KiB). */
  qboot?: string;
  /** SEV: the initrd, a gzip-compressed cpio archive. */
  initrd?: string;
  /** A libkrunfw-style tree, already read: its kernel version, ABI, config, patches and SEV files. */
  sourceTree?: SourceTree & { revision?: SourceRevision };
  /** Directory with common.config and <arch>.config, instead of the shipped config-generic/. */
  configDirectory?: string;
  /** Extra config fragments, applied after the shipped ones. */
  configFragments?: string[];
  /** Warn instead of failing when the kernel drops a requested option. */
  allowDropped?: boolean;
  /** NR_CPUS of the guest kernel. */
  maxCpus?: number;
  /** Parallel make jobs; defaults to the host's CPU count. */
  jobs?: number;
  /** Output directory for kernel.c, the library and the provenance file. */
  outputDirectory?: string;
  /** On Linux, build in a builder VM instead of on the host. */
  vm?: boolean;
  /** The builder for a VM build, already discovered and selected. */
  builder?: LoadedBuilder;
  /** The krunvm program for a VM build. */
  krunvm?: string;
  /** vCPUs of the builder VM; defaults to the host's CPU count. */
  cpus?: number;
  /** Memory of the builder VM in MiB; defaults to half the host's, between 2048 and 16384. */
  memoryMiB?: number;
  /** Keep the builder VM after the build and reuse it next time. */
  keepVm?: boolean;
  /** Install name of a macOS dylib. */
  installName?: string;
  /** After linking, boot the builder VM with the new library and check its kernel version. */
  smoke?: boolean;
}

/** The kernel tarball's origin: a download or a local file. */
export type KernelSourcePlan =
  | { kind: 'download'; version: string; baseUrl: string; url: string; expectedSha256?: string }
  | { kind: 'tarball'; path: string; expectedSha256?: string };

/** Everything a build does, resolved once before any work starts. */
export interface Plan {
  toolVersion: string;
  /** Build location: this host, or a krunvm builder VM. */
  mode: 'native' | 'vm';
  /** The builder VM, for a VM build. */
  vm?: VmPlan;
  /** Install name of a macOS dylib; the default is the installed location. */
  installName?: string;
  smoke: boolean;
  host: Host;
  guestArch: GuestArch;
  variant: Variant;
  targetOs: TargetOs;
  kernelSource: KernelSourcePlan;
  /** Patch series directories, applied in this order; the SEV series follows the generic one. */
  patchDirectories: Array<{ label: string; path: string }>;
  /** SEV firmware and initrd, bundled beside the kernel. */
  sev?: { qboot: string; initrd: string };
  /** Config fragments in the order they apply. */
  configFragments: string[];
  /** A full kernel config (from a libkrunfw tree), used instead of the fragments. */
  fullConfig?: string;
  /** The libkrunfw-style tree the build reads, and its git state. */
  sourceTree?: SourceTree & { revision?: SourceRevision };
  /** NR_CPUS from --max-cpus; undefined leaves it to the fragments, or 16 when none sets it. */
  maxCpus?: number;
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
    logs: string;
    outputDirectory: string;
  };
}

const KERNEL_VERSION_PATTERN = /^\d+\.\d+(\.\d+)?(-rc\d+)?$/;
const SHA256_PATTERN = /^[0-9a-f]{64}$/;

/** Returns the per-user download cache: KRUNFW_CACHE_DIR, else the platform's cache directory. */
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

/**
 * Picks where the kernel is built. A kernel cannot be built natively on
 * macOS, and libkrun runs only on Apple Silicon there, so a Mac always
 * uses a builder VM. Linux builds natively unless asked for a VM.
 */
export function buildMode(host: Host, vmRequested: boolean): 'native' | 'vm' {
  if (host.os === 'darwin') {
    if (host.cpu !== 'aarch64') {
      throw new KrunfwError(`macOS on ${host.cpu === 'x86_64' ? 'Intel (x86_64)' : host.cpu} is not supported: libkrun, and so krunvm, run only on Apple Silicon Macs.`, {
        hint: 'Build on an Apple Silicon Mac, or on Linux (krunfw-mac link --target-os darwin produces the macOS dylib there).',
      });
    }
    return 'vm';
  }
  if (host.os === 'linux') return vmRequested ? 'vm' : 'native';
  throw new KrunfwError(`Unsupported host operating system: ${host.os}`, { hint: 'krunfw-mac builds on Linux and on macOS (Apple Silicon).' });
}

/** Fails when the variant cannot be built for this host and guest arch, before any work starts. */
export function checkVariantSupported(variant: Variant, host: Host, arch: string | undefined): void {
  if (variant !== 'sev') return;
  const guest = arch ?? host.cpu;
  if (host.os !== 'linux' || guest !== 'x86_64') {
    throw new KrunfwError(`The SEV variant exists only for x86_64 guests on Linux hosts, not for ${guest} on ${host.os}.`, {
      hint: 'AMD SEV is an x86_64 feature, and libkrun supports it only on Linux. Build the generic variant here.',
    });
  }
}

/** Returns the builder VM's default size: all CPUs, and half the memory, kept between what a kernel build needs and what krunvm accepts. */
export function defaultVmSize(host: Host): { cpus: number; memoryMiB: number } {
  return { cpus: host.cpus, memoryMiB: Math.min(16384, Math.max(2048, Math.floor(host.memoryMiB / 2))) };
}

export function resolvePlan(request: BuildRequest, host: Host, env: NodeJS.ProcessEnv = process.env): Plan {
  const mode = buildMode(host, request.vm ?? false);
  const defaultArch = isGuestArch(host.cpu) ? host.cpu : undefined;
  const arch = request.arch ?? defaultArch;
  if (arch === undefined || !isGuestArch(arch)) {
    throw new KrunfwError(`Unsupported guest architecture: ${arch ?? host.cpu}`, {
      hint: `Pass --arch with one of: ${GUEST_ARCHES.join(', ')}.`,
    });
  }
  if (mode === 'vm' && arch !== host.cpu) {
    throw new KrunfwError(`A builder VM builds for the host's own architecture (${host.cpu}), not ${arch}.`, {
      hint: host.os === 'linux' ? 'Drop --vm to cross-compile on the host, or drop --arch.' : 'Drop --arch.',
    });
  }

  const maxCpus = request.maxCpus;
  if (maxCpus !== undefined && (!Number.isInteger(maxCpus) || maxCpus < 2 || maxCpus > 8192)) {
    throw new KrunfwError(`Invalid --max-cpus value: ${request.maxCpus}`, { hint: 'NR_CPUS must be a whole number from 2 to 8192 (the kernel\'s largest limit).' });
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
    kernelSource = { kind: 'tarball', path: resolve(request.kernelTarball), expectedSha256 };
  } else {
    const version = request.kernelVersion ?? request.sourceTree?.kernelVersion ?? DEFAULT_KERNEL_VERSION;
    if (!KERNEL_VERSION_PATTERN.test(version)) {
      throw new KrunfwError(`Invalid kernel version: ${version}`, { hint: 'Use a release number such as 6.12.44.' });
    }
    const baseUrl = (request.mirror ?? env.KRUNFW_KERNEL_MIRROR ?? DEFAULT_KERNEL_BASE_URL).replace(/\/+$/, '');
    kernelSource = { kind: 'download', version, baseUrl, url: kernelTarballUrl(baseUrl, version), expectedSha256 };
  }

  const root = packageRoot();
  const variant: Variant = request.variant ?? 'generic';
  let sev: Plan['sev'];
  if (variant === 'sev') {
    checkVariantSupported(variant, host, arch);
    const qboot = request.qboot ?? request.sourceTree?.qboot;
    const initrd = request.initrd ?? request.sourceTree?.initrd;
    if (!qboot || !initrd) {
      throw new KrunfwError(`The SEV variant needs ${!qboot ? 'the qboot firmware (--qboot FILE or KRUNFW_QBOOT)' : 'an initrd (--initrd FILE or KRUNFW_INITRD)'}`, {
        hint: 'libkrun boots SEV guests through qboot (a 64 KiB firmware image) with an initrd (a gzip-compressed cpio archive); pass both files.',
      });
    }
    sev = { qboot: resolve(qboot), initrd: resolve(initrd) };
  }
  const patchDirectories: Plan['patchDirectories'] = [];
  const tree = request.sourceTree;
  if (tree && request.configFragments?.length) {
    throw new KrunfwError('--config fragments cannot be combined with --source-dir, whose configs are full configs', {
      hint: 'Edit the tree\'s config-libkrunfw_<arch> file instead.',
    });
  }
  if (request.patches !== false) {
    const generic = request.patches ?? (tree ? tree.patchDirectory : join(root, 'patches'));
    const sevSeries = request.sevPatches ?? (tree ? tree.teePatchDirectory : join(root, 'patches', 'sev'));
    if (generic) patchDirectories.push({ label: '', path: resolve(generic) });
    if (variant === 'sev' && sevSeries) patchDirectories.push({ label: 'sev/', path: resolve(sevSeries) });
  }
  const configFragments = tree ? [] : [
    ...fragmentPaths(resolve(request.configDirectory ?? join(root, 'config-generic')), arch),
    ...(variant === 'sev' ? [join(root, 'config-sev', `${arch}.config`)] : []),
    ...(request.configFragments ?? []).map((fragment) => resolve(fragment)),
  ];

  const workDirectoryForVm = workDirectory;
  let vm: VmPlan | undefined;
  if (mode === 'vm') {
    checkMappablePath(workDirectoryForVm);
    if (!request.builder || !request.krunvm) throw new Error('a VM build needs a builder and krunvm');
    const size = defaultVmSize(host);
    const cpus = request.cpus ?? size.cpus;
    const memoryMiB = request.memoryMiB ?? size.memoryMiB;
    if (!Number.isInteger(cpus) || cpus < 1) throw new KrunfwError(`Invalid --cpus value: ${request.cpus}`, { hint: 'Pass a whole number of at least 1.' });
    if (!Number.isInteger(memoryMiB) || memoryMiB < 512) {
      throw new KrunfwError(`Invalid --mem value: ${request.memoryMiB}`, { hint: 'Pass the VM memory in MiB, at least 512; a kernel build needs about 2048.' });
    }
    const name = vmNameFor(workDirectoryForVm);
    vm = {
      krunvm: request.krunvm,
      name,
      builder: request.builder,
      cpus,
      memoryMiB,
      keep: request.keepVm ?? false,
      recordFile: join(workDirectoryForVm, '.krunfw', 'vm', `${name}.json`),
      logFile: join(workDirectoryForVm, '.krunfw', 'vm', 'krunvm.log'),
    };
  }
  const target = KERNEL_TARGETS[arch];
  const crossCompile = host.cpu === arch ? undefined : env.CROSS_COMPILE || target.crossPrefix;
  const targetOs: TargetOs = host.os === 'darwin' ? 'darwin' : 'linux';
  const version: LibraryVersion = tree?.version ?? { abi: ABI_VERSION, minor: LIBRARY_MINOR_VERSION, patch: LIBRARY_PATCH_VERSION };
  const stateDirectory = join(workDirectory, '.krunfw', `${mode === 'vm' ? 'vm-' : ''}${arch}-${variant}`);

  return {
    toolVersion: toolVersion(),
    mode,
    vm,
    installName: request.installName,
    smoke: request.smoke ?? false,
    host,
    guestArch: arch,
    variant,
    targetOs,
    kernelSource,
    patchDirectories,
    sev,
    fullConfig: tree?.configFile,
    sourceTree: tree,
    configFragments,
    maxCpus,
    allowDropped: request.allowDropped ?? false,
    jobs: request.jobs ?? vm?.cpus ?? jobs,
    kernel: {
      makeArch: target.makeArch,
      makeTarget: target.makeTarget,
      crossCompile,
      artifact: target.artifact,
      artifactFormat: arch === 'x86_64' ? 'elf' : 'raw',
    },
    library: { version, names: libraryNames(targetOs, variant, version) },
    cc: compilerCommand(env),
    paths: {
      workDirectory,
      cacheDirectory: defaultCacheDirectory(host, env),
      stateDirectory,
      logs: join(stateDirectory, 'logs'),
      outputDirectory: request.outputDirectory ? resolve(request.outputDirectory) : join(workDirectory, 'out', variant === 'sev' ? `${arch}-sev` : arch),
    },
  };
}
