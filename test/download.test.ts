// SPDX-License-Identifier: LGPL-2.1-only
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';

import { KrunfwError } from '../src/errors.js';
import { sha256 } from '../src/hash.js';
import {
  fetchKernelTarball,
  kernelSha256SumsUrl,
  kernelTarballUrl,
  type KernelSourceRequest,
  parseSha256Sums,
} from '../src/stages/download.js';
import {
  dropMidBody,
  redirectTo,
  sendBytes,
  sendStatus,
  stallAfter,
  startHttpServer,
  type TestHttpServer,
} from './support/http-server.js';

const VERSION = '6.12.7';
const TARBALL_PATH = '/pub/v6.x/linux-6.12.7.tar.xz';
const SUMS_PATH = '/pub/v6.x/sha256sums.asc';

/** Wraps lines in the layout of a PGP clear-signed message. The signature block is filler. */
function clearSigned(lines: string[]): string {
  return [
    '-----BEGIN PGP SIGNED MESSAGE-----',
    'Hash: SHA256',
    '',
    ...lines,
    '-----BEGIN PGP SIGNATURE-----',
    '',
    'iQIzBAEBCAAdFiEEZmFrZSBzaWduYXR1cmUgZm9yIHRlc3Rz',
    '=AbCd',
    '-----END PGP SIGNATURE-----',
    '',
  ].join('\n');
}

describe('parseSha256Sums', () => {
  const hashA = 'a'.repeat(64);
  const hashB = 'B'.repeat(64);

  test('reads lines of the signed body', () => {
    const sums = parseSha256Sums(clearSigned([`${hashA}  linux-6.12.7.tar.xz`, `${hashB}  linux-6.12.7.tar.gz`]));

    assert.equal(sums.size, 2);
    assert.equal(sums.get('linux-6.12.7.tar.xz'), hashA);
    assert.equal(sums.get('linux-6.12.7.tar.gz'), 'b'.repeat(64));
  });

  test('skips malformed lines', () => {
    const sums = parseSha256Sums(
      clearSigned([
        `${hashA.slice(1)}  short-hash.tar.xz`,
        `${'g'.repeat(64)}  not-hex.tar.xz`,
        `${hashA} one-space.tar.xz`,
        `${hashA}  two names.tar.xz`,
        'some text',
        `${hashA}  good.tar.xz`,
      ]),
    );

    assert.deepEqual([...sums.keys()], ['good.tar.xz']);
  });

  test('ignores lines outside the signed body', () => {
    const text = [
      `${hashA}  before-header.tar.xz`,
      clearSigned([`${hashA}  inside.tar.xz`]),
      `${hashA}  after-signature.tar.xz`,
    ].join('\n');
    const withArmorLine = text.replace('=AbCd', `${hashA}  in-signature.tar.xz`);

    assert.deepEqual([...parseSha256Sums(withArmorLine).keys()], ['inside.tar.xz']);
  });

  test('accepts binary marker, CRLF and dash escapes', () => {
    const text = clearSigned([`${hashA} *binary.tar.xz`, `- ${hashA}  escaped.tar.xz`]).replaceAll('\n', '\r\n');

    assert.deepEqual([...parseSha256Sums(text).keys()], ['binary.tar.xz', 'escaped.tar.xz']);
  });

  test('returns nothing for unsigned text', () => {
    assert.equal(parseSha256Sums(`${hashA}  linux-6.12.7.tar.xz\n`).size, 0);
  });
});

describe('kernelTarballUrl', () => {
  test('uses the major version directory', () => {
    assert.equal(
      kernelTarballUrl('https://cdn.kernel.org/pub/linux/kernel', '6.12.7'),
      'https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.7.tar.xz',
    );
    assert.equal(kernelTarballUrl('http://mirror.test/linux/', '5.10'), 'http://mirror.test/linux/v5.x/linux-5.10.tar.xz');
  });

  test('sums URL sits in the same directory', () => {
    assert.equal(kernelSha256SumsUrl('http://mirror.test/k', '6.1.2'), 'http://mirror.test/k/v6.x/sha256sums.asc');
  });

  test('rejects invalid versions', () => {
    for (const version of ['6', '6.12-rc1', '../6.12', '6.12.7/x', 'v6.12', '']) {
      assert.throws(() => kernelTarballUrl('https://cdn.kernel.org/pub/linux/kernel', version), KrunfwError, version);
    }
  });

  test('rejects non-http base URLs', () => {
    assert.throws(() => kernelTarballUrl('ftp://mirror.test/linux', '6.12.7'), /only http and https/);
    assert.throws(() => kernelTarballUrl('mirror.test/linux', '6.12.7'), /Invalid kernel mirror URL/);
  });
});

describe('fetchKernelTarball', () => {
  const tarball = randomBytes(64 * 1024);
  const tarballSha256 = sha256(tarball);
  const sumsText = clearSigned([
    `${sha256('other')}  linux-6.12.6.tar.xz`,
    `${tarballSha256}  linux-6.12.7.tar.xz`,
    `${sha256('signature')}  linux-6.12.7.tar.sign`,
  ]);

  let server: TestHttpServer;
  let scratch: string;
  let cacheDirectory: string;

  beforeEach(async () => {
    server = await startHttpServer();
    server.route(SUMS_PATH, sendBytes(sumsText));
    scratch = await mkdtemp(join(tmpdir(), 'krunfw-download-test-'));
    // Not created yet, so that every test also checks that the cache directory is created.
    cacheDirectory = join(scratch, 'cache');
  });

  afterEach(async () => {
    await server.close();
    await rm(scratch, { recursive: true, force: true });
  });

  function request(overrides: Partial<KernelSourceRequest> = {}): KernelSourceRequest {
    return { version: VERSION, baseUrl: `${server.baseUrl}/pub`, cacheDirectory, retryDelayMs: 1, ...overrides };
  }

  async function cacheEntries(): Promise<string[]> {
    return (await readdir(cacheDirectory)).sort();
  }

  test('downloads and verifies the tarball', async () => {
    server.route(TARBALL_PATH, sendBytes(tarball));
    const progress: Array<[number, number | undefined]> = [];

    const source = await fetchKernelTarball(request({ onProgress: (received, total) => progress.push([received, total]) }));

    assert.equal(source.path, join(cacheDirectory, 'linux-6.12.7.tar.xz'));
    assert.equal(source.sha256, tarballSha256);
    assert.equal(source.url, `${server.baseUrl}${TARBALL_PATH}`);
    assert.equal(source.fromCache, false);
    assert.deepEqual(await readFile(source.path), tarball);
    assert.deepEqual(await cacheEntries(), ['linux-6.12.7.tar.xz', 'linux-6.12.7.tar.xz.verified.json']);
    assert.deepEqual(progress.at(-1), [tarball.length, tarball.length]);
  });

  test('404 fails naming status and URL', async () => {
    const url = `${server.baseUrl}${TARBALL_PATH}`;

    await assert.rejects(fetchKernelTarball(request()), (error: KrunfwError) => {
      assert.ok(error instanceof KrunfwError);
      assert.match(error.message, /HTTP 404/);
      assert.ok(error.message.includes(url), error.message);
      return true;
    });
    assert.equal(server.requestCount(TARBALL_PATH), 1);
    assert.deepEqual(await cacheEntries(), []);
  });

  test('checksum mismatch deletes the download', async () => {
    const wrongTarball = randomBytes(tarball.length);
    server.route(TARBALL_PATH, sendBytes(wrongTarball));

    await assert.rejects(fetchKernelTarball(request()), (error: KrunfwError) => {
      assert.ok(error instanceof KrunfwError);
      assert.ok(error.message.includes(tarballSha256), error.message);
      assert.ok(error.message.includes(sha256(wrongTarball)), error.message);
      assert.ok(error.message.includes(`${server.baseUrl}${TARBALL_PATH}`), error.message);
      return true;
    });
    assert.equal(server.requestCount(TARBALL_PATH), 1);
    assert.deepEqual(await cacheEntries(), []);
  });

  test('connection dropped once is retried', async () => {
    server.route(TARBALL_PATH, dropMidBody(tarball), sendBytes(tarball));
    const retries: Array<[number, string]> = [];

    const source = await fetchKernelTarball(request({ onRetry: (attempt, error) => retries.push([attempt, error.message]) }));

    assert.equal(source.sha256, tarballSha256);
    assert.equal(server.requestCount(TARBALL_PATH), 2);
    assert.equal(retries.length, 1);
    assert.equal(retries[0][0], 1);
    assert.ok(retries[0][1].includes(`${server.baseUrl}${TARBALL_PATH}`), retries[0][1]);
    assert.deepEqual(await cacheEntries(), ['linux-6.12.7.tar.xz', 'linux-6.12.7.tar.xz.verified.json']);
  });

  test('connection dropped every time fails', async () => {
    server.route(TARBALL_PATH, dropMidBody(tarball));
    const attempts: number[] = [];

    await assert.rejects(
      fetchKernelTarball(request({ retries: 2, onRetry: (attempt) => attempts.push(attempt) })),
      (error: KrunfwError) => {
        assert.ok(error instanceof KrunfwError);
        assert.ok(error.message.includes(`${server.baseUrl}${TARBALL_PATH}`), error.message);
        assert.match(error.message, /2 retries/);
        return true;
      },
    );
    assert.deepEqual(attempts, [1, 2]);
    assert.equal(server.requestCount(TARBALL_PATH), 3);
    assert.deepEqual(await cacheEntries(), []);
  });

  test('connection refused fails after retries', async () => {
    const closed = await startHttpServer();
    const baseUrl = closed.baseUrl;
    await closed.close();
    const attempts: number[] = [];

    await assert.rejects(
      fetchKernelTarball(request({ baseUrl, retries: 1, onRetry: (attempt) => attempts.push(attempt) })),
      /ECONNREFUSED/,
    );
    assert.deepEqual(attempts, [1]);
  });

  test('stalled response times out and is retried', async () => {
    server.route(TARBALL_PATH, stallAfter(tarball, 1024), sendBytes(tarball));
    const messages: string[] = [];

    const source = await fetchKernelTarball(
      request({ idleTimeoutMs: 250, onRetry: (_attempt, error) => messages.push(error.message) }),
    );

    assert.equal(source.sha256, tarballSha256);
    assert.equal(messages.length, 1);
    assert.match(messages[0], /timed out/);
  });

  test('503 is retried', async () => {
    server.route(TARBALL_PATH, sendStatus(503), sendBytes(tarball));

    const source = await fetchKernelTarball(request());

    assert.equal(source.sha256, tarballSha256);
    assert.equal(server.requestCount(TARBALL_PATH), 2);
  });

  test('5xx every time fails naming the status', async () => {
    server.route(TARBALL_PATH, sendStatus(500));

    await assert.rejects(fetchKernelTarball(request({ retries: 2 })), /HTTP 500 .*Gave up after 2 retries/);
    assert.equal(server.requestCount(TARBALL_PATH), 3);
    assert.deepEqual(await cacheEntries(), []);
  });

  test('redirect is followed', async () => {
    server.route(TARBALL_PATH, redirectTo('/elsewhere/linux-6.12.7.tar.xz'));
    server.route('/elsewhere/linux-6.12.7.tar.xz', sendBytes(tarball));

    const source = await fetchKernelTarball(request());

    assert.equal(source.sha256, tarballSha256);
    assert.equal(source.url, `${server.baseUrl}${TARBALL_PATH}`);
    assert.equal(server.requestCount('/elsewhere/linux-6.12.7.tar.xz'), 1);
  });

  test('verified cache is reused without requests', async () => {
    server.route(TARBALL_PATH, sendBytes(tarball));
    await fetchKernelTarball(request());
    const requestsBefore = server.requests.length;

    const source = await fetchKernelTarball(request());

    assert.equal(source.fromCache, true);
    assert.equal(source.sha256, tarballSha256);
    assert.equal(server.requests.length, requestsBefore);
  });

  test('cache without record is hashed and reused', async () => {
    server.route(TARBALL_PATH, sendBytes(tarball));
    await fetchKernelTarball(request());
    await rm(join(cacheDirectory, 'linux-6.12.7.tar.xz.verified.json'));

    const source = await fetchKernelTarball(request());

    assert.equal(source.fromCache, true);
    assert.equal(server.requestCount(TARBALL_PATH), 1);
    assert.deepEqual(await cacheEntries(), ['linux-6.12.7.tar.xz', 'linux-6.12.7.tar.xz.verified.json']);
  });

  test('changed cached file is downloaded again', async () => {
    server.route(TARBALL_PATH, sendBytes(tarball));
    const first = await fetchKernelTarball(request());
    // The size still matches, but the new mtime voids the record and the hash decides.
    await writeFile(first.path, randomBytes(tarball.length));
    await utimes(first.path, new Date(2001, 0, 1), new Date(2001, 0, 1));

    const source = await fetchKernelTarball(request());

    assert.equal(source.fromCache, false);
    assert.equal(server.requestCount(TARBALL_PATH), 2);
    assert.deepEqual(await readFile(source.path), tarball);
  });

  test('expectedSha256 replaces the sums file', async () => {
    const otherTarball = randomBytes(1024);
    server.route(TARBALL_PATH, sendBytes(otherTarball));

    const source = await fetchKernelTarball(request({ expectedSha256: sha256(otherTarball).toUpperCase() }));

    assert.equal(source.sha256, sha256(otherTarball));
    assert.equal(server.requestCount(SUMS_PATH), 0);
  });

  test('expectedSha256 differing from record rechecks', async () => {
    server.route(TARBALL_PATH, sendBytes(tarball));
    await fetchKernelTarball(request());
    const otherSha256 = sha256('another tarball');

    await assert.rejects(fetchKernelTarball(request({ expectedSha256: otherSha256 })), (error: KrunfwError) => {
      assert.ok(error.message.includes(otherSha256), error.message);
      assert.ok(error.message.includes(tarballSha256), error.message);
      return true;
    });
    assert.equal(server.requestCount(TARBALL_PATH), 2);
  });

  test('rejected expectedSha256 keeps the cache', async () => {
    server.route(TARBALL_PATH, sendBytes(tarball));
    await fetchKernelTarball(request());
    await assert.rejects(fetchKernelTarball(request({ expectedSha256: sha256('another tarball') })), /mismatch/);

    // The earlier download is still verified for its own hash, so it stays usable.
    const source = await fetchKernelTarball(request());

    assert.equal(source.fromCache, true);
    assert.equal(server.requestCount(TARBALL_PATH), 2);
    assert.deepEqual(await readFile(source.path), tarball);
  });

  test('invalid expectedSha256 is rejected', async () => {
    await assert.rejects(fetchKernelTarball(request({ expectedSha256: 'abc123' })), /Invalid SHA-256 'abc123'/);
    assert.equal(server.requests.length, 0);
  });

  test('version missing from sums fails', async () => {
    server.route('/pub/v6.x/linux-6.12.8.tar.xz', sendBytes(tarball));

    await assert.rejects(fetchKernelTarball(request({ version: '6.12.8' })), (error: KrunfwError) => {
      assert.ok(error instanceof KrunfwError);
      assert.ok(error.message.includes('linux-6.12.8.tar.xz'), error.message);
      assert.ok(error.message.includes(`${server.baseUrl}${SUMS_PATH}`), error.message);
      assert.match(error.hint ?? '', /--kernel-sha256/);
      return true;
    });
    assert.equal(server.requestCount('/pub/v6.x/linux-6.12.8.tar.xz'), 0);
  });

  test('unsigned sums file fails', async () => {
    server.route(SUMS_PATH, sendBytes('<html>mirror maintenance</html>\n'));

    await assert.rejects(fetchKernelTarball(request()), /contains no PGP clear-signed list/);
    assert.equal(server.requestCount(TARBALL_PATH), 0);
  });

  test('aborted signal sends no request', async () => {
    const controller = new AbortController();
    controller.abort();

    await assert.rejects(fetchKernelTarball(request({ signal: controller.signal })), { name: 'AbortError' });
    assert.equal(server.requests.length, 0);
  });

  test('abort mid-download leaves no files', async () => {
    server.route(TARBALL_PATH, stallAfter(tarball, 1024));
    const controller = new AbortController();

    const download = fetchKernelTarball(
      request({
        signal: controller.signal,
        onProgress: (received) => {
          if (received > 0) {
            controller.abort();
          }
        },
      }),
    );

    await assert.rejects(download, { name: 'AbortError' });
    assert.equal(server.requestCount(TARBALL_PATH), 1);
    assert.deepEqual(await cacheEntries(), []);
  });
});
