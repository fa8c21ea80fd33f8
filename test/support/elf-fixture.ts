// SPDX-License-Identifier: LGPL-2.1-only
// Hand-built ELF64 files for the bundle tests: a 64-byte header, the program header
// table right after it, then each segment's file bytes at a 16-byte aligned offset.

export const PT_LOAD = 1;
export const PT_NOTE = 4;
export const PT_GNU_STACK = 0x6474e551;
export const EM_X86_64 = 62;

export const ELF_HEADER_SIZE = 64;
export const PROGRAM_HEADER_SIZE = 56;

/** x86_64 kernels link at this virtual base plus the physical address. */
export const KERNEL_VIRTUAL_BASE = 0xffffffff80000000n;

/** Offset and width in bytes of each ELF header field that the tests change. */
export const HEADER_FIELDS = {
  class: { offset: 4, size: 1 },
  data: { offset: 5, size: 1 },
  e_entry: { offset: 0x18, size: 8 },
  e_phoff: { offset: 0x20, size: 8 },
  e_phentsize: { offset: 0x36, size: 2 },
  e_phnum: { offset: 0x38, size: 2 },
} as const;

/** Offset (within one program header) and width in bytes of each program header field. */
export const PROGRAM_HEADER_FIELDS = {
  p_type: { offset: 0x00, size: 4 },
  p_flags: { offset: 0x04, size: 4 },
  p_offset: { offset: 0x08, size: 8 },
  p_vaddr: { offset: 0x10, size: 8 },
  p_paddr: { offset: 0x18, size: 8 },
  p_filesz: { offset: 0x20, size: 8 },
  p_memsz: { offset: 0x28, size: 8 },
  p_align: { offset: 0x30, size: 8 },
} as const;

export interface FixtureSegment {
  /** p_type, PT_LOAD by default. */
  type?: number;
  /** p_paddr */
  paddr: bigint;
  /** p_vaddr, KERNEL_VIRTUAL_BASE + paddr by default, as in an x86_64 vmlinux. */
  vaddr?: bigint;
  /** The segment's bytes in the file, empty by default. */
  data?: Uint8Array;
  /** p_memsz, the data length by default. */
  memsz?: bigint;
  /** p_offset, replacing the offset where the data was written. */
  offset?: bigint;
  /** p_filesz, replacing the data length. */
  filesz?: bigint;
}

export interface ElfFixtureOptions {
  segments: FixtureSegment[];
  /** e_entry, the first segment's p_paddr by default. */
  entry?: bigint;
  /** EI_CLASS, 2 (64-bit) by default. */
  elfClass?: number;
  /** EI_DATA, 1 (little-endian) by default. */
  encoding?: number;
  /** e_phentsize, 56 by default. Larger values leave zeroed space after each header. */
  programHeaderSize?: number;
  /** e_phnum, replacing the number of segments. */
  programHeaderCount?: number;
  /** e_phoff, replacing 64. */
  programHeaderOffset?: bigint;
}

/** Builds a small ELF64 file. Fields left out get the values of a valid x86_64 vmlinux. */
export function buildElf(options: ElfFixtureOptions): Uint8Array {
  const programHeaderSize = options.programHeaderSize ?? PROGRAM_HEADER_SIZE;
  const tableSize = options.segments.length * Math.max(programHeaderSize, PROGRAM_HEADER_SIZE);

  let dataOffset = align16(ELF_HEADER_SIZE + tableSize);
  const dataOffsets = options.segments.map((segment) => {
    const at = dataOffset;
    dataOffset = align16(dataOffset + (segment.data?.byteLength ?? 0));
    return at;
  });

  const file = new Uint8Array(dataOffset);
  const view = new DataView(file.buffer);
  file.set([0x7f, 0x45, 0x4c, 0x46], 0);
  file[4] = options.elfClass ?? 2;
  file[5] = options.encoding ?? 1;
  file[6] = 1; // EI_VERSION
  view.setUint16(0x10, 2, true); // e_type: ET_EXEC
  view.setUint16(0x12, EM_X86_64, true);
  view.setUint32(0x14, 1, true); // e_version
  view.setBigUint64(0x18, options.entry ?? options.segments[0]?.paddr ?? 0n, true);
  view.setBigUint64(0x20, options.programHeaderOffset ?? BigInt(ELF_HEADER_SIZE), true);
  view.setUint16(0x34, ELF_HEADER_SIZE, true);
  view.setUint16(0x36, programHeaderSize, true);
  view.setUint16(0x38, options.programHeaderCount ?? options.segments.length, true);

  const stride = Math.max(programHeaderSize, PROGRAM_HEADER_SIZE);
  options.segments.forEach((segment, index) => {
    const at = ELF_HEADER_SIZE + index * stride;
    const data = segment.data ?? new Uint8Array(0);
    const filesz = segment.filesz ?? BigInt(data.byteLength);
    view.setUint32(at + 0x00, segment.type ?? PT_LOAD, true);
    view.setUint32(at + 0x04, 0b101, true); // p_flags: R + X
    view.setBigUint64(at + 0x08, segment.offset ?? BigInt(dataOffsets[index]), true);
    view.setBigUint64(at + 0x10, segment.vaddr ?? KERNEL_VIRTUAL_BASE + segment.paddr, true);
    view.setBigUint64(at + 0x18, segment.paddr, true);
    view.setBigUint64(at + 0x20, filesz, true);
    view.setBigUint64(at + 0x28, segment.memsz ?? filesz, true);
    view.setBigUint64(at + 0x30, 0x1000n, true);
    file.set(data, dataOffsets[index]);
  });
  return file;
}

/** Returns `length` bytes of a repeatable pattern that differs for each `salt` and has no zeros. */
export function patternBytes(length: number, salt: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) {
    bytes[i] = ((i * 31 + salt * 17) % 255) + 1;
  }
  return bytes;
}

/** Writes an unsigned little-endian field of 1, 2, 4 or 8 bytes into an ELF file. */
export function writeField(file: Uint8Array, offset: number, size: 1 | 2 | 4 | 8, value: bigint): void {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const masked = BigInt.asUintN(size * 8, value);
  if (size === 1) view.setUint8(offset, Number(masked));
  else if (size === 2) view.setUint16(offset, Number(masked), true);
  else if (size === 4) view.setUint32(offset, Number(masked), true);
  else view.setBigUint64(offset, masked, true);
}

/** Reads an unsigned little-endian field of 1, 2, 4 or 8 bytes from an ELF file. */
export function readField(file: Uint8Array, offset: number, size: 1 | 2 | 4 | 8): bigint {
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  if (size === 1) return BigInt(view.getUint8(offset));
  if (size === 2) return BigInt(view.getUint16(offset, true));
  if (size === 4) return BigInt(view.getUint32(offset, true));
  return view.getBigUint64(offset, true);
}

function align16(value: number): number {
  return Math.ceil(value / 16) * 16;
}
