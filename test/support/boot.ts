// SPDX-License-Identifier: LGPL-2.1-only
//
// Boot test harness: builds a tiny ext4 root disk and boots a guest kernel on
// it under QEMU's software emulation (TCG). The VM resembles the one libkrun
// starts: the kernel is loaded directly without an initrd, the devices are
// virtio-mmio, and the VM ends when the guest powers off or restarts.
import { access, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import { KrunfwError } from '../../src/errors.js';
import type { GuestArch } from '../../src/host.js';

export type { GuestArch } from '../../src/host.js';

/** The result of one boot. */
export interface BootResult {
  /**
   * The guest console's output with `\r\n` line ends turned into `\n` (the
   * guest's tty writes `\r\n`), followed by QEMU's own standard error under
   * a `--- qemu stderr ---` line when QEMU wrote any.
   */
  output: string;
  /** QEMU's exit status, or null when it was killed. */
  exitCode: number | null;
  /** True when QEMU was still running after `timeoutMs` and was killed. */
  timedOut: boolean;
}

/** Size of the root disk image. The init and the empty directories need far less. */
const ROOT_DISK_SIZE = '8M';

/** Guest RAM for a boot test, in MiB. */
const GUEST_MEMORY_MIB = '512';

/** Two vCPUs, so that a boot also exercises secondary CPU bring-up. */
const GUEST_CPUS = '2';

/** Mount points the kernel or a later init expects in the root file system. */
const ROOT_DIRECTORIES = ['dev', 'proc', 'sys', 'tmp'];

/** The ELF machine numbers of the guest arches, from the ELF specification's e_machine list. */
export const ELF_MACHINE: Record<GuestArch, number> = { x86_64: 62, aarch64: 183 };

/** The test init's source. Compiled code runs from dist/test/support/, the source sits in test/support/. */
const INIT_SOURCE = fileURLToPath(new URL('../../../test/support/init.c', import.meta.url));

/** Per-arch facts for building the init and starting QEMU. */
interface GuestSetup {
  /** GNU target triple prefix of the cross compiler. */
  crossPrefix: string;
  /** Node's `process.arch` value for a host of this arch, where no cross compiler is needed. */
  nodeArch: string;
  qemu: string;
  /** Machine, CPU and console device arguments. The console chardev is named `console`. */
  machineArgs: string[];
  /** The guest's console device on the kernel command line. */
  console: string;
}

const GUESTS: Record<GuestArch, GuestSetup> = {
  x86_64: {
    crossPrefix: 'x86_64-linux-gnu-',
    nodeArch: 'x64',
    qemu: 'qemu-system-x86_64',
    // microvm without ACPI has neither PCI nor a way to power off, like libkrun's
    // x86_64 VM. Its default auto-kernel-cmdline=on appends a virtio_mmio.device=
    // entry for each virtio-mmio device to the command line, as libkrun does.
    machineArgs: ['-M', 'microvm,acpi=off', '-device', 'virtio-serial-device', '-device', 'virtconsole,chardev=console'],
    console: 'hvc0',
  },
  aarch64: {
    crossPrefix: 'aarch64-linux-gnu-',
    nodeArch: 'arm64',
    qemu: 'qemu-system-aarch64',
    // The guest config enables GICv3 and the PL011. virt describes its
    // virtio-mmio slots in the device tree, as libkrun does.
    machineArgs: ['-M', 'virt,gic-version=3', '-cpu', 'cortex-a57', '-serial', 'chardev:console'],
    console: 'ttyAMA0',
  },
};

/**
 * Finds a program on PATH or in the sbin directories, where Debian installs
 * mkfs.ext4 and debugfs but which are not on a normal user's PATH.
 */
export async function findProgram(name: string): Promise<string> {
  const directories = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const directory of directories) {
    if (directory === '') continue;
    const candidate = join(directory, name);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not in this directory; try the next one.
    }
  }
  throw new KrunfwError(`Program not found: ${name}`, {
    hint: `Install it (on Debian: apt-get install ${debianPackage(name)}).`,
  });
}

function debianPackage(program: string): string {
  if (program.startsWith('qemu-system-')) return program.endsWith('x86_64') ? 'qemu-system-x86' : 'qemu-system-arm';
  if (program === 'mkfs.ext4' || program === 'debugfs' || program === 'e2fsck') return 'e2fsprogs';
  if (program.startsWith('aarch64-linux-gnu-')) return 'gcc-aarch64-linux-gnu';
  if (program.startsWith('x86_64-linux-gnu-')) return 'gcc-x86-64-linux-gnu';
  return 'gcc';
}

/** Escapes a value for a QEMU option list, where a comma separates options unless doubled. */
function qemuOptionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

function compilerFor(arch: GuestArch): string {
  return process.arch === GUESTS[arch].nodeArch ? 'gcc' : `${GUESTS[arch].crossPrefix}gcc`;
}

/** Renders the marker line as the brace-enclosed byte list that init.c expects in INIT_MARKER. */
function markerHeader(marker: string): string {
  const bytes = [...Buffer.from(`${marker}\n`, 'utf8')].map((byte) => `0x${byte.toString(16).padStart(2, '0')}`);
  return `/* Written by makeRootDisk in boot.ts. */\n#define INIT_MARKER { ${bytes.join(', ')} }\n`;
}

/** Compiles init.c into a static, libc-free program for `arch`; the marker header must be in `buildDirectory`. */
async function compileInit(arch: GuestArch, buildDirectory: string, output: string): Promise<void> {
  const compiler = await findProgram(compilerFor(arch));
  await execa(
    compiler,
    [
      '-nostdlib',
      '-static',
      '-ffreestanding',
      '-fno-stack-protector',
      '-fno-asynchronous-unwind-tables',
      '-no-pie',
      '-Os',
      '-Wall',
      '-Werror',
      '-Wl,--build-id=none',
      '-I',
      buildDirectory,
      '-o',
      output,
      INIT_SOURCE,
    ],
    { stdin: 'ignore' },
  );
}

/** One member of a cpio archive in the newc format, the one the kernel unpacks. */
interface CpioEntry {
  name: string;
  /** File type and permission bits, as in st_mode. */
  mode: number;
  data?: Uint8Array;
  /** Device numbers of a character device. */
  rdevMajor?: number;
  rdevMinor?: number;
}

function cpioNewc(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad = (length: number) => Buffer.alloc((4 - (length % 4)) % 4);
  const hex = (value: number) => value.toString(16).padStart(8, '0');
  [...entries, { name: 'TRAILER!!!', mode: 0 }].forEach((entry, index) => {
    const data = entry.data ?? new Uint8Array(0);
    const name = Buffer.from(`${entry.name}\0`, 'utf8');
    const fields = [index + 1, entry.mode, 0, 0, 1, 0, data.length, 0, 0, entry.rdevMajor ?? 0, entry.rdevMinor ?? 0, name.length, 0];
    const header = Buffer.from(`070701${fields.map(hex).join('')}`, 'latin1');
    parts.push(header, name, pad(header.length + name.length), Buffer.from(data), pad(data.length));
  });
  return Buffer.concat(parts);
}

/**
 * Builds a gzip-compressed cpio initrd whose /init prints `marker` and exits
 * with status 0. The archive carries /dev/console itself, because the kernel
 * opens it for init before anything could mount devtmpfs. Returns its path.
 */
export async function makeInitramfs(options: { arch: GuestArch; directory: string; marker: string }): Promise<string> {
  const { arch, directory, marker } = options;
  const buildDirectory = join(directory, `initrd-build-${arch}`);
  await rm(buildDirectory, { recursive: true, force: true });
  await mkdir(buildDirectory, { recursive: true });
  await writeFile(join(buildDirectory, 'init-marker.h'), markerHeader(marker));
  const init = join(buildDirectory, 'init');
  await compileInit(arch, buildDirectory, init);
  const archive = cpioNewc([
    { name: 'dev', mode: 0o040755 },
    { name: 'dev/console', mode: 0o020600, rdevMajor: 5, rdevMinor: 1 },
    { name: 'init', mode: 0o100755, data: await readFile(init) },
  ]);
  const path = join(directory, `initrd-${arch}.cpio.gz`);
  await writeFile(path, gzipSync(archive));
  return path;
}

/**
 * Builds an ext4 image (mkfs.ext4 -d, no mount) whose /init is a tiny static
 * program that prints `marker` on a line to the console and exits with
 * status 0. Writes the image and its staging files under `directory` (names
 * include the arch, so one directory can hold disks for both arches) and
 * returns the image's path.
 */
export async function makeRootDisk(options: { arch: GuestArch; directory: string; marker: string }): Promise<string> {
  const { arch, directory, marker } = options;
  if (marker === '' || /[\r\n]/.test(marker)) {
    throw new KrunfwError(`Invalid init marker: ${JSON.stringify(marker)}`, {
      hint: 'The marker must be one non-empty line, because the test looks for it as a console line.',
    });
  }

  const buildDirectory = join(directory, `init-build-${arch}`);
  const rootDirectory = join(directory, `rootfs-${arch}`);
  const image = join(directory, `root-${arch}.ext4`);
  await rm(buildDirectory, { recursive: true, force: true });
  await rm(rootDirectory, { recursive: true, force: true });
  await rm(image, { force: true });
  await mkdir(buildDirectory, { recursive: true });
  for (const name of ROOT_DIRECTORIES) {
    await mkdir(join(rootDirectory, name), { recursive: true });
  }
  await writeFile(join(buildDirectory, 'init-marker.h'), markerHeader(marker));

  await compileInit(arch, buildDirectory, join(rootDirectory, 'init'));

  const mkfs = await findProgram('mkfs.ext4');
  // root_owner=0:0 makes / belong to root even when a normal user builds the image.
  await execa(mkfs, ['-q', '-F', '-L', 'root', '-E', 'root_owner=0:0', '-d', rootDirectory, image, ROOT_DISK_SIZE], {
    stdin: 'ignore',
  });
  return image;
}

/**
 * Returns a kernel command line modelled on libkrun's default. It mounts an
 * ext4 root from the first virtio disk instead of virtio-fs, and it leaves out
 * `quiet` so that the output shows the kernel's notices.
 */
function kernelCommandLine(arch: GuestArch, fromInitrd: boolean): string {
  const root = fromInitrd ? ['rdinit=/init'] : ['root=/dev/vda', 'rootfstype=ext4', 'rw', 'init=/init'];
  return ['reboot=k', 'panic=-1', 'panic_print=0', 'nomodule', `console=${GUESTS[arch].console}`, ...root].join(' ');
}

/**
 * Boots a kernel under QEMU software emulation (TCG, no KVM) with that disk
 * as a virtio-mmio block device and returns the console output. QEMU runs
 * with -no-reboot, so it exits when the guest powers off or restarts. The
 * disk is attached with snapshot=on: the guest's writes never reach the
 * image, so one disk serves any number of boots.
 */
export async function bootKernel(options: {
  arch: GuestArch;
  kernel: string;
  /** An ext4 root disk from makeRootDisk, or an initrd from makeInitramfs (exactly one of the two). */
  rootDisk?: string;
  initrd?: string;
  timeoutMs: number;
}): Promise<BootResult> {
  const { arch, kernel, rootDisk, initrd, timeoutMs } = options;
  if ((rootDisk === undefined) === (initrd === undefined)) throw new Error('bootKernel needs either rootDisk or initrd');
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new KrunfwError(`Invalid boot timeout: ${timeoutMs} ms`, { hint: 'Pass a positive number of milliseconds.' });
  }
  const guest = GUESTS[arch];
  const qemu = await findProgram(guest.qemu);

  const workDirectory = await mkdtemp(join(tmpdir(), 'krunfw-boot-'));
  const consoleLog = join(workDirectory, 'console.log');
  const args = [
    ...guest.machineArgs,
    '-m',
    GUEST_MEMORY_MIB,
    '-smp',
    GUEST_CPUS,
    '-accel',
    'tcg',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-chardev',
    `file,id=console,path=${qemuOptionValue(consoleLog)}`,
    ...(rootDisk !== undefined
      ? ['-drive', `file=${qemuOptionValue(rootDisk)},if=none,id=root,format=raw,snapshot=on`, '-device', 'virtio-blk-device,drive=root']
      : ['-initrd', initrd!]),
    '-kernel',
    kernel,
    '-append',
    kernelCommandLine(arch, initrd !== undefined),
  ];

  const subprocess = execa(qemu, args, {
    stdin: 'ignore',
    reject: false,
    timeout: timeoutMs,
    killSignal: 'SIGKILL',
  });
  // If this process exits mid-boot (a cancelled test run), QEMU must not outlive it.
  const killQemu = (): void => {
    if (subprocess.exitCode === null && subprocess.signalCode === null) subprocess.kill('SIGKILL');
  };
  process.once('exit', killQemu);

  try {
    const result = await subprocess;
    const consoleText = await readFile(consoleLog, 'utf8').catch((error: NodeJS.ErrnoException) => {
      // QEMU creates the file only once it gets as far as opening its devices.
      if (error.code === 'ENOENT') return '';
      throw error;
    });
    const consoleOutput = consoleText.replaceAll('\r\n', '\n');
    const stderr = String(result.stderr ?? '').trim();
    return {
      output: stderr === '' ? consoleOutput : `${consoleOutput}\n--- qemu stderr ---\n${stderr}\n`,
      exitCode: result.exitCode ?? null,
      timedOut: result.timedOut,
    };
  } finally {
    killQemu();
    process.removeListener('exit', killQemu);
    await rm(workDirectory, { recursive: true, force: true });
  }
}
