// SPDX-License-Identifier: LGPL-2.1-only
//
// `krunfw-mac link --target-os darwin` on Linux: clang and lld produce the
// arm64 Mach-O dylib that libkrun dlopens on a Mac, read back here with the
// LLVM tools.
import assert from 'node:assert/strict';
import { lstat, mkdtemp, open, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { patternBytes } from './support/elf-fixture.js';
import { runCli } from './support/cli.js';

/** Bytes of the raw kernel stand-in: not a multiple of 64 KiB, so the bundle carries padding. */
const KERNEL_SIZE = 70_000;
const BUNDLE_ALIGNMENT = 64 * 1024;

/** Mach-O: MH_MAGIC_64 in little-endian byte order, and CPU_TYPE_ARM64 (CPU_ARCH_ABI64 | CPU_TYPE_ARM). */
const MH_MAGIC_64_BYTES = [0xcf, 0xfa, 0xed, 0xfe];
const CPU_TYPE_ARM64 = 0x0100000c;
const MH_DYLIB = 6;

let directory: string;
let kernel: Uint8Array;
let defaultDylib: string;
let rpathDylib: string;

async function llvm(tool: string, args: string[]): Promise<string> {
  return (await execa(tool, args)).stdout;
}

/** Returns one load command's block of `llvm-objdump --macho --private-headers` output. */
function loadCommand(headers: string, command: string): string {
  const block = headers.split(/^Load command \d+$/m).find((part) => new RegExp(`^\\s*cmd ${command}$`, 'm').test(part));
  assert.ok(block, `no ${command} load command`);
  return block;
}

async function linkDarwin(source: string, outputDirectory: string, extra: string[] = []): Promise<string> {
  const result = await runCli(['link', source, '--target-os', 'darwin', '--output-dir', outputDirectory, '--json', ...extra]);
  assert.equal(result.exitCode, 0, result.stderr);
  return (JSON.parse(result.stdout) as { library: string }).library;
}

before(async () => {
  directory = await mkdtemp(join(tmpdir(), 'krunfw-dylib-'));
  kernel = patternBytes(KERNEL_SIZE, 3);
  const raw = join(directory, 'Image');
  await writeFile(raw, kernel);
  const source = join(directory, 'kernel.c');
  const bundled = await runCli(['bundle', raw, '--format', 'raw', '--output', source]);
  assert.equal(bundled.exitCode, 0, bundled.stderr);
  defaultDylib = await linkDarwin(source, join(directory, 'default'));
  rpathDylib = await linkDarwin(source, join(directory, 'rpath'), ['--install-name', '@rpath/libkrunfw.5.dylib']);
});

after(async () => {
  await rm(directory, { recursive: true, force: true });
});

describe('darwin dylib linked on Linux', () => {
  test('file name is libkrunfw.5.dylib', () => {
    assert.equal(defaultDylib, join(directory, 'default', 'libkrunfw.5.dylib'));
  });

  test('default install name', async () => {
    const output = await llvm('llvm-objdump', ['--macho', '--dylib-id', defaultDylib]);
    assert.equal(output.trim().split('\n').at(-1), '/usr/local/lib/libkrunfw.5.dylib');
  });

  test('--install-name @rpath', async () => {
    const output = await llvm('llvm-objdump', ['--macho', '--dylib-id', rpathDylib]);
    assert.equal(output.trim().split('\n').at(-1), '@rpath/libkrunfw.5.dylib');
  });

  test('compatibility and current version 5.0.0', async () => {
    const id = loadCommand(await llvm('llvm-objdump', ['--macho', '--private-headers', defaultDylib]), 'LC_ID_DYLIB');
    assert.match(id, /^\s*current version 5\.0\.0$/m);
    assert.match(id, /^\s*compatibility version 5\.0\.0$/m);
  });

  test('exports exactly the two accessors', async () => {
    const output = await llvm('llvm-nm', ['--extern-only', '--defined-only', defaultDylib]);
    const symbols = output.trim().split('\n').map((line) => line.split(/\s+/));
    assert.deepEqual(symbols.map(([, type, name]) => [type, name]), [['T', '_krunfw_get_kernel'], ['T', '_krunfw_get_version']]);
  });

  test('no undefined symbols', async () => {
    assert.equal((await llvm('llvm-nm', ['--undefined-only', defaultDylib])).trim(), '');
  });

  test('arm64 Mach-O dylib header', async () => {
    const handle = await open(defaultDylib, 'r');
    try {
      const { buffer } = await handle.read(Buffer.alloc(16), 0, 16, 0);
      assert.deepEqual([...buffer.subarray(0, 4)], MH_MAGIC_64_BYTES);
      assert.equal(buffer.readUInt32LE(4), CPU_TYPE_ARM64);
      assert.equal(buffer.readUInt32LE(12), MH_DYLIB);
    } finally {
      await handle.close();
    }
    const headers = await llvm('llvm-objdump', ['--macho', '--private-headers', defaultDylib]);
    assert.match(headers, /^MH_MAGIC_64\s+ARM64\s+\S+\s+\S+\s+DYLIB\s/m);
  });

  test('built for macOS 11', async () => {
    const build = loadCommand(await llvm('llvm-objdump', ['--macho', '--private-headers', defaultDylib]), 'LC_BUILD_VERSION');
    assert.match(build, /^\s*platform macos$/m);
    assert.match(build, /^\s*minos 11\.0$/m);
  });

  test('code signature present', async () => {
    // Apple Silicon refuses to map unsigned code; lld signs ad hoc.
    loadCommand(await llvm('llvm-objdump', ['--macho', '--private-headers', defaultDylib]), 'LC_CODE_SIGNATURE');
  });

  test('libkrunfw.dylib symlink', async () => {
    const link = join(directory, 'default', 'libkrunfw.dylib');
    assert.ok((await lstat(link)).isSymbolicLink());
    assert.equal(await readlink(link), 'libkrunfw.5.dylib');
  });

  test('bundle 64 KiB aligned with kernel bytes', async () => {
    const data = loadCommand(await llvm('llvm-objdump', ['--macho', '--private-headers', defaultDylib]), 'LC_SEGMENT_64\\s+cmdsize \\d+\\s+segname __DATA');
    const offset = Number(/^\s*offset (\d+)$/m.exec(data)?.[1]);
    const size = Number(/^\s*size (0x[0-9a-f]+)$/m.exec(data)?.[1]);
    assert.match(data, /^\s*align 2\^16 \(65536\)$/m);
    assert.equal(offset % BUNDLE_ALIGNMENT, 0);
    // The C array ends with the string literal's NUL after the padded bundle.
    const padded = Math.ceil(KERNEL_SIZE / BUNDLE_ALIGNMENT) * BUNDLE_ALIGNMENT;
    assert.equal(size, padded + 1);
    const file = await readFile(defaultDylib);
    assert.deepEqual(file.subarray(offset, offset + KERNEL_SIZE), Buffer.from(kernel));
    assert.ok(file.subarray(offset + KERNEL_SIZE, offset + padded).every((byte) => byte === 0), 'padding is zeros');
  });

  test('SEV variant rejected for darwin', async () => {
    const result = await runCli(['link', join(directory, 'kernel.c'), '--target-os', 'darwin', '--variant', 'sev', '--output-dir', join(directory, 'sev')]);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /error: The SEV variant has no macOS library/);
  });
});
