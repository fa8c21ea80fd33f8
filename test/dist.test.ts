// SPDX-License-Identifier: LGPL-2.1-only
//
// dist from the real x86_64 build that the end-to-end tests share: the
// archives' layout, checksums, licenses and sources, byte-identical output
// from two runs, and the tar writer read back by GNU tar and bsdtar.
import assert from 'node:assert/strict';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import which from 'which';
import { sha256File } from '../src/hash.js';
import type { Provenance } from '../src/provenance.js';
import { writeTarGz } from '../src/tar.js';
import { REPOSITORY, runCli } from './support/cli.js';
import { type BuildJson, sharedBuild } from './support/shared-build.js';

interface ArchiveJson {
  path: string;
  sha256: string;
  directory: string;
  files: string[];
}

async function runDist(args: string[]): Promise<{ prebuilt: ArchiveJson; sources?: ArchiveJson & { mode: string } }> {
  const result = await runCli(['dist', '--json', ...args]);
  assert.equal(result.exitCode, 0, result.stderr);
  return JSON.parse(result.stdout);
}

async function extract(archive: string, into: string, tar = 'tar'): Promise<void> {
  await mkdir(into, { recursive: true });
  await execa(tar, ['-xzf', archive, '-C', into]);
}

describe('dist from the shared x86_64 build', () => {
  let build: BuildJson;
  let outputDirectory: string;
  let provenance: Provenance;
  let directory: string;

  before(async () => {
    build = await sharedBuild('x86_64');
    outputDirectory = join(build.provenance, '..');
    provenance = JSON.parse(await readFile(build.provenance, 'utf8')) as Provenance;
    directory = await mkdtemp(join(tmpdir(), 'krunfw-dist-'));
  });

  after(async () => {
    if (directory) await rm(directory, { recursive: true, force: true });
  });

  test('prebuilt archive holds bundle, provenance, licenses and checksums', async () => {
    const archives = join(directory, 'layout');
    const result = await runDist(['--output-dir', outputDirectory, '--archive-dir', archives]);
    assert.equal(basename(result.prebuilt.path), 'libkrunfw-prebuilt-x86_64.tar.gz');
    assert.equal(result.prebuilt.sha256, await sha256File(result.prebuilt.path));

    const unpacked = join(directory, 'layout-unpacked');
    await extract(result.prebuilt.path, unpacked);
    assert.deepEqual(await readdir(unpacked), ['libkrunfw-prebuilt-x86_64']);
    const top = join(unpacked, 'libkrunfw-prebuilt-x86_64');
    for (const name of ['kernel.c', 'provenance.json', 'SHA256SUMS', 'LICENSE', 'BUILDING', 'tool']) {
      assert.ok((await readdir(top)).includes(name), `${name} is missing`);
    }
    assert.equal(await sha256File(join(top, 'kernel.c')), build.kernelSource.sha256);
    assert.equal(await sha256File(join(top, 'provenance.json')), await sha256File(build.provenance));
    const checked = await execa('sha256sum', ['--check', '--strict', 'SHA256SUMS'], { cwd: top });
    assert.match(checked.stdout, /^kernel\.c: OK$/m);
    assert.match(checked.stdout, /^tool\/bin\/krunfw-mac\.js: OK$/m);
  });

  test('prebuilt archive contains both license texts', async () => {
    const result = await runDist(['--output-dir', outputDirectory, '--archive-dir', join(directory, 'licenses')]);
    const unpacked = join(directory, 'licenses-unpacked');
    await extract(result.prebuilt.path, unpacked);
    const top = join(unpacked, result.prebuilt.directory);
    assert.equal(await readFile(join(top, 'LICENSE-GPL-2.0-only.txt'), 'utf8'), await readFile(join(REPOSITORY, 'LICENSES', 'GPL-2.0-only.txt'), 'utf8'));
    assert.equal(await readFile(join(top, 'LICENSE-LGPL-2.1-only.txt'), 'utf8'), await readFile(join(REPOSITORY, 'LICENSES', 'LGPL-2.1-only.txt'), 'utf8'));
    assert.match(await readFile(join(top, 'LICENSE'), 'utf8'), new RegExp(`Linux ${provenance.kernel.version.replace(/\./g, '\\.')} kernel`));
  });

  test('dist archives are reproducible', async () => {
    const first = await runDist(['--output-dir', outputDirectory, '--archive-dir', join(directory, 'first'), '--sources']);
    const second = await runDist(['--output-dir', outputDirectory, '--archive-dir', join(directory, 'second'), '--sources']);
    assert.ok(first.sources, 'first run wrote no source archive');
    assert.ok(second.sources, 'second run wrote no source archive');
    assert.ok((await readFile(first.prebuilt.path)).equals(await readFile(second.prebuilt.path)), 'prebuilt archives differ');
    assert.ok((await readFile(first.sources.path)).equals(await readFile(second.sources.path)), 'source archives differ');

    const listing = await execa('tar', ['--list', '--verbose', '--numeric-owner', '--full-time', '-zf', first.prebuilt.path], { env: { TZ: 'UTC' } });
    for (const line of listing.stdout.split('\n')) {
      assert.match(line, /^[d-]rw[x-]r-[x-]r-[x-] 0\/0 +\d+ 1970-01-01 00:00:00 /, line);
    }
  });

  test('sources archive holds tarball, patches and config', async () => {
    const result = await runDist(['--output-dir', outputDirectory, '--archive-dir', join(directory, 'sources'), '--sources']);
    assert.ok(result.sources);
    assert.equal(basename(result.sources.path), 'libkrunfw-sources-x86_64.tar.gz');
    const unpacked = join(directory, 'sources-unpacked');
    await extract(result.sources.path, unpacked);
    const top = join(unpacked, 'libkrunfw-sources-x86_64');
    await execa('sha256sum', ['--check', '--strict', '--quiet', 'SHA256SUMS'], { cwd: top });

    assert.equal(await sha256File(join(top, basename(build.tarball.path))), provenance.kernel.tarball.sha256);
    for (const patch of provenance.patches) {
      assert.equal(await sha256File(join(top, 'patches', basename(patch.name))), patch.sha256);
    }
    assert.equal(await sha256File(join(top, 'config', 'common.config')), provenance.config.fragments[0]!.sha256);
    assert.equal(await sha256File(join(top, 'config', 'x86_64.config')), provenance.config.fragments[1]!.sha256);
    assert.equal(await sha256File(join(top, 'kernel.config')), provenance.config.sha256);
    assert.ok((await readdir(top)).includes('LICENSE-GPL-2.0-only.txt'));
    const guide = await readFile(join(top, 'BUILDING'), 'utf8');
    assert.match(guide, /patch -p1 < patches\/0001-/);
    assert.match(guide, /krunfw-mac build --arch x86_64 --kernel-tarball linux-source-6\.1\.tar\.xz --patches patches --config-dir config --max-cpus 16/);
  });

  test('sources reference names URL and SHA-256', async () => {
    const url = 'https://mirror.example/linux-source-6.1.tar.xz';
    const result = await runDist(['--output-dir', outputDirectory, '--archive-dir', join(directory, 'reference'), '--sources=reference', '--kernel-url', url]);
    assert.equal(result.sources?.mode, 'reference');
    assert.ok(!result.sources.files.includes('linux-source-6.1.tar.xz'));
    const unpacked = join(directory, 'reference-unpacked');
    await extract(result.sources.path, unpacked);
    const reference = await readFile(join(unpacked, result.sources.directory, 'KERNEL-SOURCE'), 'utf8');
    assert.match(reference, new RegExp(`url +${url.replace(/\./g, '\\.')}`));
    assert.match(reference, new RegExp(`sha256 +${provenance.kernel.tarball.sha256}`));
  });

  test('sources reference without URL fails', async () => {
    const result = await runCli(['dist', '--output-dir', outputDirectory, '--archive-dir', join(directory, 'no-url'), '--sources=reference']);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /used a local kernel tarball/);
    assert.match(result.stderr, /--kernel-url/);
  });

  test('dist of an edited kernel.c fails', async () => {
    const copy = join(directory, 'edited-output');
    await cp(outputDirectory, copy, { recursive: true });
    await writeFile(join(copy, 'kernel.c'), '/* not the bundle */\n', { flag: 'a' });
    const result = await runCli(['dist', '--output-dir', copy, '--archive-dir', join(directory, 'edited')]);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /Bundle .*kernel\.c changed after the build/);
    assert.match(result.stderr, new RegExp(`provenance\\.json SHA-256 ${build.kernelSource.sha256}`));
  });

  test('prebuilt archive unpacks the same with bsdtar', async (context) => {
    const bsdtar = await which('bsdtar', { nothrow: true });
    if (!bsdtar) {
      context.skip('bsdtar (Debian package libarchive-tools) is not installed');
      return;
    }
    const result = await runDist(['--output-dir', outputDirectory, '--archive-dir', join(directory, 'bsdtar')]);
    await extract(result.prebuilt.path, join(directory, 'bsdtar-unpacked'), bsdtar);
    const top = join(directory, 'bsdtar-unpacked', result.prebuilt.directory);
    await execa('sha256sum', ['--check', '--strict', '--quiet', 'SHA256SUMS'], { cwd: top });
  });
});

describe('tar writer', () => {
  let directory: string;

  before(async () => {
    directory = await mkdtemp(join(tmpdir(), 'krunfw-tar-'));
  });

  after(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  const longPath = `top/${'deep-directory-name/'.repeat(12)}file-with-a-long-name.txt`;
  const unicodePath = 'top/Größe-ファイル.txt';

  for (const tar of ['tar', 'bsdtar']) {
    test(`tar long and non-ASCII paths with ${tar}`, async (context) => {
      const program = await which(tar, { nothrow: true });
      if (!program) {
        context.skip(`${tar} is not installed`);
        return;
      }
      const archive = join(directory, `${tar}.tar.gz`);
      await writeTarGz(
        archive,
        [
          { kind: 'file', path: longPath, source: { data: Buffer.from('long\n') } },
          { kind: 'file', path: unicodePath, source: { data: Buffer.from('unicode\n') } },
          { kind: 'file', path: 'top/run.sh', executable: true, source: { data: Buffer.from('#!/bin/sh\n') } },
          { kind: 'file', path: 'top/empty', source: { data: Buffer.alloc(0) } },
        ],
        { mtime: 1234567890 },
      );
      const into = join(directory, `${tar}-unpacked`);
      await extract(archive, into, program);
      assert.equal(await readFile(join(into, longPath), 'utf8'), 'long\n');
      assert.equal(await readFile(join(into, unicodePath), 'utf8'), 'unicode\n');
      assert.equal(await readFile(join(into, 'top/empty'), 'utf8'), '');
      const listing = await execa('tar', ['--list', '--verbose', '--numeric-owner', '--full-time', '-zf', archive], { env: { TZ: 'UTC' } });
      assert.match(listing.stdout, /^-rwxr-xr-x 0\/0 +10 2009-02-13 23:31:30 top\/run\.sh$/m);
    });
  }

  test('tar output depends only on entries', async () => {
    const entries = [
      { kind: 'file' as const, path: 'b/second', source: { data: Buffer.from('2') } },
      { kind: 'file' as const, path: 'a/first', source: { data: Buffer.from('1') } },
    ];
    await writeTarGz(join(directory, 'one.tar.gz'), entries, { mtime: 0 });
    await writeTarGz(join(directory, 'two.tar.gz'), [...entries].reverse(), { mtime: 0 });
    const one = await readFile(join(directory, 'one.tar.gz'));
    assert.ok(one.equals(await readFile(join(directory, 'two.tar.gz'))));
    // gzip header: no name, time 0, OS 3 (Unix), whatever zlib was compiled for.
    assert.deepEqual([...one.subarray(3, 8)], [0, 0, 0, 0, 0]);
    assert.equal(one[9], 3);
  });
});
