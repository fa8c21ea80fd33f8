// SPDX-License-Identifier: LGPL-2.1-only
//
// End to end for aarch64, the guest of every Apple Silicon Mac: the kernel
// source comes through the downloader from a mirror on 127.0.0.1, the
// kernel is cross-compiled, and the Image is taken back out of the linked
// library by the self-test program and booted under qemu-system-aarch64.
import assert from 'node:assert/strict';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { sha256File } from '../src/hash.js';
import { SELFTEST_SOURCE } from '../src/selftest/selftest.js';
import { bootKernel, makeRootDisk } from './support/boot.js';
import { DEBIAN_KERNEL_TARBALL, runCli } from './support/cli.js';
import { type TestHttpServer, sendBytes, startHttpServer } from './support/http-server.js';
import { type BuildJson, sharedWorkDirectory } from './support/shared-build.js';

const MARKER = 'KRUNFW-E2E-AARCH64-INIT-RAN';
/** The release name the mirror serves Debian's tarball under; the build reads the real version from the tree. */
const MIRROR_VERSION = '6.1.999';

describe('aarch64 cross build through a mirror', () => {
  let mirror: TestHttpServer;
  let build: BuildJson;
  let cacheDirectory: string;

  before(async () => {
    const tarballSha256 = await sha256File(DEBIAN_KERNEL_TARBALL);
    mirror = await startHttpServer();
    mirror.route(`/v6.x/linux-${MIRROR_VERSION}.tar.xz`, (_request, response) => {
      stat(DEBIAN_KERNEL_TARBALL).then((info) => {
        response.writeHead(200, { 'Content-Length': info.size });
        createReadStream(DEBIAN_KERNEL_TARBALL).pipe(response);
      });
    });
    mirror.route(
      '/v6.x/sha256sums.asc',
      sendBytes(
        ['-----BEGIN PGP SIGNED MESSAGE-----', 'Hash: SHA256', '', `${tarballSha256}  linux-${MIRROR_VERSION}.tar.xz`,
          '-----BEGIN PGP SIGNATURE-----', '', 'not a real signature', '-----END PGP SIGNATURE-----', ''].join('\n'),
      ),
    );
    cacheDirectory = await mkdtemp(join(tmpdir(), 'krunfw-e2e-cache-'));
    const workDirectory = sharedWorkDirectory('aarch64');
    await mkdir(workDirectory, { recursive: true });
    const result = await runCli(
      ['build', '--json', '--arch', 'aarch64', '--kernel-version', MIRROR_VERSION, '--mirror', mirror.baseUrl, '--work-dir', workDirectory],
      { env: { KRUNFW_CACHE_DIR: cacheDirectory } },
    );
    assert.equal(result.exitCode, 0, `build failed:\n${result.stderr}`);
    build = JSON.parse(result.stdout) as BuildJson;
  });

  after(async () => {
    await mirror?.close();
    if (cacheDirectory) await rm(cacheDirectory, { recursive: true, force: true });
  });

  test('tarball was downloaded, verified and cached', async () => {
    assert.equal(build.tarball.url, `${mirror.baseUrl}/v6.x/linux-${MIRROR_VERSION}.tar.xz`);
    assert.equal(build.tarball.sha256, await sha256File(DEBIAN_KERNEL_TARBALL));
    assert.equal(await sha256File(build.tarball.path), build.tarball.sha256);
    assert.ok(build.tarball.path.startsWith(cacheDirectory));
  });

  test('library carries the arm64 Image at 0x80000000', async () => {
    const provenance = JSON.parse(await readFile(build.provenance, 'utf8'));
    assert.equal(provenance.arch, 'aarch64');
    assert.equal(provenance.bundle.loadAddress, '0x80000000');
    assert.equal(provenance.bundle.entryAddress, '0x80000000');
    assert.match(build.kernelArtifact.path, /arch\/arm64\/boot\/Image$/);
    const config = await readFile(build.kernelConfig.path, 'utf8');
    assert.match(config, /^CONFIG_ARM64_4K_PAGES=y$/m);
  });

  test('Image from the library boots under QEMU and powers off', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'krunfw-e2e-aarch64-'));
    try {
      // The self-test program loads the library as libkrun would and dumps the kernel bytes it returns.
      const program = join(directory, 'selftest');
      await execa('cc', ['-O1', '-o', program, SELFTEST_SOURCE, '-ldl']);
      const dumped = join(directory, 'Image-from-library');
      const check = await execa(program, [
        `library=${build.library.path}`, 'abi=5', 'load=0x80000000', 'entry=0x80000000',
        `artifact=${build.kernelArtifact.path}`, 'offset=0', `length=${(await stat(build.kernelArtifact.path)).size}`, `dump=${dumped}`,
      ], { reject: false });
      assert.equal(check.exitCode, 0, check.stdout);
      assert.doesNotMatch(check.stdout, /FAIL/);
      assert.equal((await stat(dumped)).size % 65536, 0);

      const disk = await makeRootDisk({ arch: 'aarch64', directory, marker: MARKER });
      const boot = await bootKernel({ arch: 'aarch64', kernel: dumped, rootDisk: disk, timeoutMs: 180_000 });
      assert.equal(boot.timedOut, false, `guest did not stop by itself:\n${boot.output.slice(-3000)}`);
      assert.match(boot.output, new RegExp(`^${MARKER}`, 'm'), boot.output.slice(-3000));
      assert.doesNotMatch(boot.output, /Kernel panic/, boot.output.slice(-3000));
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });

  test('second download is served from the cache', async () => {
    const before = mirror.requestCount(`/v6.x/linux-${MIRROR_VERSION}.tar.xz`);
    const result = await runCli(
      ['build', '--json', '--arch', 'aarch64', '--kernel-version', MIRROR_VERSION, '--mirror', mirror.baseUrl, '--work-dir', sharedWorkDirectory('aarch64')],
      { env: { KRUNFW_CACHE_DIR: cacheDirectory } },
    );
    assert.equal(result.exitCode, 0, result.stderr);
    assert.equal(mirror.requestCount(`/v6.x/linux-${MIRROR_VERSION}.tar.xz`), before);
    assert.equal((JSON.parse(result.stdout) as BuildJson).stages.kernel, 'skipped');
  });
});

