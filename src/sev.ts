// SPDX-License-Identifier: LGPL-2.1-only
import { open, readFile, stat } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import { KrunfwError } from './errors.js';

/** libkrun rejects qboot firmware of any other size ("qboot binary is not 64K long"). */
export const QBOOT_SIZE = 65536;

const GZIP_MAGIC = [0x1f, 0x8b];
/** cpio's "new ASCII" formats, the ones the kernel unpacks: without and with checksums. */
const CPIO_MAGICS = ['070701', '070702'];

/** Checks the qboot image's size; fails before any build work when libkrun would reject it at VM start. */
export async function checkQboot(path: string): Promise<void> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (error) {
    throw new KrunfwError(`qboot firmware not found: ${path}`, { cause: error });
  }
  if (size !== QBOOT_SIZE) {
    throw new KrunfwError(`The qboot firmware ${path} has ${size} bytes; libkrun accepts only exactly ${QBOOT_SIZE} (64 KiB)`, {
      hint: 'Pass the bios.bin of a qboot build, which is exactly 64 KiB.',
    });
  }
}

/** Checks that the initrd is a gzip-compressed cpio archive in the format the kernel unpacks. */
export async function checkInitrd(path: string): Promise<void> {
  let head: Buffer;
  try {
    const handle = await open(path, 'r');
    try {
      head = (await handle.read(Buffer.alloc(2), 0, 2, 0)).buffer;
    } finally {
      await handle.close();
    }
  } catch (error) {
    throw new KrunfwError(`initrd not found: ${path}`, { cause: error });
  }
  if (head[0] !== GZIP_MAGIC[0] || head[1] !== GZIP_MAGIC[1]) {
    throw new KrunfwError(`The initrd ${path} is not gzip-compressed (it does not start with the gzip magic 1f 8b)`, {
      hint: 'Pack it as: find . | cpio -o -H newc | gzip > initrd.gz',
    });
  }
  let magic: string;
  try {
    // The first entry's header is at the very start; decompressing the whole file is cheap next to a kernel build.
    magic = gunzipSync(await readFile(path)).subarray(0, 6).toString('latin1');
  } catch (error) {
    throw new KrunfwError(`The initrd ${path} is not a valid gzip file: ${(error as Error).message}`, { cause: error });
  }
  if (!CPIO_MAGICS.includes(magic)) {
    throw new KrunfwError(`The initrd ${path} does not contain a cpio archive in the newc format (magic 070701)`, {
      hint: 'Pack it as: find . | cpio -o -H newc | gzip > initrd.gz',
    });
  }
}
