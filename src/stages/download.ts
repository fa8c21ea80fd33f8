// SPDX-License-Identifier: LGPL-2.1-only
import { createHash, randomBytes } from 'node:crypto';
import { type FileHandle, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { setTimeout as sleep } from 'node:timers/promises';

import { KrunfwError } from '../errors.js';
import { sha256File } from '../hash.js';

export const DEFAULT_KERNEL_BASE_URL = 'https://cdn.kernel.org/pub/linux/kernel';

const DEFAULT_RETRIES = 3;
const DEFAULT_RETRY_DELAY_MS = 1000;
const DEFAULT_IDLE_TIMEOUT_MS = 30_000;

// A generous limit for a checksum list, so that a misconfigured mirror that
// serves something else cannot fill memory.
const MAX_SHA256_SUMS_BYTES = 16 * 1024 * 1024;

export interface KernelSourceRequest {
  /** Kernel release, such as `6.12.7` (or `6.12` for the first release of a series). */
  version: string;
  /** Root of the kernel.org release tree or a mirror of it, such as `DEFAULT_KERNEL_BASE_URL`. */
  baseUrl: string;
  /** Per-user cache directory for tarballs, created if missing. */
  cacheDirectory: string;
  /** SHA-256 of the tarball (from `--kernel-sha256`), used instead of the release's `sha256sums.asc`. */
  expectedSha256?: string;
  /**
   * Called as tarball bytes arrive, counting from 0 again on each retry.
   * `totalBytes` is undefined when the server sends no Content-Length.
   */
  onProgress?: (receivedBytes: number, totalBytes: number | undefined) => void;
  /** Number of times a transient failure is retried for each request (default 3). */
  retries?: number;
  /** Delay before the first retry in milliseconds, doubled for each later retry (default 1000). */
  retryDelayMs?: number;
  /** Milliseconds without any received byte after which a request counts as timed out (default 30000). */
  idleTimeoutMs?: number;
  /** Called before each retry with its number (1 for the first retry) and the failure that caused it. */
  onRetry?: (attempt: number, error: KrunfwError) => void;
  /** Aborts the download. The temporary file is deleted and the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

export interface KernelSource {
  /** Verified tarball in the cache directory. */
  path: string;
  /** SHA-256 of the tarball as lowercase hex. */
  sha256: string;
  /** Tarball URL as requested, before any redirect. */
  url: string;
  /** True when the cached tarball was used and the tarball itself was not downloaded. */
  fromCache: boolean;
}

/** Record written next to a verified tarball, so that a later run can reuse it without hashing it. */
interface VerificationRecord {
  sha256: string;
  size: number;
  mtimeMs: number;
}

/** Settings shared by every request of one `fetchKernelTarball` call. */
interface TransferSettings {
  retries: number;
  retryDelayMs: number;
  idleTimeoutMs: number;
  onRetry?: (attempt: number, error: KrunfwError) => void;
  signal?: AbortSignal;
}

/**
 * A failure that may go away when the request is repeated, such as a refused
 * or reset connection, a body cut short, a timeout or a 5xx status. Only
 * these failures are retried.
 */
class TransientDownloadError extends KrunfwError {}

/** Returns the tarball URL, such as `<baseUrl>/v6.x/linux-6.12.7.tar.xz`. */
export function kernelTarballUrl(baseUrl: string, version: string): string {
  return `${releaseDirectoryUrl(baseUrl, version)}/${tarballFileName(version)}`;
}

/** Returns the URL of the release directory's checksum list, such as `<baseUrl>/v6.x/sha256sums.asc`. */
export function kernelSha256SumsUrl(baseUrl: string, version: string): string {
  return `${releaseDirectoryUrl(baseUrl, version)}/sha256sums.asc`;
}

/**
 * Parses a PGP clear-signed list of `sha256  filename` lines into a map from
 * file name to lowercase hash. Only lines between the armor headers and
 * `-----BEGIN PGP SIGNATURE-----` count, and lines that are not a 64-digit
 * hash followed by a file name are skipped. Text without a clear-signed
 * message yields an empty map. The first entry wins when a name repeats.
 */
export function parseSha256Sums(text: string): Map<string, string> {
  const sums = new Map<string, string>();
  const lines = text.split(/\r?\n/);

  const start = lines.findIndex((line) => line.trimEnd() === '-----BEGIN PGP SIGNED MESSAGE-----');
  if (start === -1) {
    return sums;
  }
  // Armor headers such as `Hash: SHA256` end at the first empty line (RFC 4880, section 7).
  const headerEnd = lines.findIndex((line, index) => index > start && line.trim() === '');
  if (headerEnd === -1) {
    return sums;
  }

  for (const rawLine of lines.slice(headerEnd + 1)) {
    if (rawLine.trimEnd() === '-----BEGIN PGP SIGNATURE-----') {
      break;
    }
    // The signer escapes body lines that start with a dash by prefixing `- ` (RFC 4880, section 7.1).
    const line = rawLine.startsWith('- ') ? rawLine.slice(2) : rawLine;
    // sha256sum writes two spaces, or ` *` for files hashed in binary mode.
    const match = /^([0-9a-fA-F]{64}) [ *](\S+)\s*$/.exec(line);
    if (match !== null && !sums.has(match[2])) {
      sums.set(match[2], match[1].toLowerCase());
    }
  }
  return sums;
}

/**
 * Downloads `linux-<version>.tar.xz` into the cache directory and verifies its
 * SHA-256, or reuses the cached tarball when a previous run verified it.
 *
 * The expected hash is `expectedSha256` when given, otherwise the release's
 * `sha256sums.asc`. The tarball is written to a temporary file in the cache
 * directory and renamed to its final name only after its hash matches.
 * Transient failures are retried. Other failures throw `KrunfwError`, and an
 * abort rejects with the signal's reason.
 */
export async function fetchKernelTarball(request: KernelSourceRequest): Promise<KernelSource> {
  const url = kernelTarballUrl(request.baseUrl, request.version);
  const requestedSha256 = request.expectedSha256 === undefined ? undefined : normalizeSha256(request.expectedSha256);
  const settings = transferSettings(request);
  request.signal?.throwIfAborted();

  await createCacheDirectory(request.cacheDirectory);
  const fileName = tarballFileName(request.version);
  const path = join(request.cacheDirectory, fileName);
  const recordPath = `${path}.verified.json`;

  // A record whose size and mtime still match the file vouches for the file's
  // hash, which saves hashing a tarball of over 100 MiB, and any request, on every run.
  const cachedStats = await statIfExists(path);
  const record = cachedStats === undefined ? undefined : await readVerificationRecord(recordPath);
  const recordMatchesFile =
    cachedStats !== undefined &&
    record !== undefined &&
    record.size === cachedStats.size &&
    record.mtimeMs === cachedStats.mtimeMs;
  if (recordMatchesFile && (requestedSha256 === undefined || requestedSha256 === record.sha256)) {
    return { path, sha256: record.sha256, url, fromCache: true };
  }

  const expectedSha256 =
    requestedSha256 ?? (await fetchPublishedSha256(request.baseUrl, request.version, fileName, settings));

  if (cachedStats !== undefined) {
    request.signal?.throwIfAborted();
    const cachedSha256 = await sha256File(path);
    if (cachedSha256 === expectedSha256) {
      await writeVerificationRecord(path, recordPath, cachedSha256);
      return { path, sha256: cachedSha256, url, fromCache: true };
    }
    // A file without a matching record is unverified and must not stay under
    // the final name. A verified file for another hash stays until the new
    // download replaces it, so that a mistyped --kernel-sha256 costs no cache.
    if (!recordMatchesFile) {
      await rm(recordPath, { force: true });
      await rm(path, { force: true });
    }
  }

  await downloadVerifiedTarball(url, path, recordPath, expectedSha256, settings, request.onProgress);
  return { path, sha256: expectedSha256, url, fromCache: false };
}

async function createCacheDirectory(path: string): Promise<void> {
  try {
    await mkdir(path, { recursive: true });
  } catch (error) {
    throw new KrunfwError(`Cannot create the cache directory ${path}: ${(error as Error).message}.`, {
      hint: 'Check that its parent directories are writable directories, or choose another cache directory.',
      cause: error,
    });
  }
}

function transferSettings(request: KernelSourceRequest): TransferSettings {
  const retries = request.retries ?? DEFAULT_RETRIES;
  const retryDelayMs = request.retryDelayMs ?? DEFAULT_RETRY_DELAY_MS;
  const idleTimeoutMs = request.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  if (!Number.isInteger(retries) || retries < 0) {
    throw new KrunfwError(`Invalid retry count ${retries}: expected a whole number of 0 or more.`);
  }
  if (!Number.isFinite(retryDelayMs) || retryDelayMs < 0) {
    throw new KrunfwError(`Invalid retry delay ${retryDelayMs} ms: expected 0 or more milliseconds.`);
  }
  if (!Number.isFinite(idleTimeoutMs) || idleTimeoutMs <= 0) {
    throw new KrunfwError(`Invalid idle timeout ${idleTimeoutMs} ms: expected more than 0 milliseconds.`);
  }
  return { retries, retryDelayMs, idleTimeoutMs, onRetry: request.onRetry, signal: request.signal };
}

function releaseDirectoryUrl(baseUrl: string, version: string): string {
  let parsed: URL;
  try {
    parsed = new URL(baseUrl);
  } catch {
    throw new KrunfwError(`Invalid kernel mirror URL '${baseUrl}'.`, {
      hint: `Use an http or https URL such as ${DEFAULT_KERNEL_BASE_URL}.`,
    });
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') {
    throw new KrunfwError(`Unsupported kernel mirror URL '${baseUrl}': only http and https are supported.`, {
      hint: `Use an http or https URL such as ${DEFAULT_KERNEL_BASE_URL}.`,
    });
  }
  // kernel.org groups releases by major version: v6.x holds every 6.* release.
  const major = parseKernelVersion(version);
  return `${baseUrl.replace(/\/+$/, '')}/v${major}.x`;
}

/** Validates a release number and returns its major version. */
function parseKernelVersion(version: string): number {
  // The version also becomes a file name in the cache, so nothing but digits and dots may pass.
  const match = /^(\d+)\.\d+(\.\d+)?$/.exec(version);
  if (match === null) {
    throw new KrunfwError(`Invalid kernel version '${version}': expected a release number such as 6.12.7.`, {
      hint: 'Release candidates are not published as tarballs; use a stable release from kernel.org.',
    });
  }
  return Number(match[1]);
}

function tarballFileName(version: string): string {
  parseKernelVersion(version);
  return `linux-${version}.tar.xz`;
}

function normalizeSha256(value: string): string {
  const trimmed = value.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(trimmed)) {
    throw new KrunfwError(`Invalid SHA-256 '${value}': expected 64 hexadecimal digits.`, {
      hint: 'Pass the hash that sha256sum prints for the tarball, for example with --kernel-sha256.',
    });
  }
  return trimmed.toLowerCase();
}

/** Returns the tarball's hash as listed in the release directory's `sha256sums.asc`. */
async function fetchPublishedSha256(
  baseUrl: string,
  version: string,
  fileName: string,
  settings: TransferSettings,
): Promise<string> {
  const sumsUrl = kernelSha256SumsUrl(baseUrl, version);
  const text = await withRetries(sumsUrl, settings, () => downloadText(sumsUrl, settings));

  // NOTE: the PGP signature of sha256sums.asc is not verified, because no
  // kernel.org keyring is available here. The hash therefore catches corrupt
  // and truncated downloads, but a mirror that rewrites both files goes unnoticed.
  const sums = parseSha256Sums(text);
  if (sums.size === 0) {
    throw new KrunfwError(`${sumsUrl} contains no PGP clear-signed list of SHA-256 checksums.`, {
      hint: `Check the mirror URL, or pass the tarball's SHA-256 with --kernel-sha256.`,
    });
  }
  const sha256 = sums.get(fileName);
  if (sha256 === undefined) {
    throw new KrunfwError(`${fileName} is not listed in ${sumsUrl}.`, {
      hint: `Check the kernel version, or pass the tarball's SHA-256 with --kernel-sha256.`,
    });
  }
  return sha256;
}

/**
 * Downloads the tarball to a temporary file next to `path`, checks its hash
 * and renames it to `path`. No file is left behind on failure or abort.
 */
async function downloadVerifiedTarball(
  url: string,
  path: string,
  recordPath: string,
  expectedSha256: string,
  settings: TransferSettings,
  onProgress: KernelSourceRequest['onProgress'],
): Promise<void> {
  // The same directory keeps the final rename atomic, and the leading dot and
  // random part keep concurrent runs and directory listings apart.
  const temporaryPath = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.part`);

  try {
    const actualSha256 = await withRetries(url, settings, () =>
      downloadFile(url, temporaryPath, settings, onProgress),
    );
    if (actualSha256 !== expectedSha256) {
      throw new KrunfwError(
        `SHA-256 mismatch for ${url}: expected ${expectedSha256}, got ${actualSha256}.`,
        { hint: 'Try again later or use another mirror. If the expected hash came from --kernel-sha256, check it.' },
      );
    }

    // The old record must not outlive the file it describes.
    await rm(recordPath, { force: true });
    await rename(temporaryPath, path);
  } finally {
    await rm(temporaryPath, { force: true });
  }
  await writeVerificationRecord(path, recordPath, expectedSha256);
}

/**
 * Runs `attempt` until it succeeds, throws a failure that is not transient,
 * or has been retried `settings.retries` times.
 */
async function withRetries<T>(url: string, settings: TransferSettings, attempt: () => Promise<T>): Promise<T> {
  for (let retry = 0; ; retry += 1) {
    try {
      return await attempt();
    } catch (error) {
      if (!(error instanceof TransientDownloadError)) {
        throw error;
      }
      if (retry >= settings.retries) {
        const retried = settings.retries === 1 ? '1 retry' : `${settings.retries} retries`;
        const message = settings.retries === 0 ? error.message : `${error.message} Gave up after ${retried}.`;
        throw new KrunfwError(message, { hint: error.hint, cause: error });
      }
      settings.onRetry?.(retry + 1, error);
      await sleepUnlessAborted(settings.retryDelayMs * 2 ** retry, settings.signal);
    }
  }
}

async function sleepUnlessAborted(milliseconds: number, signal: AbortSignal | undefined): Promise<void> {
  try {
    await sleep(milliseconds, undefined, { signal });
  } catch (error) {
    // Node rejects with its own AbortError, but callers expect the signal's reason.
    signal?.throwIfAborted();
    throw error;
  }
}

/** Downloads `url` into `path`, truncating the file first, and returns the body's SHA-256. */
async function downloadFile(
  url: string,
  path: string,
  settings: TransferSettings,
  onProgress: KernelSourceRequest['onProgress'],
): Promise<string> {
  const hash = createHash('sha256');
  let file: FileHandle | undefined;
  try {
    await receiveBody(
      url,
      settings,
      async () => {
        file = await open(path, 'w');
        return file.createWriteStream();
      },
      (chunk, receivedBytes, totalBytes) => {
        hash.update(chunk);
        onProgress?.(receivedBytes, totalBytes);
      },
    );
  } finally {
    // After a failure the stream may still be closing the handle. Waiting for
    // that means no write reaches the file after the caller deletes it.
    await file?.close();
  }
  return hash.digest('hex');
}

/** Downloads `url` as UTF-8 text of at most `MAX_SHA256_SUMS_BYTES`. */
async function downloadText(url: string, settings: TransferSettings): Promise<string> {
  const chunks: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk);
      callback();
    },
  });
  await receiveBody(
    url,
    settings,
    async () => sink,
    (_chunk, receivedBytes) => {
      if (receivedBytes > MAX_SHA256_SUMS_BYTES) {
        throw new KrunfwError(`${url} is larger than ${MAX_SHA256_SUMS_BYTES} bytes, too large for a checksum list.`, {
          hint: 'Check the mirror URL, or pass the tarball\'s SHA-256 with --kernel-sha256.',
        });
      }
    },
  );
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Sends one GET request for `url`, following redirects, and streams the body
 * into the writable that `openDestination` returns once the status is a
 * success. `onChunk` receives every chunk before it is written. Failures are
 * mapped by `describeFailure`.
 */
async function receiveBody(
  url: string,
  settings: TransferSettings,
  openDestination: () => Promise<Writable>,
  onChunk: (chunk: Buffer, receivedBytes: number, totalBytes: number | undefined) => void,
): Promise<void> {
  const idleTimer = new IdleTimer(settings.idleTimeoutMs);
  const signals = settings.signal === undefined ? [idleTimer.signal] : [idleTimer.signal, settings.signal];

  try {
    // Node's fetch follows up to 20 redirects. `identity` requests the bytes as
    // stored, so that Content-Length counts the bytes that are hashed.
    // NOTE: Node 20's fetch ignores HTTP_PROXY and HTTPS_PROXY, so a network
    // that allows web access only through a proxy cannot download from here.
    const response = await fetch(url, {
      headers: { 'accept-encoding': 'identity' },
      signal: AbortSignal.any(signals),
    });
    if (!response.ok) {
      await response.body?.cancel().catch(() => undefined);
      throw httpStatusError(url, response);
    }

    const totalBytes = expectedBodyLength(response);
    let receivedBytes = 0;
    const destination = await openDestination();

    // Readable.fromWeb is called only inside pipeline, because the Node stream
    // emits the body's errors and an error without a listener crashes the process.
    idleTimer.restart();
    await pipeline(
      response.body === null ? Readable.from([]) : Readable.fromWeb(response.body as WebReadableStream),
      async function* countChunks(chunks: AsyncIterable<Buffer>) {
        for await (const chunk of chunks) {
          idleTimer.restart();
          receivedBytes += chunk.length;
          onChunk(chunk, receivedBytes, totalBytes);
          yield chunk;
        }
      },
      destination,
    );

    if (totalBytes !== undefined && receivedBytes !== totalBytes) {
      throw new TransientDownloadError(
        `Downloading ${url} failed: received ${receivedBytes} of ${totalBytes} bytes.`,
        { hint: 'Check the network connection and try again.' },
      );
    }
  } catch (error) {
    throw describeFailure(error, url, idleTimer, settings);
  } finally {
    idleTimer.stop();
  }
}

/** Returns Content-Length when it counts the body's bytes as delivered, or undefined. */
function expectedBodyLength(response: Response): number | undefined {
  const encoding = response.headers.get('content-encoding');
  // fetch decodes compressed bodies, and then Content-Length counts the encoded bytes.
  if (encoding !== null && encoding.trim().toLowerCase() !== 'identity') {
    return undefined;
  }
  const header = response.headers.get('content-length');
  if (header === null || !/^\d+$/.test(header.trim())) {
    return undefined;
  }
  return Number(header);
}

function httpStatusError(url: string, response: Response): KrunfwError {
  const status = `HTTP ${response.status}${response.statusText === '' ? '' : ` ${response.statusText}`}`;
  const message = `Downloading ${url} failed with ${status}.`;
  if (response.status >= 500) {
    return new TransientDownloadError(message, { hint: 'The server reported an error. Try again later or use another mirror.' });
  }
  if (response.status === 404) {
    return new KrunfwError(message, { hint: 'Check the kernel version and the mirror URL.' });
  }
  return new KrunfwError(message, { hint: 'Check the mirror URL and any proxy in between.' });
}

// Error codes of Node's sockets and of undici, the HTTP client behind Node's fetch,
// that describe a connection which failed or broke and may work when tried again.
const TRANSIENT_ERROR_CODES = new Map<string, string>([
  ['ECONNREFUSED', 'connection refused'],
  ['ECONNRESET', 'connection reset'],
  ['EPIPE', 'connection closed'],
  ['ETIMEDOUT', 'connection timed out'],
  ['EAI_AGAIN', 'temporary DNS failure'],
  ['ENETUNREACH', 'network unreachable'],
  ['EHOSTUNREACH', 'host unreachable'],
  ['ENETDOWN', 'network down'],
  ['UND_ERR_SOCKET', 'connection closed by the server'],
  ['UND_ERR_CLOSED', 'connection closed'],
  ['UND_ERR_CONNECT_TIMEOUT', 'connection timed out'],
  ['UND_ERR_HEADERS_TIMEOUT', 'timed out waiting for the response headers'],
  ['UND_ERR_BODY_TIMEOUT', 'timed out waiting for the response body'],
]);

/**
 * Maps a failure of one request to what `withRetries` expects: the abort
 * signal's reason on abort, a `TransientDownloadError` for failures worth a
 * retry, and a `KrunfwError` naming the URL for everything else.
 */
function describeFailure(error: unknown, url: string, idleTimer: IdleTimer, settings: TransferSettings): unknown {
  if (settings.signal?.aborted === true) {
    return settings.signal.reason;
  }
  if (error instanceof KrunfwError) {
    return error;
  }
  if (idleTimer.signal.aborted) {
    return new TransientDownloadError(
      `Downloading ${url} timed out: no data for ${settings.idleTimeoutMs} ms.`,
      { hint: 'Check the network connection, or use another mirror.', cause: error },
    );
  }

  const code = errorCode(error);
  const reason = code === undefined ? undefined : TRANSIENT_ERROR_CODES.get(code);
  if (reason !== undefined) {
    return new TransientDownloadError(`Downloading ${url} failed: ${reason} (${code}).`, {
      hint: 'Check the network connection and try again.',
      cause: error,
    });
  }

  // File system errors carry the path, such as ENOSPC while writing the download.
  const path = (error as NodeJS.ErrnoException).path;
  if (path !== undefined) {
    return new KrunfwError(`Writing the download of ${url} to ${path} failed: ${innermostMessage(error)}.`, {
      hint: 'Check the free space and permissions of the cache directory.',
      cause: error,
    });
  }

  // fetch reports every network failure as a TypeError, such as a DNS lookup
  // that found no host or a TLS certificate that did not verify.
  if (error instanceof TypeError || code !== undefined) {
    const detail = innermostMessage(error);
    return new KrunfwError(`Downloading ${url} failed: ${detail}${code === undefined ? '' : ` (${code})`}.`, {
      hint: 'Check the network connection and the mirror URL.',
      cause: error,
    });
  }
  // Anything else, such as an exception from onProgress, is a bug and keeps its stack.
  return error;
}

/** Returns the first `code` in the error's cause chain, where fetch puts the socket's error. */
function errorCode(error: unknown): string | undefined {
  for (let current = error, depth = 0; current instanceof Error && depth < 8; depth += 1) {
    const code = (current as NodeJS.ErrnoException).code;
    if (typeof code === 'string') {
      return code;
    }
    current = current.cause;
  }
  return undefined;
}

/** Returns the message of the deepest cause, because fetch's own message is only "fetch failed". */
function innermostMessage(error: unknown): string {
  let message = String(error);
  for (let current = error, depth = 0; current instanceof Error && depth < 8; depth += 1) {
    message = current.message;
    current = current.cause;
  }
  return message;
}

/** An abort signal that fires when `restart` has not been called for `timeoutMs`. */
class IdleTimer {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly timeoutMs: number) {
    this.restart();
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  restart(): void {
    this.stop();
    this.timer = setTimeout(() => this.controller.abort(), this.timeoutMs);
  }

  stop(): void {
    clearTimeout(this.timer);
  }
}

async function statIfExists(path: string): Promise<{ size: number; mtimeMs: number } | undefined> {
  try {
    return await stat(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      return undefined;
    }
    throw error;
  }
}

/** Returns the verification record, or undefined when it is missing or malformed. */
async function readVerificationRecord(recordPath: string): Promise<VerificationRecord | undefined> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(recordPath, 'utf8'));
  } catch {
    return undefined;
  }
  const record = parsed as Partial<VerificationRecord> | null;
  if (
    typeof record?.sha256 !== 'string' ||
    !/^[0-9a-f]{64}$/.test(record.sha256) ||
    typeof record.size !== 'number' ||
    typeof record.mtimeMs !== 'number'
  ) {
    return undefined;
  }
  return { sha256: record.sha256, size: record.size, mtimeMs: record.mtimeMs };
}

/** Records that the file at `path` has hash `sha256`, as of its current size and mtime. */
async function writeVerificationRecord(path: string, recordPath: string, sha256: string): Promise<void> {
  const { size, mtimeMs } = await stat(path);
  const record: VerificationRecord = { sha256, size, mtimeMs };
  // Written under a temporary name and renamed, so that a reader never sees half a record.
  const temporaryPath = `${recordPath}.${randomBytes(6).toString('hex')}.part`;
  try {
    await writeFile(temporaryPath, `${JSON.stringify(record)}\n`);
    await rename(temporaryPath, recordPath);
  } finally {
    await rm(temporaryPath, { force: true });
  }
}
