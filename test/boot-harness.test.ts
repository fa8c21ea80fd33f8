// SPDX-License-Identifier: LGPL-2.1-only
//
// Checks the boot harness's root disk without booting a kernel: the image is
// a valid ext4 file system whose /init is a static program for the guest arch
// that prints the marker.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { ELF_MACHINE, findProgram, makeRootDisk, type GuestArch } from './support/boot.js';

const MARKER = 'krunfw-boot-harness: init ran';

const PT_INTERP = 3;
const ET_EXEC = 2;

/** Reads a file out of an ext4 image with debugfs, without mounting it. */
async function readFromImage(image: string, path: string): Promise<Buffer> {
  const debugfs = await findProgram('debugfs');
  const result = await execa(debugfs, ['-R', `cat ${path}`, image], { encoding: 'buffer', stdin: 'ignore' });
  return Buffer.from(result.stdout);
}

async function listImageRoot(image: string): Promise<string[]> {
  const debugfs = await findProgram('debugfs');
  const result = await execa(debugfs, ['-R', 'ls -p /', image], { stdin: 'ignore' });
  // `ls -p` prints /inode/mode/uid/gid/name/size/ per entry.
  return result.stdout
    .split('\n')
    .map((line) => line.split('/')[5])
    .filter((name): name is string => name !== undefined && name !== '');
}

/** Returns the program header types of a little-endian ELF64 file. */
function programHeaderTypes(elf: Buffer): number[] {
  const tableOffset = Number(elf.readBigUInt64LE(0x20));
  const entrySize = elf.readUInt16LE(0x36);
  const count = elf.readUInt16LE(0x38);
  const types: number[] = [];
  for (let index = 0; index < count; index++) {
    types.push(elf.readUInt32LE(tableOffset + index * entrySize));
  }
  return types;
}

describe('makeRootDisk', () => {
  let directory: string;
  const images = new Map<GuestArch, string>();
  const inits = new Map<GuestArch, Buffer>();

  before(async () => {
    directory = await mkdtemp(join(tmpdir(), 'krunfw-boot-harness-'));
    for (const arch of ['x86_64', 'aarch64'] as const) {
      const image = await makeRootDisk({ arch, directory, marker: MARKER });
      images.set(arch, image);
      inits.set(arch, await readFromImage(image, '/init'));
    }
  });

  after(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  for (const arch of ['x86_64', 'aarch64'] as const) {
    test(`${arch} image passes e2fsck`, async () => {
      const e2fsck = await findProgram('e2fsck');
      const result = await execa(e2fsck, ['-f', '-n', images.get(arch)!], { reject: false, stdin: 'ignore' });
      assert.equal(result.exitCode, 0, result.stdout + result.stderr);
    });

    test(`${arch} image has mount points`, async () => {
      const names = await listImageRoot(images.get(arch)!);
      for (const name of ['init', 'dev', 'proc', 'sys', 'tmp']) {
        assert.ok(names.includes(name), `/${name} missing from ${names.join(', ')}`);
      }
    });

    test(`${arch} init is an ELF for ${arch}`, () => {
      const init = inits.get(arch)!;
      assert.deepEqual([...init.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46], 'ELF magic');
      assert.equal(init[4], 2, 'ELFCLASS64');
      assert.equal(init[5], 1, 'little-endian');
      assert.equal(init.readUInt16LE(0x12), ELF_MACHINE[arch], 'e_machine');
    });

    test(`${arch} init is static`, () => {
      const init = inits.get(arch)!;
      assert.equal(init.readUInt16LE(0x10), ET_EXEC, 'e_type');
      assert.ok(!programHeaderTypes(init).includes(PT_INTERP), 'has a PT_INTERP program header');
    });

    test(`${arch} init contains marker line`, () => {
      assert.ok(inits.get(arch)!.includes(Buffer.from(`${MARKER}\n`)));
    });
  }

  test('x86_64 init prints marker and exits 0', { skip: process.arch !== 'x64' && 'needs an x86_64 host' }, async () => {
    // Run the copy read back from the image, not the staging file.
    const program = join(directory, 'init-from-image');
    await writeFile(program, inits.get('x86_64')!, { mode: 0o755 });
    const result = await execa(program, [], { reject: false, stdin: 'ignore', stripFinalNewline: false });
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout, `${MARKER}\n`);
  });

  test('rejects multi-line marker', async () => {
    await assert.rejects(makeRootDisk({ arch: 'x86_64', directory, marker: 'one\ntwo' }), /Invalid init marker/);
  });
});
