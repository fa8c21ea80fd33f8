// SPDX-License-Identifier: LGPL-2.1-only
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { KrunfwError } from './errors.js';
import { temporaryPathBeside } from './files.js';

/**
 * One member of a reproducible tar archive. Owner, group and modification
 * time are not per entry: every entry gets uid and gid 0 and the archive's
 * one timestamp.
 */
export type TarEntry =
  | { kind: 'directory'; path: string }
  | { kind: 'file'; path: string; executable?: boolean; source: { file: string } | { data: Uint8Array } };

export interface TarOptions {
  /** Modification time of every entry, in seconds since the epoch. */
  mtime: number;
}

const BLOCK = 512;
/** Archives are padded to whole records of 20 blocks, as tar(1) writes them. */
const RECORD = 20 * BLOCK;
/** The largest size the 11 octal digits of a ustar size field hold (8 GiB - 1). */
const MAX_USTAR_SIZE = 8 ** 11 - 1;
const ZEROS = new Uint8Array(RECORD);

/** Byte offset of the gzip header's OS field (RFC 1952, section 2.3). */
const GZIP_OS_OFFSET = 9;
/** RFC 1952's code for Unix. */
const GZIP_OS_UNIX = 3;

/** Rejects a path the archive must not store: it must be relative, with `/` separators and no empty, `.` or `..` parts. */
function checkArchivePath(path: string): void {
  const parts = path.split('/');
  if (path === '' || path.startsWith('/') || parts.some((part) => part === '' || part === '.' || part === '..')) {
    throw new Error(`invalid archive path: ${JSON.stringify(path)}`);
  }
}

/** Adds the directories that lead to each entry and sorts by path, so the same files always give the same archive. */
export function normaliseEntries(entries: readonly TarEntry[]): TarEntry[] {
  const byPath = new Map<string, TarEntry>();
  for (const entry of entries) {
    checkArchivePath(entry.path);
    if (byPath.has(entry.path)) throw new Error(`duplicate archive path: ${entry.path}`);
    byPath.set(entry.path, entry);
  }
  for (const entry of entries) {
    const parts = entry.path.split('/');
    for (let depth = 1; depth < parts.length; depth++) {
      const directory = parts.slice(0, depth).join('/');
      const existing = byPath.get(directory);
      if (existing?.kind === 'file') throw new Error(`archive path ${directory} is both a file and a directory`);
      if (!existing) byPath.set(directory, { kind: 'directory', path: directory });
    }
  }
  // Sorting by the stored name (directories end in "/") puts every directory before its contents.
  const storedName = (entry: TarEntry) => (entry.kind === 'directory' ? `${entry.path}/` : entry.path);
  return [...byPath.values()].sort((a, b) => Buffer.compare(Buffer.from(storedName(a)), Buffer.from(storedName(b))));
}

function writeString(header: Buffer, offset: number, length: number, value: string): void {
  header.write(value, offset, length, 'utf8');
}

/** Writes a number as zero-padded octal digits followed by a NUL, filling the field. */
function writeOctal(header: Buffer, offset: number, length: number, value: number): void {
  header.write(`${value.toString(8).padStart(length - 1, '0')}\0`, offset, length, 'ascii');
}

/**
 * Splits a path into ustar's prefix (up to 155 bytes) and name (up to 100
 * bytes) at a `/`. Returns undefined when the path does not fit or is not
 * plain ASCII, and then a pax header carries it.
 */
function splitUstarPath(path: string): { prefix: string; name: string } | undefined {
  if (!/^[\x20-\x7e]*$/.test(path)) return undefined;
  if (path.length <= 100) return { prefix: '', name: path };
  for (let index = path.indexOf('/'); index !== -1; index = path.indexOf('/', index + 1)) {
    const prefix = path.slice(0, index);
    const name = path.slice(index + 1);
    if (prefix.length <= 155 && name.length > 0 && name.length <= 100) return { prefix, name };
  }
  return undefined;
}

function ustarHeader(fields: { name: string; prefix: string; mode: number; size: number; mtime: number; type: string }): Buffer {
  const header = Buffer.alloc(BLOCK);
  writeString(header, 0, 100, fields.name);
  writeOctal(header, 100, 8, fields.mode);
  writeOctal(header, 108, 8, 0);
  writeOctal(header, 116, 8, 0);
  writeOctal(header, 124, 12, fields.size);
  writeOctal(header, 136, 12, fields.mtime);
  writeString(header, 156, 1, fields.type);
  writeString(header, 257, 6, 'ustar\0');
  writeString(header, 263, 2, '00');
  writeString(header, 345, 155, fields.prefix);
  // The checksum is computed with its own field read as eight spaces.
  header.fill(0x20, 148, 156);
  let checksum = 0;
  for (const byte of header) checksum += byte;
  header.write(`${checksum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'ascii');
  return header;
}

/** Returns a pax extended-header record, `<length> path=<value>\n`, whose length counts itself. */
function paxRecord(key: string, value: string): Buffer {
  const body = ` ${key}=${value}\n`;
  const bodyLength = Buffer.byteLength(body);
  let length = bodyLength + 1;
  while (String(length).length + bodyLength !== length) length = String(length).length + bodyLength;
  return Buffer.from(`${length}${body}`);
}

function padding(size: number): Uint8Array {
  const remainder = size % BLOCK;
  return remainder === 0 ? ZEROS.subarray(0, 0) : ZEROS.subarray(0, BLOCK - remainder);
}

/** Returns the headers of one entry: a pax header first when the path needs one, then the ustar header. */
function entryHeaders(entry: TarEntry, size: number, mtime: number): Buffer[] {
  const storedPath = entry.kind === 'directory' ? `${entry.path}/` : entry.path;
  const mode = entry.kind === 'directory' || entry.executable ? 0o755 : 0o644;
  const type = entry.kind === 'directory' ? '5' : '0';
  const split = splitUstarPath(storedPath);
  if (split) return [ustarHeader({ ...split, mode, size, mtime, type })];

  const record = paxRecord('path', storedPath);
  // Readers take the path from the pax record, so the pax header's own name only needs to be short, ASCII and fixed.
  const paxName = `PaxHeaders/${Buffer.from(storedPath).subarray(-80).toString('latin1').replace(/[^\x20-\x7e]/g, '_')}`;
  const fallbackName = storedPath.replace(/[^\x20-\x7e]/g, '_').slice(-100);
  return [
    ustarHeader({ name: paxName.slice(0, 100), prefix: '', mode: 0o644, size: record.length, mtime, type: 'x' }),
    Buffer.concat([record, padding(record.length)]),
    ustarHeader({ name: fallbackName, prefix: '', mode, size, mtime, type }),
  ];
}

async function* fileContents(file: string, expectedSize: number, archivePath: string): AsyncGenerator<Uint8Array> {
  let total = 0;
  for await (const chunk of createReadStream(file)) {
    total += (chunk as Buffer).length;
    if (total > expectedSize) break;
    yield chunk as Buffer;
  }
  if (total !== expectedSize) {
    throw new KrunfwError(`${file} changed size while it was being archived as ${archivePath}`, {
      hint: 'Wait until nothing writes to the build output, then run the command again.',
    });
  }
}

/** Produces the tar stream of already normalised entries, reading files as it goes. */
async function* tarStream(entries: readonly TarEntry[], options: TarOptions): AsyncGenerator<Uint8Array> {
  let written = 0;
  for (const entry of entries) {
    let size = 0;
    if (entry.kind === 'file') {
      size = 'data' in entry.source ? entry.source.data.length : (await stat(entry.source.file)).size;
    }
    if (size > MAX_USTAR_SIZE) throw new KrunfwError(`${entry.path} is too large for a tar archive (${size} bytes; the limit is 8 GiB)`);
    for (const header of entryHeaders(entry, size, options.mtime)) {
      written += header.length;
      yield header;
    }
    if (entry.kind === 'file') {
      if ('data' in entry.source) yield entry.source.data;
      else yield* fileContents(entry.source.file, size, entry.path);
      const tail = padding(size);
      written += size + tail.length;
      if (tail.length > 0) yield tail;
    }
  }
  // The archive ends with two zero blocks, padded to a whole record.
  const end = 2 * BLOCK + ((RECORD - ((written + 2 * BLOCK) % RECORD)) % RECORD);
  yield ZEROS.subarray(0, Math.min(end, RECORD));
  if (end > RECORD) yield ZEROS.subarray(0, end - RECORD);
}

/**
 * Writes a gzip-compressed ustar archive whose bytes depend only on the
 * entries. Paths are sorted and parent directories added. Every entry has
 * uid and gid 0, no owner names, mode 0644 or 0755 and the one timestamp.
 * The gzip header has no file name, time 0 and a fixed OS byte. The archive
 * is written under a temporary name and renamed into place.
 *
 * NOTE: the compressed bytes come from the zlib that Node.js bundles, so
 * another Node.js release may compress differently; the tar stream inside
 * does not change.
 */
export async function writeTarGz(outputPath: string, entries: readonly TarEntry[], options: TarOptions): Promise<void> {
  const normalised = normaliseEntries(entries);
  const temporary = temporaryPathBeside(outputPath);
  try {
    await pipeline(Readable.from(tarStream(normalised, options)), createGzip({ level: 9 }), createWriteStream(temporary));
    // zlib writes the OS it was compiled for (3 on Linux, 19 on macOS), and the archive must not depend on the host.
    const handle = await open(temporary, 'r+');
    try {
      await handle.write(Buffer.from([GZIP_OS_UNIX]), 0, 1, GZIP_OS_OFFSET);
    } finally {
      await handle.close();
    }
    await rename(temporary, outputPath);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}
