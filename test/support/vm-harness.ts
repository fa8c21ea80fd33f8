// SPDX-License-Identifier: LGPL-2.1-only
/**
 * Helpers for the builder VM tests. A harness is a krunvm test double with
 * what a `build --vm` needs around it: an installed libkrunfw for doctor, and
 * private cache and config directories. The stand-in builder's `make` only
 * pretends to build a kernel, so that VM faults can be tested in seconds.
 */
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { buildElf, patternBytes } from './elf-fixture.js';
import { type KrunvmBin, type KrunvmBinOptions, makeKrunvmBin, readKrunvmCalls } from './krunvm-double.js';
import { REPOSITORY, runCli } from './cli.js';

/** The image of the shipped debian builder; the double runs any image named debian. */
export const DEBIAN_IMAGE = 'docker.io/library/debian:bookworm-20251117';

/** The argument after which KrunvmExecutor's guest shell receives the command's own argv. */
const GUEST_ARGV_MARKER = 'krunfw-guest';

/** A krunvm double plus the host state a VM build reads. */
export interface VmHarness {
  bin: KrunvmBin;
  /** Temporary directory for work directories and other files of one test file. */
  root: string;
  /** Holds a tiny libkrunfw.so.5, which doctor requires because a real builder VM boots with it. */
  libraryDirectory: string;
  /** bin.env plus LD_LIBRARY_PATH, a private download cache and config directory, and NO_COLOR. */
  env: NodeJS.ProcessEnv;
  /** Deletes every VM the double lists, then removes the double and `root`. */
  remove(): Promise<void>;
}

/** Creates a krunvm double and the files around it in a fresh temporary directory. */
export async function makeVmHarness(options: KrunvmBinOptions = {}): Promise<VmHarness> {
  const bin = await makeKrunvmBin(options);
  const root = await mkdtemp(join(tmpdir(), 'krunfw-vm-test-'));
  const libraryDirectory = join(root, 'lib');
  const env: NodeJS.ProcessEnv = {
    ...bin.env,
    LD_LIBRARY_PATH: libraryDirectory,
    KRUNFW_CACHE_DIR: join(root, 'cache'),
    XDG_CONFIG_HOME: join(root, 'config'),
    NO_COLOR: '1',
  };
  delete env.BUILDER;
  await makeInstalledLibkrunfw(libraryDirectory, root);
  return {
    bin,
    root,
    libraryDirectory,
    env,
    async remove(): Promise<void> {
      if (options.storageVolume ?? true) {
        for (const name of await listVmNames(env)) await execa('krunvm', ['delete', name], { env, stdin: 'ignore', reject: false });
      }
      await bin.remove();
      await rm(root, { recursive: true, force: true });
    },
  };
}

/**
 * Links a libkrunfw.so.5 from a few bytes with krunfw-mac itself. Nothing
 * boots it: it only has to be a shared library where doctor looks.
 */
export async function makeInstalledLibkrunfw(libraryDirectory: string, scratch: string): Promise<void> {
  await mkdir(libraryDirectory, { recursive: true });
  const raw = join(scratch, 'installed-kernel.bin');
  const source = join(scratch, 'installed-kernel.c');
  await writeFile(raw, patternBytes(4096, 1));
  for (const args of [['bundle', raw, '--output', source], ['link', source, '--output-dir', libraryDirectory]]) {
    const result = await runCli(args);
    if (result.exitCode !== 0) throw new Error(`krunfw-mac ${args[0]} failed:\n${result.stderr}`);
  }
}

/** Returns the names of the double's VMs, from `krunvm list` as a user would see them. */
export async function listVmNames(env: NodeJS.ProcessEnv): Promise<string[]> {
  const result = await execa('krunvm', ['list'], { env, stdin: 'ignore' });
  // A VM's name starts a line and its properties are indented under it.
  return result.stdout
    .split('\n')
    .filter((line) => /^\S/.test(line) && line.trim() !== 'No microVMs found')
    .map((line) => line.trim());
}

/**
 * Returns the ids of processes whose root directory is at or below
 * `directory`: guest processes of the double's VMs, which run chrooted into
 * the VM's root file system under the double's state directory.
 */
export async function processesRootedUnder(directory: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const root = await readlink(join('/proc', entry, 'root')).catch(() => undefined);
    if (root !== undefined && (root === directory || root.startsWith(`${directory}/`))) found.push(Number(entry));
  }
  return found;
}

/** Returns the guest argv of a `krunvm start` call made by KrunvmExecutor, or undefined for any other call. */
export function guestArgv(call: readonly string[]): string[] | undefined {
  if (call[0] !== 'start') return undefined;
  const index = call.indexOf(GUEST_ARGV_MARKER);
  return index < 0 ? undefined : call.slice(index + 1);
}

/** Returns the krunvm calls recorded after the first `skip` ones, so a test can look at one build's calls. */
export async function callsSince(bin: KrunvmBin, skip: number): Promise<string[][]> {
  return (await readKrunvmCalls(bin.stateDirectory)).slice(skip);
}

/** Returns the arguments of a VM build of Debian's 6.1 source with the debian builder and the small test config. */
export function debianBuildArguments(workDirectory: string, extra: string[] = []): string[] {
  return [
    'build',
    '--vm',
    '--builder', 'debian',
    '--kernel-tarball', '/usr/src/linux-source-6.1.tar.xz',
    '--config-dir', join(REPOSITORY, 'test', 'fixtures', 'small-config'),
    '--work-dir', workDirectory,
    ...extra,
  ];
}

/**
 * What the stand-in `make` does for the kernel target: `copy` installs the
 * tarball's fake-vmlinux, `fail` exits 2, `missing` exits 0 without writing
 * anything, and `hang` touches /work/fake-make-started and sleeps.
 */
export type FakeKernelTarget = 'copy' | 'fail' | 'missing' | 'hang';

/**
 * A POSIX shell stand-in for make in the builder VM. It handles the three
 * calls the kernel stages make: `make -s kernelversion`, `make ...
 * KCONFIG_ALLCONFIG=FILE allnoconfig` (which copies the fragment to .config,
 * so the config audit finds every requested value) and `make ... vmlinux`.
 */
const FAKE_MAKE = `#!/bin/sh
fragment=
for argument in "$@"; do
  case "$argument" in
    KCONFIG_ALLCONFIG=*) fragment=\${argument#KCONFIG_ALLCONFIG=} ;;
    kernelversion) echo 6.1.0; exit 0 ;;
    allnoconfig) cp -- "$fragment" .config; exit $? ;;
    vmlinux)
      case "$FAKE_KERNEL_TARGET" in
        copy) cp fake-vmlinux vmlinux; exit $? ;;
        fail) echo "fake make: vmlinux failed" >&2; exit 2 ;;
        missing) exit 0 ;;
        hang) touch /work/fake-make-started; exec sleep 3600 ;;
      esac ;;
  esac
done
echo "fake make: unexpected arguments: $*" >&2
exit 2
`;

/**
 * Writes a builder definition that installs the stand-in make (no package
 * downloads) and returns its path. Extra provision commands run after it.
 */
export async function writeFakeMakeBuilder(
  path: string,
  options: { name?: string; target: FakeKernelTarget; provision?: string[][] },
): Promise<string> {
  const definition = {
    name: options.name ?? 'fake-make',
    description: 'Debian with a stand-in make, for tests',
    image: DEBIAN_IMAGE,
    env: { FAKE_KERNEL_TARGET: options.target },
    provision: [
      ['/bin/sh', '-c', 'printf "%s" "$1" > /usr/local/bin/make && chmod 755 /usr/local/bin/make', 'install-fake-make', FAKE_MAKE],
      ...(options.provision ?? []),
    ],
  };
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, JSON.stringify(definition, null, 2) + '\n');
  return path;
}

/**
 * Writes a gzip tarball that passes for a kernel source tree (Makefile,
 * Kconfig and kernel/exit.c under one top-level directory) and carries a
 * small x86_64 ELF as fake-vmlinux for the stand-in make to install.
 * Returns the tarball's path. The builder image has gzip but no xz.
 */
export async function writeFakeKernelTarball(directory: string): Promise<string> {
  const top = join(directory, 'linux-fake');
  await mkdir(join(top, 'kernel'), { recursive: true });
  await writeFile(join(top, 'Makefile'), '# fake kernel tree: the stand-in make ignores this file\n');
  await writeFile(join(top, 'Kconfig'), '# fake kernel tree\n');
  await writeFile(join(top, 'kernel', 'exit.c'), '/* fake kernel tree */\n');
  const elf = buildElf({ segments: [{ paddr: 0x1000000n, data: patternBytes(8192, 7) }, { paddr: 0x1004000n, data: patternBytes(4096, 9) }] });
  await writeFile(join(top, 'fake-vmlinux'), elf);
  const tarball = join(directory, 'linux-fake.tar.gz');
  await execa('tar', ['-c', '-z', '-f', tarball, '-C', directory, 'linux-fake']);
  await rm(top, { recursive: true, force: true });
  return tarball;
}

/**
 * Returns the arguments of a VM build that uses a fake-make builder file.
 * A string `kernelSource` is a tarball path; an array is the source options as they are.
 */
export function fakeBuildArguments(
  workDirectory: string,
  builderFile: string,
  kernelSource: string | string[],
  extra: string[] = [],
  size: { cpus: number; memoryMiB: number } = { cpus: 2, memoryMiB: 2048 },
): string[] {
  return [
    'build',
    '--vm',
    '--builder-file', builderFile,
    ...(typeof kernelSource === 'string' ? ['--kernel-tarball', kernelSource] : kernelSource),
    '--no-patches',
    '--config-dir', join(REPOSITORY, 'test', 'fixtures', 'small-config'),
    '--work-dir', workDirectory,
    '--cpus', String(size.cpus),
    '--mem', String(size.memoryMiB),
    ...extra,
  ];
}

/** Reads a JSON file, or returns undefined when it does not exist. */
export async function readJsonIfPresent<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}
