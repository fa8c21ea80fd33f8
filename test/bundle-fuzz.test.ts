// SPDX-License-Identifier: LGPL-2.1-only
// Randomly mutated ELF files and random byte strings, from a seeded generator so that every
// failure can be replayed. KRUNFW_FUZZ_SEED sets the seed, KRUNFW_FUZZ_CASES the number of
// cases, and KRUNFW_FUZZ_CASE runs one case alone.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { renderKernelSource } from '../src/bundle/c-source.js';
import { MAX_BUNDLE_SIZE, bundleElfKernel, bundleRaw, type KernelBundle } from '../src/bundle/layout.js';
import { KrunfwError } from '../src/errors.js';
import {
  ELF_HEADER_SIZE,
  HEADER_FIELDS,
  PROGRAM_HEADER_FIELDS,
  PROGRAM_HEADER_SIZE,
  PT_GNU_STACK,
  PT_NOTE,
  buildElf,
  patternBytes,
  readField,
  writeField,
} from './support/elf-fixture.js';

const SEED = Number(process.env.KRUNFW_FUZZ_SEED ?? 0x6b72756e);
const CASES = Number(process.env.KRUNFW_FUZZ_CASES ?? 2000);
const ONLY_CASE = process.env.KRUNFW_FUZZ_CASE === undefined ? undefined : Number(process.env.KRUNFW_FUZZ_CASE);

const LOAD = 0x1000000n;
const KIB64 = 64 * 1024;

/** xorshift32 with a seed scrambled per case, so that each case can be replayed on its own. */
class Random {
  private state: number;

  constructor(seed: number, caseNumber: number) {
    let state = (seed ^ Math.imul(caseNumber + 1, 0x9e3779b9)) >>> 0;
    state = Math.imul(state ^ (state >>> 16), 0x85ebca6b) >>> 0;
    state = Math.imul(state ^ (state >>> 13), 0xc2b2ae35) >>> 0;
    this.state = (state ^ (state >>> 16)) >>> 0 || 1;
  }

  next(): number {
    let x = this.state;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }

  /** Returns an integer in [0, limit). */
  below(limit: number): number {
    return Math.floor((this.next() / 0x1_0000_0000) * limit);
  }

  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)];
  }

  bigint64(): bigint {
    return (BigInt(this.next()) << 32n) | BigInt(this.next());
  }
}

/** A valid vmlinux in small: a note, three PT_LOAD segments with gaps and BSS, and a stack header. */
const BASE_ELF = buildElf({
  entry: LOAD + 0x40n,
  segments: [
    { type: PT_NOTE, paddr: 0n, data: patternBytes(48, 1) },
    { paddr: LOAD, data: patternBytes(3000, 2) },
    { paddr: LOAD + 0x2000n, data: patternBytes(1000, 3), memsz: 0x3000n },
    { type: PT_GNU_STACK, paddr: 0n },
    { paddr: LOAD + 0x6000n, data: patternBytes(500, 4), memsz: 0x8000n },
  ],
});
const BASE_PROGRAM_HEADERS = 5;

type FieldSize = 1 | 2 | 4 | 8;

/** Returns a value likely to hit a boundary in the reader or the layout, often derived from the field's value. */
function interestingValue(random: Random, original: bigint, size: FieldSize): bigint {
  const bits = BigInt(size * 8);
  switch (random.below(10)) {
    case 0:
      return random.pick([0n, 1n, 56n, 64n, 0xffffn]);
    case 1:
      return (1n << bits) - 1n;
    case 2:
      return 1n << (bits - 1n);
    case 3:
      return original + BigInt(random.below(0x2000)) + 1n;
    case 4:
      return original - BigInt(random.below(0x2000)) - 1n;
    case 5:
      return original ^ (1n << BigInt(random.below(size * 8)));
    case 6:
      return random.bigint64();
    case 7:
      return BigInt(random.below(0x10000));
    case 8:
      return random.pick([BigInt(Number.MAX_SAFE_INTEGER), 1n << 53n, 1n << 32n]);
    default:
      // Gaps near and beyond the bundle size limit.
      return original + random.pick([1n << 28n, 1n << 30n, (1n << 30n) - 0x10000n, 1n << 31n]);
  }
}

/** Returns a mutated copy of `elf`, changed in one to three ways. */
function mutate(elf: Uint8Array, random: Random): Uint8Array {
  let file = Uint8Array.from(elf);
  const mutations = 1 + random.below(3);
  for (let m = 0; m < mutations; m++) {
    const kind = random.below(10);
    if (kind < 3) {
      const field = random.pick(Object.values(HEADER_FIELDS));
      if (field.offset + field.size <= file.byteLength) {
        const original = readField(file, field.offset, field.size);
        writeField(file, field.offset, field.size, interestingValue(random, original, field.size));
      }
    } else if (kind < 7) {
      const index = random.below(BASE_PROGRAM_HEADERS);
      const field = random.pick(Object.values(PROGRAM_HEADER_FIELDS));
      const offset = ELF_HEADER_SIZE + index * PROGRAM_HEADER_SIZE + field.offset;
      if (offset + field.size <= file.byteLength) {
        const original = readField(file, offset, field.size);
        writeField(file, offset, field.size, interestingValue(random, original, field.size));
      }
    } else if (kind < 9) {
      // Random bytes, mostly in the headers where they matter most.
      const flips = 1 + random.below(8);
      const headerEnd = ELF_HEADER_SIZE + BASE_PROGRAM_HEADERS * PROGRAM_HEADER_SIZE;
      for (let f = 0; f < flips && file.byteLength > 0; f++) {
        const limit = random.below(10) < 7 ? Math.min(headerEnd, file.byteLength) : file.byteLength;
        file[random.below(limit)] = random.below(256);
      }
    } else {
      file = file.subarray(0, random.below(file.byteLength + 1));
    }
  }
  return file;
}

/** Checks what every successful bundle must satisfy, whatever its input. */
function checkBundle(bundle: KernelBundle, input: Uint8Array, label: string): void {
  const size = bundle.bytes.byteLength;
  assert.equal(size % KIB64, 0, `${label}: bundle length ${size} is not a multiple of 64 KiB`);
  assert.ok(size > 0, `${label}: bundle is empty`);
  assert.ok(size <= MAX_BUNDLE_SIZE, `${label}: bundle length ${size} is above ${MAX_BUNDLE_SIZE}`);
  assert.equal(bundle.loadAddress % 0x1000n, 0n, `${label}: load address 0x${bundle.loadAddress.toString(16)} is not page-aligned`);

  const { fileOffset, size: firstSize } = bundle.firstSegment;
  assert.ok(fileOffset + firstSize <= input.byteLength, `${label}: first segment lies outside the file`);
  const expected = input.subarray(fileOffset, fileOffset + firstSize);
  const actual = bundle.bytes.subarray(0, firstSize);
  assert.ok(Buffer.from(actual).equals(expected), `${label}: first segment bytes differ from the file`);
}

/** Runs `body` for every case number (or only KRUNFW_FUZZ_CASE), reporting any non-KrunfwError with the case. */
function forEachCase(body: (random: Random, label: string) => 'bundled' | 'rejected'): { bundled: number; rejected: number } {
  const counts = { bundled: 0, rejected: 0 };
  const first = ONLY_CASE ?? 0;
  const end = ONLY_CASE === undefined ? CASES : ONLY_CASE + 1;
  for (let caseNumber = first; caseNumber < end; caseNumber++) {
    const label = `case ${caseNumber} (rerun with KRUNFW_FUZZ_SEED=${SEED} KRUNFW_FUZZ_CASE=${caseNumber})`;
    counts[body(new Random(SEED, caseNumber), label)] += 1;
  }
  return counts;
}

function expectKrunfwError(error: unknown, label: string): 'rejected' {
  if (error instanceof KrunfwError) {
    return 'rejected';
  }
  const detail = error instanceof Error ? error.stack : String(error);
  assert.fail(`${label} threw something other than KrunfwError: ${detail}`);
}

test('base fixture bundles', () => {
  const bundle = bundleElfKernel(BASE_ELF, 'base.elf');
  assert.equal(bundle.bytes.byteLength, KIB64);
});

test('mutated ELF bundles or raises KrunfwError', (t) => {
  const counts = forEachCase((random, label) => {
    const input = mutate(BASE_ELF, random);
    let bundle: KernelBundle;
    try {
      bundle = bundleElfKernel(input, 'fuzz.elf');
    } catch (error) {
      return expectKrunfwError(error, label);
    }
    checkBundle(bundle, input, label);
    return 'bundled';
  });
  t.diagnostic(`seed ${SEED}: ${counts.bundled} bundled, ${counts.rejected} rejected`);

  // A mutator that only ever breaks the file, or never does, would test half of the code.
  if (ONLY_CASE === undefined) {
    assert.ok(counts.bundled >= CASES / 10, `only ${counts.bundled} of ${CASES} cases bundled`);
    assert.ok(counts.rejected >= CASES / 10, `only ${counts.rejected} of ${CASES} cases were rejected`);
  }
});

/** C's simple escape sequences: the character after the backslash, and the byte it stands for. */
const NAMED_ESCAPES = new Map<number, number>(
  (
    [
      ['a', 7],
      ['b', 8],
      ['t', 9],
      ['n', 10],
      ['v', 11],
      ['f', 12],
      ['r', 13],
      ['\\', 92],
      ['"', 34],
      ['?', 63],
      ["'", 39],
    ] as const
  ).map(([letter, byte]) => [letter.charCodeAt(0), byte]),
);

/**
 * Decodes the string literals of a generated C file's array the way a C compiler does, and
 * checks on the way that the literal contains only printable ASCII and no trigraph.
 */
function decodeArray(source: Buffer, label: string): Uint8Array {
  const marker = Buffer.from('__attribute__((aligned(65536))) =\n');
  let i = source.indexOf(marker);
  assert.notEqual(i, -1, `${label}: array declaration not found`);
  i += marker.byteLength;

  const QUOTE = 0x22;
  const BACKSLASH = 0x5c;
  const QUESTION = 0x3f;
  const bytes = new Uint8Array(source.byteLength);
  let length = 0;
  while (source[i] !== 0x3b /* ; */) {
    if (source[i] === 0x0a) {
      i++;
      continue;
    }
    assert.equal(source[i], QUOTE, `${label}: expected a string literal at byte ${i}`);
    i++;
    while (source[i] !== QUOTE) {
      const code = source[i];
      if (code < 0x20 || code > 0x7e) assert.fail(`${label}: raw byte ${code} at byte ${i}`);
      if (code === QUESTION && source[i + 1] === QUESTION) assert.fail(`${label}: possible trigraph at byte ${i}`);
      if (code !== BACKSLASH) {
        bytes[length++] = code;
        i++;
        continue;
      }
      const named = NAMED_ESCAPES.get(source[i + 1]);
      if (named !== undefined) {
        bytes[length++] = named;
        i += 2;
        continue;
      }
      let digits = 0;
      let value = 0;
      while (digits < 3 && source[i + 1 + digits] >= 0x30 && source[i + 1 + digits] <= 0x37) {
        value = value * 8 + source[i + 1 + digits] - 0x30;
        digits++;
      }
      if (digits === 0) assert.fail(`${label}: unknown escape at byte ${i}`);
      bytes[length++] = value;
      i += 1 + digits;
    }
    i++;
  }
  return bytes.subarray(0, length);
}

/** Random bytes drawn from one of several distributions, as kernels mix code, text and zeros. */
function randomData(random: Random): Uint8Array {
  const length = 1 + random.below(3 * KIB64);
  const data = new Uint8Array(length);
  const alphabet = random.pick([
    '0123456789',
    '\\"?01234567',
    '\0\x01\x07\x08\t\n\x0b\x0c\r\x1b0123456789',
    '??=/\'()!<>-',
  ]);
  const style = random.below(4);
  for (let i = 0; i < length; i++) {
    if (style === 0) data[i] = random.below(256);
    else if (style === 1) data[i] = alphabet.charCodeAt(random.below(alphabet.length));
    else if (style === 2) data[i] = random.below(4) === 0 ? random.below(256) : 0;
    else data[i] = random.below(2) === 0 ? alphabet.charCodeAt(random.below(alphabet.length)) : random.below(256);
  }
  return data;
}

test('rendered kernel.c decodes to the bundle', (t) => {
  const cases = Math.min(CASES, 300);
  let checked = 0;
  for (let caseNumber = 0; caseNumber < cases; caseNumber++) {
    if (ONLY_CASE !== undefined && caseNumber !== ONLY_CASE) continue;
    const label = `render case ${caseNumber} (rerun with KRUNFW_FUZZ_SEED=${SEED} KRUNFW_FUZZ_CASE=${caseNumber})`;
    // A different stream from the ELF cases with the same number.
    const random = new Random(SEED ^ 0x52454e44, caseNumber);
    const bundle = bundleRaw(randomData(random), { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
    const bytesPerLine = random.pick([1, 2, 3, 5, 16, 79, 1024]);
    const source = renderKernelSource(bundle, { kernelVersion: '6.1' }, { bytesPerLine });

    const decoded = decodeArray(source, label);
    assert.equal(decoded.byteLength, bundle.bytes.byteLength, `${label}: decoded length`);
    assert.ok(Buffer.from(decoded).equals(bundle.bytes), `${label}: decoded bytes differ from the bundle`);
    checked++;
  }
  t.diagnostic(`seed ${SEED}: ${checked} rendered files decoded`);
  assert.ok(checked > 0, 'no render case ran');
});
