// SPDX-License-Identifier: LGPL-2.1-only
import { KrunfwError } from '../errors.js';

/** One PT_LOAD program header. File offsets and sizes are checked to be safe integers. */
export interface ElfLoadSegment {
  /** Index of this header in the program header table. */
  index: number;
  /** p_offset: where the segment's bytes start in the file. */
  offset: number;
  /** p_vaddr */
  vaddr: bigint;
  /** p_paddr */
  paddr: bigint;
  /** p_filesz: bytes stored in the file, all within the file (checked). */
  filesz: number;
  /** p_memsz: bytes in memory, never less than `filesz` (checked). */
  memsz: bigint;
}

/** The parts of a 64-bit little-endian ELF file that the bundle needs. */
export interface ElfImage {
  /** e_entry */
  entry: bigint;
  /** e_machine, for example 62 (EM_X86_64) or 183 (EM_AARCH64). */
  machine: number;
  /** The PT_LOAD headers in program header table order, at least one. */
  loadSegments: ElfLoadSegment[];
}

const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];
const ELFCLASS32 = 1;
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
const ELFDATA2MSB = 2;
const PT_LOAD = 1;
/** e_phnum value meaning that the real count is in section header 0. */
const PN_XNUM = 0xffff;
export const ELF64_HEADER_SIZE = 64;
export const ELF64_PROGRAM_HEADER_SIZE = 56;

const hint =
  'Pass the uncompressed vmlinux from the top of the kernel build tree, not bzImage. An aarch64 Image is bundled raw instead.';

/**
 * Parses a 64-bit little-endian ELF file and returns its entry point and PT_LOAD headers.
 * Throws KrunfwError naming `name` when the file is not such an ELF file, is truncated,
 * has no PT_LOAD header, or has a header whose sizes make no sense.
 */
export function readElf(data: Uint8Array, name: string): ElfImage {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  checkIdentification(data, name);

  const entry = view.getBigUint64(0x18, true);
  const machine = view.getUint16(0x12, true);
  const programHeaderOffset = toSafeInteger(view.getBigUint64(0x20, true), name, 'e_phoff');
  const programHeaderSize = view.getUint16(0x36, true);
  const programHeaderCount = view.getUint16(0x38, true);

  if (programHeaderCount === PN_XNUM) {
    throw new KrunfwError(`${name} uses extended program header numbering (e_phnum = 0xffff), which is not supported.`, { hint });
  }
  if (programHeaderCount === 0) {
    throw new KrunfwError(`${name} has no program headers, so it has no PT_LOAD segment to bundle.`, { hint });
  }
  if (programHeaderSize < ELF64_PROGRAM_HEADER_SIZE) {
    throw new KrunfwError(
      `${name} has an invalid program header size (e_phentsize = ${programHeaderSize}, expected at least ${ELF64_PROGRAM_HEADER_SIZE}).`,
      { hint },
    );
  }
  // With at most 0xfffe headers of at most 0xffff bytes each, the product stays far below 2^53.
  const tableEnd = programHeaderOffset + programHeaderCount * programHeaderSize;
  if (tableEnd > data.byteLength) {
    throw new KrunfwError(
      `${name} is truncated: its program header table ends at byte ${tableEnd}, but the file has ${data.byteLength} bytes.`,
      { hint },
    );
  }

  const loadSegments: ElfLoadSegment[] = [];
  for (let index = 0; index < programHeaderCount; index++) {
    const at = programHeaderOffset + index * programHeaderSize;
    if (view.getUint32(at, true) === PT_LOAD) {
      loadSegments.push(readLoadSegment(view, at, index, name));
    }
  }
  if (loadSegments.length === 0) {
    throw new KrunfwError(`${name} has no PT_LOAD segment to bundle.`, { hint });
  }
  return { entry, machine, loadSegments };
}

function checkIdentification(data: Uint8Array, name: string): void {
  if (data.byteLength < ELF_MAGIC.length || ELF_MAGIC.some((byte, i) => data[i] !== byte)) {
    throw new KrunfwError(`${name} is not an ELF file (its first bytes are not 7f 45 4c 46).`, { hint });
  }
  if (data.byteLength < ELF64_HEADER_SIZE) {
    throw new KrunfwError(
      `${name} is truncated: it has ${data.byteLength} bytes, fewer than the ${ELF64_HEADER_SIZE}-byte ELF64 header.`,
      { hint },
    );
  }
  const elfClass = data[4];
  if (elfClass === ELFCLASS32) {
    throw new KrunfwError(`${name} is a 32-bit ELF file, but the kernel bundle needs a 64-bit vmlinux.`, { hint });
  }
  if (elfClass !== ELFCLASS64) {
    throw new KrunfwError(`${name} has an invalid ELF class (EI_CLASS = ${elfClass}).`, { hint });
  }
  const encoding = data[5];
  if (encoding === ELFDATA2MSB) {
    throw new KrunfwError(`${name} is a big-endian ELF file, but the kernel bundle needs a little-endian vmlinux.`, { hint });
  }
  if (encoding !== ELFDATA2LSB) {
    throw new KrunfwError(`${name} has an invalid ELF data encoding (EI_DATA = ${encoding}).`, { hint });
  }
}

function readLoadSegment(view: DataView, at: number, index: number, name: string): ElfLoadSegment {
  const label = `program header ${index}`;
  const offset = toSafeInteger(view.getBigUint64(at + 0x08, true), name, `${label} p_offset`);
  const vaddr = view.getBigUint64(at + 0x10, true);
  const paddr = view.getBigUint64(at + 0x18, true);
  const filesz = toSafeInteger(view.getBigUint64(at + 0x20, true), name, `${label} p_filesz`);
  const memsz = view.getBigUint64(at + 0x28, true);

  if (BigInt(filesz) > memsz) {
    throw new KrunfwError(`${name} has an invalid ${label}: p_filesz (${filesz}) is larger than p_memsz (${memsz}).`, {
      hint,
    });
  }
  // Both values are below 2^53, so the sum can round only when it is far beyond any file length.
  if (offset + filesz > view.byteLength) {
    throw new KrunfwError(
      `${name} is truncated: ${label} (PT_LOAD) ends at byte ${offset + filesz}, but the file has ${view.byteLength} bytes.`,
      { hint },
    );
  }
  return { index, offset, vaddr, paddr, filesz, memsz };
}

function toSafeInteger(value: bigint, name: string, field: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new KrunfwError(`${name} has an invalid ${field}: 0x${value.toString(16)} is beyond any file size.`, { hint });
  }
  return Number(value);
}
