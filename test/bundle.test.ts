// SPDX-License-Identifier: LGPL-2.1-only
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { renderBlobSource, renderKernelSource } from '../src/bundle/c-source.js';
import { readElf } from '../src/bundle/elf.js';
import { MAX_BUNDLE_SIZE, bundleElfKernel, bundleRaw, type KernelBundle } from '../src/bundle/layout.js';
import {
  HEADER_FIELDS,
  KERNEL_VIRTUAL_BASE,
  PT_GNU_STACK,
  PT_NOTE,
  buildElf,
  patternBytes,
  writeField,
} from './support/elf-fixture.js';

const LOAD = 0x1000000n;
const KIB64 = 64 * 1024;

/** Fails unless `bytes[start, end)` are all zero, naming the first nonzero offset. */
function assertZeros(bytes: Uint8Array, start: number, end: number): void {
  const index = bytes.subarray(start, end).findIndex((byte) => byte !== 0);
  assert.equal(index, -1, `expected zeros in [${start}, ${end}), found ${bytes[start + index]} at ${start + index}`);
}

/** Fails unless `actual` equals `expected`, naming the first differing offset instead of dumping megabytes. */
function assertSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  assert.equal(actual.byteLength, expected.byteLength, 'byte length');
  const index = actual.findIndex((byte, i) => byte !== expected[i]);
  assert.equal(index, -1, `first difference at offset ${index}: got ${actual[index]}, expected ${expected[index]}`);
}

function krunfwError(message: RegExp): { name: string; message: RegExp } {
  return { name: 'KrunfwError', message };
}

describe('readElf', () => {
  test('reads entry and PT_LOAD fields', () => {
    const text = patternBytes(100, 1);
    const elf = buildElf({
      entry: 0x1000200n,
      segments: [
        { paddr: LOAD, data: text, memsz: 0x2000n },
        { paddr: LOAD + 0x2000n, vaddr: 0x1234000n, data: patternBytes(10, 2) },
      ],
    });
    const image = readElf(elf, 'vmlinux');

    assert.equal(image.entry, 0x1000200n);
    assert.equal(image.machine, 62);
    assert.equal(image.loadSegments.length, 2);
    assert.equal(image.loadSegments[0].vaddr, KERNEL_VIRTUAL_BASE + LOAD);
    assert.equal(image.loadSegments[0].paddr, LOAD);
    assert.equal(image.loadSegments[0].filesz, 100);
    assert.equal(image.loadSegments[0].memsz, 0x2000n);
    assertSameBytes(elf.subarray(image.loadSegments[0].offset, image.loadSegments[0].offset + 100), text);
    assert.equal(image.loadSegments[1].vaddr, 0x1234000n);
    assert.equal(image.loadSegments[1].paddr, LOAD + 0x2000n);
    assert.equal(image.loadSegments[1].filesz, 10);
  });

  test('skips non-PT_LOAD headers', () => {
    const elf = buildElf({
      segments: [
        { type: PT_NOTE, paddr: 0n, data: patternBytes(8, 3) },
        { paddr: LOAD, data: patternBytes(16, 4) },
        { type: PT_GNU_STACK, paddr: 0n },
        { paddr: LOAD + 0x1000n, data: patternBytes(16, 5) },
      ],
    });
    const image = readElf(elf, 'vmlinux');

    assert.deepEqual(
      image.loadSegments.map((segment) => segment.index),
      [1, 3],
    );
  });

  test('accepts larger program header size', () => {
    const elf = buildElf({ programHeaderSize: 64, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }, { paddr: LOAD + 0x1000n, data: patternBytes(4, 2) }] });
    const image = readElf(elf, 'vmlinux');

    assert.equal(image.loadSegments.length, 2);
    assert.equal(image.loadSegments[1].paddr, LOAD + 0x1000n);
  });

  test('rejects data without ELF magic', () => {
    const data = new TextEncoder().encode('<html>404 Not Found</html>'.padEnd(128, ' '));
    assert.throws(() => readElf(data, 'vmlinux'), krunfwError(/^vmlinux is not an ELF file/));
  });

  test('rejects empty file', () => {
    assert.throws(() => readElf(new Uint8Array(0), 'vmlinux'), krunfwError(/not an ELF file/));
  });

  test('rejects truncated ELF header', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] }).subarray(0, 40);
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/truncated: it has 40 bytes, fewer than the 64-byte ELF64 header/));
  });

  test('rejects 32-bit ELF', () => {
    const elf = buildElf({ elfClass: 1, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/is a 32-bit ELF file/));
  });

  test('rejects invalid ELF class', () => {
    const elf = buildElf({ elfClass: 7, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/invalid ELF class \(EI_CLASS = 7\)/));
  });

  test('rejects big-endian ELF', () => {
    const elf = buildElf({ encoding: 2, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/is a big-endian ELF file/));
  });

  test('rejects invalid data encoding', () => {
    const elf = buildElf({ encoding: 0, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/invalid ELF data encoding \(EI_DATA = 0\)/));
  });

  test('rejects zero program headers', () => {
    const elf = buildElf({ programHeaderCount: 0, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/has no program headers/));
  });

  test('rejects extended program header numbering', () => {
    const elf = buildElf({ programHeaderCount: 0xffff, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/extended program header numbering/));
  });

  test('rejects small program header size', () => {
    const elf = buildElf({ programHeaderSize: 32, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/invalid program header size \(e_phentsize = 32, expected at least 56\)/));
  });

  test('rejects truncated program header table', () => {
    const elf = buildElf({ programHeaderCount: 100, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/truncated: its program header table ends at byte 5664, but the file has \d+ bytes/));
  });

  test('rejects huge program header offset', () => {
    const elf = buildElf({ programHeaderOffset: 1n << 63n, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/invalid e_phoff: 0x8000000000000000/));
  });

  test('rejects segment beyond end of file', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, data: patternBytes(16, 1), filesz: 4096n }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/truncated: program header 0 \(PT_LOAD\) ends at byte 4224/));
  });

  test('rejects file cut inside a segment', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, data: patternBytes(256, 1) }] });
    assert.throws(() => readElf(elf.subarray(0, 200), 'vmlinux'), krunfwError(/truncated: program header 0 \(PT_LOAD\)/));
  });

  test('rejects huge segment offset', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, data: patternBytes(16, 1), offset: 1n << 60n }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/invalid program header 0 p_offset: 0x1000000000000000/));
  });

  test('rejects huge segment file size', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, data: patternBytes(16, 1), filesz: (1n << 64n) - 1n }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/invalid program header 0 p_filesz: 0xffffffffffffffff/));
  });

  test('rejects file size above memory size', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, data: patternBytes(16, 1), memsz: 8n }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/p_filesz \(16\) is larger than p_memsz \(8\)/));
  });

  test('rejects file without PT_LOAD', () => {
    const elf = buildElf({ segments: [{ type: PT_NOTE, paddr: 0n, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, 'vmlinux'), krunfwError(/^vmlinux has no PT_LOAD segment/));
  });

  test('errors name the file and give a hint', () => {
    const elf = buildElf({ elfClass: 1, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.throws(() => readElf(elf, '/build/linux-6.1/vmlinux'), {
      name: 'KrunfwError',
      message: /^\/build\/linux-6\.1\/vmlinux /,
      hint: /vmlinux/,
    });
  });
});

describe('bundleElfKernel', () => {
  test('one segment starts the bundle', () => {
    const text = patternBytes(100, 1);
    const bundle = bundleElfKernel(buildElf({ segments: [{ paddr: LOAD, data: text }] }), 'vmlinux');

    assert.equal(bundle.kind, 'elf');
    assert.equal(bundle.bytes.byteLength, KIB64);
    assertSameBytes(bundle.bytes.subarray(0, 100), text);
    assertZeros(bundle.bytes, 100, KIB64);
  });

  test('segments land at p_paddr minus load address', () => {
    const first = patternBytes(100, 1);
    const second = patternBytes(50, 2);
    const third = patternBytes(70_000, 3);
    const elf = buildElf({
      segments: [
        { paddr: LOAD, data: first },
        { paddr: LOAD + 0x3000n, data: second },
        { paddr: LOAD + 0x20000n, data: third },
      ],
    });
    const bundle = bundleElfKernel(elf, 'vmlinux');

    assert.equal(bundle.bytes.byteLength, 4 * KIB64);
    assertSameBytes(bundle.bytes.subarray(0, 100), first);
    assertZeros(bundle.bytes, 100, 0x3000);
    assertSameBytes(bundle.bytes.subarray(0x3000, 0x3000 + 50), second);
    assertZeros(bundle.bytes, 0x3000 + 50, 0x20000);
    assertSameBytes(bundle.bytes.subarray(0x20000, 0x20000 + 70_000), third);
    assertZeros(bundle.bytes, 0x20000 + 70_000, 4 * KIB64);
  });

  test('adjacent segments leave no gap', () => {
    const first = patternBytes(0x1000, 1);
    const second = patternBytes(0x800, 2);
    const elf = buildElf({ segments: [{ paddr: LOAD, data: first }, { paddr: LOAD + 0x1000n, data: second }] });
    const bundle = bundleElfKernel(elf, 'vmlinux');

    assertSameBytes(bundle.bytes.subarray(0, 0x1000), first);
    assertSameBytes(bundle.bytes.subarray(0x1000, 0x1800), second);
  });

  test('BSS between segments becomes zeros', () => {
    const data = patternBytes(64, 1);
    const after = patternBytes(32, 2);
    const elf = buildElf({
      segments: [
        { paddr: LOAD, data, memsz: 0x2000n },
        { paddr: LOAD + 0x2000n, data: after },
      ],
    });
    const bundle = bundleElfKernel(elf, 'vmlinux');

    assertSameBytes(bundle.bytes.subarray(0, 64), data);
    assertZeros(bundle.bytes, 64, 0x2000);
    assertSameBytes(bundle.bytes.subarray(0x2000, 0x2020), after);
  });

  test('last segment BSS is not stored', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, data: patternBytes(100, 1), memsz: 0x400000n }] });
    const bundle = bundleElfKernel(elf, 'vmlinux');

    assert.equal(bundle.bytes.byteLength, KIB64);
  });

  test('content of exactly 64 KiB gets no padding', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, data: patternBytes(KIB64, 1) }] });
    assert.equal(bundleElfKernel(elf, 'vmlinux').bytes.byteLength, KIB64);
  });

  test('content one byte over 64 KiB pads to 128 KiB', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, data: patternBytes(KIB64 + 1, 1) }] });
    const bundle = bundleElfKernel(elf, 'vmlinux');

    assert.equal(bundle.bytes.byteLength, 2 * KIB64);
    assertZeros(bundle.bytes, KIB64 + 1, 2 * KIB64);
  });

  test('load address masks p_vaddr', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, vaddr: 0xffffffff81000000n, data: patternBytes(16, 1) }] });
    assert.equal(bundleElfKernel(elf, 'vmlinux').loadAddress, 0x1000000n);
  });

  test('entry address is e_entry unmasked', () => {
    const elf = buildElf({ entry: 0xffffffff81000200n, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    assert.equal(bundleElfKernel(elf, 'vmlinux').entryAddress, 0xffffffff81000200n);
  });

  test('entry address may differ from load address', () => {
    const elf = buildElf({ entry: 0x1a3c5e0n, segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    const bundle = bundleElfKernel(elf, 'vmlinux');

    assert.equal(bundle.loadAddress, LOAD);
    assert.equal(bundle.entryAddress, 0x1a3c5e0n);
  });

  test('first segment gives file offset and size', () => {
    const text = patternBytes(300, 7);
    const elf = buildElf({
      segments: [{ type: PT_NOTE, paddr: 0n, data: patternBytes(40, 1) }, { paddr: LOAD, data: text }],
    });
    const { firstSegment } = bundleElfKernel(elf, 'vmlinux');

    assert.equal(firstSegment.size, 300);
    assertSameBytes(elf.subarray(firstSegment.fileOffset, firstSegment.fileOffset + firstSegment.size), text);
  });

  test('non-load headers do not change the layout', () => {
    const loads = [
      { paddr: LOAD, data: patternBytes(100, 1) },
      { paddr: LOAD + 0x5000n, data: patternBytes(100, 2) },
    ];
    const plain = bundleElfKernel(buildElf({ segments: loads }), 'vmlinux');
    const mixed = bundleElfKernel(
      buildElf({
        segments: [
          { type: PT_NOTE, paddr: LOAD + 0x100000n, data: patternBytes(64, 3) },
          loads[0],
          { type: PT_GNU_STACK, paddr: 0n },
          loads[1],
        ],
      }),
      'vmlinux',
    );

    assertSameBytes(mixed.bytes, plain.bytes);
  });

  test('rejects overlapping segments', () => {
    const elf = buildElf({
      segments: [
        { paddr: LOAD, data: patternBytes(100, 1) },
        { paddr: LOAD + 50n, data: patternBytes(100, 2) },
      ],
    });
    assert.throws(
      () => bundleElfKernel(elf, 'vmlinux'),
      krunfwError(/^vmlinux has overlapping segments: program header 1 \(PT_LOAD, p_paddr 0x1000032\) would start at bundle offset 50, before the end of the previous PT_LOAD segment at offset 100/),
    );
  });

  test('rejects segments out of p_paddr order', () => {
    const elf = buildElf({
      segments: [
        { paddr: LOAD, data: patternBytes(16, 1) },
        { paddr: LOAD + 0x4000n, data: patternBytes(16, 2) },
        { paddr: LOAD + 0x2000n, data: patternBytes(16, 3) },
      ],
    });
    assert.throws(() => bundleElfKernel(elf, 'vmlinux'), krunfwError(/overlapping segments: program header 2 /));
  });

  test('rejects segment below load address', () => {
    const elf = buildElf({
      segments: [
        { paddr: LOAD, data: patternBytes(16, 1) },
        { paddr: LOAD - 0x1000n, data: patternBytes(16, 2) },
      ],
    });
    assert.throws(() => bundleElfKernel(elf, 'vmlinux'), krunfwError(/would start at bundle offset -4096/));
  });

  test('rejects first p_paddr unlike load address', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, vaddr: KERNEL_VIRTUAL_BASE + 0x2000000n, data: patternBytes(16, 1) }] });
    assert.throws(
      () => bundleElfKernel(elf, 'vmlinux'),
      krunfwError(/invalid first PT_LOAD segment: the p_paddr 0x1000000 of program header 0 differs from the load address 0x2000000/),
    );
  });

  test('rejects gap beyond bundle size limit', () => {
    const elf = buildElf({
      segments: [
        { paddr: LOAD, data: patternBytes(16, 1) },
        { paddr: LOAD + 0x80000000n, data: patternBytes(16, 2) },
      ],
    });
    assert.throws(() => bundleElfKernel(elf, 'vmlinux'), krunfwError(/would make a bundle of at least 2147483664 bytes because of program header 1/));
  });

  test('rejects bundle one byte over limit', () => {
    const elf = buildElf({
      segments: [
        { paddr: LOAD, data: patternBytes(16, 1) },
        { paddr: LOAD + BigInt(MAX_BUNDLE_SIZE) - 15n, data: patternBytes(16, 2) },
      ],
    });
    assert.throws(() => bundleElfKernel(elf, 'vmlinux'), krunfwError(/more than the 1073741824-byte bundle limit/));
  });

  test('accepts bundle at size limit', () => {
    // Buffer.alloc gets zeroed pages from the OS lazily, so only the touched pages cost memory.
    const elf = buildElf({
      segments: [
        { paddr: LOAD, data: patternBytes(16, 1) },
        { paddr: LOAD + BigInt(MAX_BUNDLE_SIZE) - 16n, data: patternBytes(16, 2) },
      ],
    });
    const bundle = bundleElfKernel(elf, 'vmlinux');

    assert.equal(bundle.bytes.byteLength, MAX_BUNDLE_SIZE);
    assertSameBytes(bundle.bytes.subarray(MAX_BUNDLE_SIZE - 16), patternBytes(16, 2));
  });

  test('rejects unaligned load address', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD + 0x800n, data: patternBytes(16, 1) }] });
    assert.throws(() => bundleElfKernel(elf, 'vmlinux'), krunfwError(/invalid load address 0x1000800: libkrun needs it aligned to 4 KiB/));
  });

  test('rejects segments without file bytes', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, memsz: 0x1000n }] });
    assert.throws(() => bundleElfKernel(elf, 'vmlinux'), krunfwError(/has no bytes to bundle/));
  });

  test('passes ELF errors through', () => {
    const elf = buildElf({ segments: [{ paddr: LOAD, data: patternBytes(16, 1) }] });
    writeField(elf, HEADER_FIELDS.class.offset, 1, 1n);
    assert.throws(() => bundleElfKernel(elf, 'vmlinux'), krunfwError(/32-bit/));
  });
});

describe('bundleRaw', () => {
  const AARCH64_LOAD = 0x80000000n;

  test('pads to 64 KiB', () => {
    const image = patternBytes(100_000, 1);
    const bundle = bundleRaw(image, { loadAddress: AARCH64_LOAD, entryAddress: AARCH64_LOAD });

    assert.equal(bundle.bytes.byteLength, 2 * KIB64);
    assertSameBytes(bundle.bytes.subarray(0, 100_000), image);
    assertZeros(bundle.bytes, 100_000, 2 * KIB64);
  });

  test('keeps exact 64 KiB size', () => {
    const bundle = bundleRaw(patternBytes(KIB64, 1), { loadAddress: AARCH64_LOAD, entryAddress: AARCH64_LOAD });
    assert.equal(bundle.bytes.byteLength, KIB64);
  });

  test('reports addresses and first segment', () => {
    const bundle = bundleRaw(patternBytes(10, 1), { loadAddress: AARCH64_LOAD, entryAddress: AARCH64_LOAD + 0x40n });

    assert.equal(bundle.kind, 'raw');
    assert.equal(bundle.loadAddress, AARCH64_LOAD);
    assert.equal(bundle.entryAddress, AARCH64_LOAD + 0x40n);
    assert.deepEqual(bundle.firstSegment, { fileOffset: 0, size: 10 });
  });

  test('rejects empty data', () => {
    assert.throws(
      () => bundleRaw(new Uint8Array(0), { loadAddress: AARCH64_LOAD, entryAddress: AARCH64_LOAD, name: 'Image' }),
      krunfwError(/^Image is empty/),
    );
  });

  test('rejects unaligned load address', () => {
    assert.throws(
      () => bundleRaw(patternBytes(10, 1), { loadAddress: AARCH64_LOAD + 4n, entryAddress: AARCH64_LOAD, name: 'Image' }),
      krunfwError(/Image has an invalid load address 0x80000004/),
    );
  });

  test('rejects negative entry address', () => {
    assert.throws(
      () => bundleRaw(patternBytes(10, 1), { loadAddress: AARCH64_LOAD, entryAddress: -1n, name: 'Image' }),
      krunfwError(/entry address -1 for Image is outside the 64-bit address range/),
    );
  });
});

describe('renderKernelSource', () => {
  const bundle = bundleRaw(patternBytes(1000, 1), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });

  test('header starts with SPDX line', () => {
    const source = renderKernelSource(bundle, { kernelVersion: '6.1.55' }).toString('latin1');
    assert.equal(source.split('\n')[0], '/* SPDX-License-Identifier: LGPL-2.1-only */');
  });

  test('header names kernel version', () => {
    const source = renderKernelSource(bundle, { kernelVersion: '6.1.55' }).toString('latin1');
    assert.match(source, /^ \* kernel\.c: Linux 6\.1\.55 /m);
  });

  test('header takes another license', () => {
    const source = renderKernelSource(bundle, { kernelVersion: '6.1.55', license: 'LGPL-2.1-or-later' }).toString('latin1');
    assert.equal(source.split('\n')[0], '/* SPDX-License-Identifier: LGPL-2.1-or-later */');
  });

  test('array is declared 64 KiB aligned', () => {
    const source = renderKernelSource(bundle, { kernelVersion: '6.1.55' }).toString('latin1');
    assert.match(source, /^static char kernel_bundle\[\] __attribute__\(\(aligned\(65536\)\)\) =$/m);
  });

  test('literal lines hold bytesPerLine bytes', () => {
    const source = renderKernelSource(bundle, { kernelVersion: '6.1.55' }, { bytesPerLine: 40 }).toString('latin1');
    const literalLines = source.split('\n').filter((line) => line.startsWith('"'));

    assert.equal(literalLines.length, Math.ceil(KIB64 / 40));
    for (const line of literalLines) {
      // Quote, 40 escapes of at most 4 characters, quote, and `;` after the last line.
      assert.ok(line.length <= 2 + 4 * 40 + 1, `line of ${line.length} characters: ${line}`);
    }
  });

  test('rejects comment terminator in version', () => {
    assert.throws(() => renderKernelSource(bundle, { kernelVersion: '6.1 */ int x;' }), krunfwError(/^Invalid kernel version/));
  });

  test('rejects line break in license', () => {
    assert.throws(() => renderKernelSource(bundle, { kernelVersion: '6.1', license: 'MIT\nint x;' }), krunfwError(/^Invalid license/));
  });

  test('rejects unpadded bytes', () => {
    const unpadded: KernelBundle = { ...bundle, bytes: new Uint8Array(1000) };
    assert.throws(() => renderKernelSource(unpadded, { kernelVersion: '6.1' }), RangeError);
  });

  test('rejects zero bytes per line', () => {
    assert.throws(() => renderKernelSource(bundle, { kernelVersion: '6.1' }, { bytesPerLine: 0 }), RangeError);
  });
});

describe('renderBlobSource', () => {
  test('rejects qboot of wrong size', () => {
    assert.throws(
      () => renderBlobSource('qboot', new Uint8Array(2 * KIB64), { kernelVersion: '6.1' }),
      krunfwError(/qboot firmware has 131072 bytes, but libkrun accepts only exactly 65536/),
    );
  });
});

/**
 * Bytes that exercise every escape: each byte value alone, each byte followed by every
 * digit character (where a short octal escape would swallow the digit), the trigraph
 * sequences, and quotes and backslashes next to digits.
 */
function escapeSample(): Uint8Array {
  const parts: number[] = [];
  for (let byte = 0; byte < 256; byte++) {
    parts.push(byte);
  }
  for (let byte = 0; byte < 256; byte++) {
    for (const digit of '0123456789') {
      parts.push(byte, digit.charCodeAt(0));
    }
  }
  for (const text of ['??=', '??/', "??'", '??(', '??)', '??!', '??<', '??>', '??-', '???', '\\0', '\\\\"7', '"0', '\\x41', '\\u0041']) {
    parts.push(...Buffer.from(text, 'latin1'));
  }
  return Uint8Array.from(parts);
}

/** Repeatable bytes from xorshift32, half of them from the characters that need care. */
function pseudoRandomBytes(length: number, seed: number): Uint8Array {
  const tricky = Buffer.from('\0\x01\x07\n\r"\\?01234567789\xff', 'latin1');
  const bytes = new Uint8Array(length);
  let state = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    bytes[i] = state & 0x100 ? tricky[state % tricky.length] : state & 0xff;
  }
  return bytes;
}

/** A C program that dlopens a generated library the way libkrun does and writes out what it finds. */
const DUMP_PROGRAM = `
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef char *(*get_kernel_fn)(size_t *, size_t *, size_t *);
typedef char *(*get_blob_fn)(size_t *);
typedef int (*get_version_fn)(void);

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: dump LIBRARY kernel|qboot|initrd OUTPUT\\n");
		return 2;
	}
	void *library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (library == NULL) {
		fprintf(stderr, "dlopen failed: %s\\n", dlerror());
		return 1;
	}
	size_t load = 0, entry = 0, size = 0;
	char *bytes;
	char symbol[64];
	snprintf(symbol, sizeof(symbol), "krunfw_get_%s", argv[2]);
	if (strcmp(argv[2], "kernel") == 0) {
		get_kernel_fn get_kernel = (get_kernel_fn)dlsym(library, symbol);
		get_version_fn get_version = (get_version_fn)dlsym(library, "krunfw_get_version");
		if (get_kernel == NULL || get_version == NULL) {
			fprintf(stderr, "missing symbol: %s\\n", dlerror());
			return 1;
		}
		bytes = get_kernel(&load, &entry, &size);
		printf("version=%d\\n", get_version());
	} else {
		get_blob_fn get_blob = (get_blob_fn)dlsym(library, symbol);
		if (get_blob == NULL) {
			fprintf(stderr, "missing symbol: %s\\n", dlerror());
			return 1;
		}
		bytes = get_blob(&size);
	}
	printf("load=%zx\\nentry=%zx\\nsize=%zu\\n", load, entry, size);
	printf("alignment_remainder=%zu\\n", (size_t)((uintptr_t)bytes % 65536));
	printf("terminator=%d\\n", bytes[size]);
	snprintf(symbol, sizeof(symbol), "%s_bundle", argv[2]);
	printf("array_symbol=%s\\n", dlsym(library, symbol) == NULL ? "hidden" : "visible");

	FILE *out = fopen(argv[3], "wb");
	if (out == NULL || fwrite(bytes, 1, size, out) != size || fclose(out) != 0) {
		perror(argv[3]);
		return 1;
	}
	return 0;
}
`;

interface Dump {
  fields: Map<string, string>;
  bytes: Uint8Array;
}

describe('C compiler round trip', () => {
  const cc = process.env.CC ?? 'cc';
  let directory = '';
  let dumpProgram = '';
  let counter = 0;

  before(async () => {
    directory = await mkdtemp(join(tmpdir(), 'krunfw-bundle-test-'));
    dumpProgram = join(directory, 'dump');
    await writeFile(join(directory, 'dump.c'), DUMP_PROGRAM);
    // -ldl is needed by glibc before 2.34 and harmless elsewhere.
    await execa(cc, ['-o', dumpProgram, join(directory, 'dump.c'), '-ldl']);
  });

  after(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  async function compile(source: Buffer, extraFlags: string[] = []): Promise<string> {
    counter += 1;
    const sourcePath = join(directory, `source-${counter}.c`);
    const libraryPath = join(directory, `library-${counter}.so`);
    await writeFile(sourcePath, source);
    await execa(cc, ['-shared', '-fPIC', '-DABI_VERSION=5', ...extraFlags, '-o', libraryPath, sourcePath]);
    return libraryPath;
  }

  async function dump(libraryPath: string, accessor: 'kernel' | 'qboot' | 'initrd'): Promise<Dump> {
    const outputPath = `${libraryPath}.${accessor}.bin`;
    const { stdout } = await execa(dumpProgram, [libraryPath, accessor, outputPath]);
    const fields = new Map(stdout.split('\n').map((line) => line.split('=', 2) as [string, string]));
    return { fields, bytes: await readFile(outputPath) };
  }

  async function roundTrip(bundle: KernelBundle, bytesPerLine?: number): Promise<Dump> {
    const source = renderKernelSource(bundle, { kernelVersion: '6.1.55' }, { bytesPerLine });
    return dump(await compile(source), 'kernel');
  }

  test('kernel.c keeps every byte value', async () => {
    const bundle = bundleRaw(escapeSample(), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const result = await roundTrip(bundle);

    assert.equal(result.fields.get('size'), String(bundle.bytes.byteLength));
    assertSameBytes(result.bytes, bundle.bytes);
  });

  test('kernel.c keeps bytes with short lines', async () => {
    const bundle = bundleRaw(escapeSample(), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    for (const bytesPerLine of [1, 2, 3, 7]) {
      const result = await roundTrip(bundle, bytesPerLine);
      assertSameBytes(result.bytes, bundle.bytes);
    }
  });

  test('kernel.c keeps pseudo-random bytes', async () => {
    const bundle = bundleRaw(pseudoRandomBytes(3 * KIB64 + 123, 0x5eed), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const result = await roundTrip(bundle, 61);

    assertSameBytes(result.bytes, bundle.bytes);
  });

  test('kernel.c keeps trigraph sequences in ISO C', async () => {
    // -std=c11 turns on trigraph replacement, which the GNU modes leave off.
    const bundle = bundleRaw(escapeSample(), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const source = renderKernelSource(bundle, { kernelVersion: '6.1.55' });
    const result = await dump(await compile(source, ['-std=c11']), 'kernel');

    assertSameBytes(result.bytes, bundle.bytes);
  });

  test('kernel.c reports addresses of ELF bundle', async () => {
    const elf = buildElf({
      entry: 0x1a3c5e0n,
      segments: [
        { paddr: LOAD, data: escapeSample() },
        { paddr: LOAD + 0x10000n, data: patternBytes(5000, 2) },
      ],
    });
    const bundle = bundleElfKernel(elf, 'vmlinux');
    const result = await roundTrip(bundle);

    assert.equal(result.fields.get('load'), '1000000');
    assert.equal(result.fields.get('entry'), '1a3c5e0');
    assert.equal(result.fields.get('size'), String(2 * KIB64));
    assertSameBytes(result.bytes, bundle.bytes);
  });

  test('kernel.c reports 64-bit entry address', async () => {
    const bundle = bundleRaw(patternBytes(10, 1), { loadAddress: 0x80000000n, entryAddress: 0xffffffff81000200n });
    const result = await roundTrip(bundle);

    assert.equal(result.fields.get('entry'), 'ffffffff81000200');
  });

  test('kernel.c returns ABI version', async () => {
    const bundle = bundleRaw(patternBytes(10, 1), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const result = await roundTrip(bundle);

    assert.equal(result.fields.get('version'), '5');
  });

  test('kernel.c array is 64 KiB aligned', async () => {
    const bundle = bundleRaw(patternBytes(10, 1), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const result = await roundTrip(bundle);

    assert.equal(result.fields.get('alignment_remainder'), '0');
  });

  test('kernel.c array ends with NUL terminator', async () => {
    const bundle = bundleRaw(patternBytes(KIB64, 1), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const result = await roundTrip(bundle);

    assert.equal(result.fields.get('terminator'), '0');
  });

  test('kernel.c exports accessors under hidden visibility', async () => {
    const bundle = bundleRaw(patternBytes(10, 1), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const source = renderKernelSource(bundle, { kernelVersion: '6.1.55' });
    const result = await dump(await compile(source, ['-fvisibility=hidden']), 'kernel');

    assert.equal(result.fields.get('size'), String(KIB64));
  });

  test('kernel.c keeps the array private', async () => {
    const bundle = bundleRaw(patternBytes(10, 1), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const result = await roundTrip(bundle);

    assert.equal(result.fields.get('array_symbol'), 'hidden');
  });

  test('kernel.c needs ABI_VERSION', async () => {
    const bundle = bundleRaw(patternBytes(10, 1), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const sourcePath = join(directory, 'no-abi.c');
    await writeFile(sourcePath, renderKernelSource(bundle, { kernelVersion: '6.1.55' }));

    await assert.rejects(execa(cc, ['-shared', '-fPIC', '-o', join(directory, 'no-abi.so'), sourcePath]), {
      stderr: /ABI_VERSION is not defined/,
    });
  });

  test('kernel.c rejects a damaged literal', async () => {
    const bundle = bundleRaw(patternBytes(10, 1), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const source = renderKernelSource(bundle, { kernelVersion: '6.1.55' }).toString('latin1');
    // Drop one zero byte from the padding, as a broken encoder would.
    const damaged = source.replace('\\0\\0', '\\0');
    const sourcePath = join(directory, 'damaged.c');
    await writeFile(sourcePath, damaged, 'latin1');

    assert.notEqual(damaged, source);
    await assert.rejects(execa(cc, ['-shared', '-fPIC', '-DABI_VERSION=5', '-o', join(directory, 'damaged.so'), sourcePath]), {
      stderr: /does not encode exactly the bundle bytes/,
    });
  });

  test('qboot.c round trip', async () => {
    const firmware = bundleRaw(escapeSample().subarray(0, KIB64), { loadAddress: 0n, entryAddress: 0n });
    const result = await dump(await compile(renderBlobSource('qboot', firmware.bytes, { kernelVersion: '6.1.55' })), 'qboot');

    assert.equal(result.fields.get('size'), String(KIB64));
    assert.equal(result.fields.get('alignment_remainder'), '0');
    assert.equal(result.fields.get('array_symbol'), 'hidden');
    assertSameBytes(result.bytes, firmware.bytes);
  });

  test('initrd.c round trip', async () => {
    const initrd = bundleRaw(pseudoRandomBytes(KIB64 + 5, 7), { loadAddress: 0n, entryAddress: 0n });
    const result = await dump(await compile(renderBlobSource('initrd', initrd.bytes, { kernelVersion: '6.1.55' })), 'initrd');

    assert.equal(result.fields.get('size'), String(2 * KIB64));
    assert.equal(result.fields.get('alignment_remainder'), '0');
    assertSameBytes(result.bytes, initrd.bytes);
  });
});

