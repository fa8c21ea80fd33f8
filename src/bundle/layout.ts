// SPDX-License-Identifier: LGPL-2.1-only
import { KrunfwError } from '../errors.js';
import { readElf, type ElfImage, type ElfLoadSegment } from './elf.js';

/**
 * A kernel (or firmware or initrd) laid out the way libkrun maps it into guest memory.
 */
export interface KernelBundle {
  /** The bundle bytes, zero-padded to a multiple of BUNDLE_ALIGNMENT. */
  bytes: Uint8Array;
  /** Guest physical address where libkrun places the first byte. */
  loadAddress: bigint;
  /** Guest physical address where the vCPU starts. */
  entryAddress: bigint;
  /** The layout: PT_LOAD segments of an ELF file, or a raw file's bytes. */
  kind: 'elf' | 'raw';
  /** The artifact file's byte range that became the bundle's first bytes, for the self-test to compare. */
  firstSegment: { fileOffset: number; size: number };
}

/**
 * Alignment of the bundle's start and size in bytes (64 KiB). libkrun needs the
 * bundle's host address aligned to the host page size, which is 4, 16 or 64 KiB.
 */
export const BUNDLE_ALIGNMENT = 64 * 1024;

/**
 * Largest bundle accepted, in bytes (1 GiB). Real kernels are tens of MiB, so a larger
 * layout comes from a corrupt or foreign ELF file and is rejected before allocating it.
 */
export const MAX_BUNDLE_SIZE = 1024 * 1024 * 1024;

/** The mask that turns the first PT_LOAD's p_vaddr into the guest load address. */
const LOAD_ADDRESS_MASK = 0x0fffffffn;

/** libkrun rejects a guest load address that is not aligned to the 4 KiB guest page. */
const GUEST_PAGE_SIZE = 0x1000n;

const MAX_ADDRESS = (1n << 64n) - 1n;

/**
 * Lays out a vmlinux as an ELF bundle: each PT_LOAD segment at `p_paddr - load address`,
 * zeros in the gaps (including every segment's BSS but the last one's, which is not stored),
 * and zero padding to a multiple of 64 KiB. The load address is the first PT_LOAD's p_vaddr
 * masked with 0x0fffffff, and the entry address is e_entry unmasked. This reproduces the
 * layout of libkrunfw's own generator byte for byte, which libkrun depends on.
 */
export function bundleElfKernel(data: Uint8Array, name: string): KernelBundle {
  const image = readElf(data, name);
  const loadAddress = image.loadSegments[0].vaddr & LOAD_ADDRESS_MASK;
  checkLoadAddress(loadAddress, name);

  const placements = placeSegments(image, loadAddress, name);
  const last = placements[placements.length - 1];
  const contentSize = last.bundleOffset + last.segment.filesz;
  if (contentSize === 0) {
    throw new KrunfwError(`${name} has no bytes to bundle: every PT_LOAD segment has p_filesz 0.`, {
      hint: 'Pass the vmlinux from the top of the kernel build tree.',
    });
  }

  // Buffer.alloc returns zeroed memory, which provides the gaps and the padding.
  const bytes = Buffer.alloc(alignUp(contentSize));
  for (const { segment, bundleOffset } of placements) {
    bytes.set(data.subarray(segment.offset, segment.offset + segment.filesz), bundleOffset);
  }

  const first = image.loadSegments[0];
  return {
    bytes,
    loadAddress,
    entryAddress: image.entry,
    kind: 'elf',
    firstSegment: { fileOffset: first.offset, size: first.filesz },
  };
}

/** Options of bundleRaw. */
export interface RawBundleOptions {
  /** Guest physical address where libkrun places the first byte (0x80000000 for an aarch64 Image). */
  loadAddress: bigint;
  /** Guest physical address where the vCPU starts (0x80000000 for an aarch64 Image). */
  entryAddress: bigint;
  /** The file's name for error messages. */
  name?: string;
}

/**
 * Lays out a raw file (an aarch64 Image, qboot firmware or an initrd) as a bundle: its bytes
 * followed by zero padding to a multiple of 64 KiB.
 */
export function bundleRaw(data: Uint8Array, options: RawBundleOptions): KernelBundle {
  const name = options.name ?? 'the raw kernel';
  if (data.byteLength === 0) {
    throw new KrunfwError(`${name} is empty, so there is nothing to bundle.`, {
      hint: 'Check that the kernel build finished and produced the file.',
    });
  }
  if (data.byteLength > MAX_BUNDLE_SIZE) {
    throw new KrunfwError(`${name} has ${data.byteLength} bytes, more than the ${MAX_BUNDLE_SIZE}-byte bundle limit.`, {
      hint: 'Pass the kernel image itself, not a disk image or archive.',
    });
  }
  checkAddressRange(options.loadAddress, 'load address', name);
  checkAddressRange(options.entryAddress, 'entry address', name);
  checkLoadAddress(options.loadAddress, name);

  const bytes = Buffer.alloc(alignUp(data.byteLength));
  bytes.set(data, 0);
  return {
    bytes,
    loadAddress: options.loadAddress,
    entryAddress: options.entryAddress,
    kind: 'raw',
    firstSegment: { fileOffset: 0, size: data.byteLength },
  };
}

interface Placement {
  segment: ElfLoadSegment;
  bundleOffset: number;
}

/**
 * Computes each PT_LOAD segment's offset in the bundle without allocating anything, so a
 * corrupt p_paddr is rejected before it can demand gigabytes of zeros.
 */
function placeSegments(image: ElfImage, loadAddress: bigint, name: string): Placement[] {
  const placements: Placement[] = [];
  let end = 0n;

  for (const segment of image.loadSegments) {
    const target = segment.paddr - loadAddress;
    const label = `program header ${segment.index} (PT_LOAD, p_paddr 0x${segment.paddr.toString(16)})`;

    // The bundle's first byte is what libkrun places at the load address, so the first
    // segment's p_paddr must be the load address itself.
    if (placements.length === 0 && target !== 0n) {
      throw new KrunfwError(
        `${name} has an invalid first PT_LOAD segment: the p_paddr 0x${segment.paddr.toString(16)} of program header ` +
          `${segment.index} differs from the load address 0x${loadAddress.toString(16)} ` +
          `(its p_vaddr 0x${segment.vaddr.toString(16)} masked with 0x0fffffff).`,
        { hint: 'Only an x86_64 vmlinux is bundled as ELF, and its first PT_LOAD p_paddr equals its masked p_vaddr.' },
      );
    }
    if (target < end) {
      throw new KrunfwError(
        `${name} has overlapping segments: ${label} would start at bundle offset ${target}, ` +
          `before the end of the previous PT_LOAD segment at offset ${end}.`,
        { hint: 'The PT_LOAD segments must be in ascending p_paddr order and must not overlap.' },
      );
    }
    const segmentEnd = target + BigInt(segment.filesz);
    if (segmentEnd > BigInt(MAX_BUNDLE_SIZE)) {
      throw new KrunfwError(
        `${name} would make a bundle of at least ${segmentEnd} bytes because of ${label}, ` +
          `more than the ${MAX_BUNDLE_SIZE}-byte bundle limit.`,
        { hint: 'The p_paddr values are far apart. Check that the file is a vmlinux for the guest.' },
      );
    }

    placements.push({ segment, bundleOffset: Number(target) });
    end = segmentEnd;
  }
  return placements;
}

function checkLoadAddress(loadAddress: bigint, name: string): void {
  if (loadAddress % GUEST_PAGE_SIZE !== 0n) {
    throw new KrunfwError(
      `${name} has an invalid load address 0x${loadAddress.toString(16)}: libkrun needs it aligned to 4 KiB.`,
      { hint: 'Check that the kernel was built for the guest architecture with its default physical start.' },
    );
  }
}

function checkAddressRange(address: bigint, field: string, name: string): void {
  if (address < 0n || address > MAX_ADDRESS) {
    throw new KrunfwError(`The ${field} ${address} for ${name} is outside the 64-bit address range.`, {
      hint: 'Pass an address from 0 to 0xffffffffffffffff.',
    });
  }
}

function alignUp(size: number): number {
  return Math.ceil(size / BUNDLE_ALIGNMENT) * BUNDLE_ALIGNMENT;
}
