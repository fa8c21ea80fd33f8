// SPDX-License-Identifier: LGPL-2.1-only
//
// The Homebrew hook as a formula runs it: `dist` from the shared real
// builds, the archive unpacked, and the krunfw-mac inside it run in the
// unpacked directory. On Linux it makes the .so and loads it; with
// --target-os darwin it makes the arm64 dylib, checked with the LLVM tools.
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { sha256File } from '../src/hash.js';
import type { Provenance } from '../src/provenance.js';
import { REPOSITORY, runCli } from './support/cli.js';
import { sharedBuild } from './support/shared-build.js';

interface HookRun {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Writes the prebuilt archive of a shared build and unpacks it; returns the unpacked directory. */
async function unpackedPrebuilt(arch: 'x86_64' | 'aarch64', directory: string): Promise<string> {
  const build = await sharedBuild(arch);
  const result = await runCli(['dist', '--json', '--output-dir', join(build.provenance, '..'), '--archive-dir', directory]);
  assert.equal(result.exitCode, 0, result.stderr);
  const prebuilt = JSON.parse(result.stdout).prebuilt as { path: string; directory: string };
  await execa('tar', ['-xzf', prebuilt.path, '-C', directory]);
  return join(directory, prebuilt.directory);
}

/** Runs the archive's own krunfw-mac, as the formula's install step does. */
async function runHook(prebuilt: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<HookRun> {
  const result = await execa(process.execPath, [join(prebuilt, 'tool', 'bin', 'krunfw-mac.js'), 'homebrew', ...args], {
    cwd: prebuilt,
    env: { NO_COLOR: '1', ...env },
    stdin: 'ignore',
    reject: false,
  });
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** Copies an unpacked prebuilt directory so a test can damage it. */
async function copyPrebuilt(prebuilt: string, into: string): Promise<string> {
  await cp(prebuilt, into, { recursive: true });
  return into;
}

describe('homebrew hook on the x86_64 prebuilt archive', () => {
  let directory: string;
  let prebuilt: string;

  before(async () => {
    directory = await mkdtemp(join(tmpdir(), 'krunfw-homebrew-'));
    prebuilt = await unpackedPrebuilt('x86_64', directory);
  });

  after(async () => {
    if (directory) await rm(directory, { recursive: true, force: true });
  });

  test('hook installs the Linux library', async () => {
    const prefix = join(directory, 'prefix');
    const result = await runHook(prebuilt, ['--prefix', prefix, '--json']);
    assert.equal(result.exitCode, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.selfTest, 'passed');
    assert.equal(report.library, join(prefix, 'lib', 'libkrunfw.so.5.0.0'));

    assert.equal(await readlink(join(prefix, 'lib', 'libkrunfw.so.5')), 'libkrunfw.so.5.0.0');
    assert.equal(await readlink(join(prefix, 'lib', 'libkrunfw.so')), 'libkrunfw.so.5');
    const soname = await execa('readelf', ['-d', join(prefix, 'lib', 'libkrunfw.so.5.0.0')]);
    assert.match(soname.stdout, /Library soname: \[libkrunfw\.so\.5\]/);
    assert.deepEqual((await readdir(prefix)).sort(), ['LICENSE', 'LICENSE-GPL-2.0-only.txt', 'LICENSE-LGPL-2.1-only.txt', 'lib', 'share']);
    assert.equal(await sha256File(join(prefix, 'LICENSE-GPL-2.0-only.txt')), await sha256File(join(REPOSITORY, 'LICENSES', 'GPL-2.0-only.txt')));
    assert.equal(await sha256File(join(prefix, 'share', 'libkrunfw', 'provenance.json')), await sha256File(join(prebuilt, 'provenance.json')));
  });

  test('hook honours CC', async () => {
    const log = join(directory, 'cc.log');
    const wrapper = join(directory, 'cc-wrapper');
    await writeFile(wrapper, `#!/bin/sh\nprintf '%s\\n' "$*" >> '${log}'\nexec cc "$@"\n`, { mode: 0o755 });
    const result = await runHook(prebuilt, ['--prefix', join(directory, 'prefix-cc')], { CC: wrapper });
    assert.equal(result.exitCode, 0, result.stderr);
    const calls = await readFile(log, 'utf8');
    assert.match(calls, /-shared .*-Wl,-soname,libkrunfw\.so\.5 .*kernel\.c/);
    assert.match(calls, /selftest\.c/);
  });

  test('hook rejects an edited kernel.c', async () => {
    const copy = await copyPrebuilt(prebuilt, join(directory, 'edited'));
    await writeFile(join(copy, 'kernel.c'), '/* edited */\n', { flag: 'a' });
    const prefix = join(directory, 'prefix-edited');
    const result = await runHook(copy, ['--prefix', prefix]);
    assert.equal(result.exitCode, 1);
    const provenance = JSON.parse(await readFile(join(copy, 'provenance.json'), 'utf8')) as Provenance;
    assert.match(result.stderr, new RegExp(`kernel\\.c: SHA-256 ${await sha256File(join(copy, 'kernel.c'))}, but provenance\\.json records ${provenance.bundle.sourceSha256}`));
    await assert.rejects(readdir(prefix));
  });

  test('hook rejects another ABI', async () => {
    const copy = await copyPrebuilt(prebuilt, join(directory, 'abi4'));
    const provenance = JSON.parse(await readFile(join(copy, 'provenance.json'), 'utf8')) as Provenance;
    await writeFile(join(copy, 'provenance.json'), JSON.stringify({ ...provenance, abi: 4, library: { ...provenance.library, soname: 'libkrunfw.so.4' } }));
    const result = await runHook(copy, ['--prefix', join(directory, 'prefix-abi4')]);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /ABI: the bundle was built for ABI 4, this krunfw-mac links ABI 5 \(libkrunfw\.so\.5\)/);
    assert.match(result.stderr, /provenance\.json: SHA-256 [0-9a-f]{64}, but SHA256SUMS lists/);
  });

  test('hook rejects another architecture', async () => {
    const result = await runHook(prebuilt, ['--prefix', join(directory, 'prefix-darwin'), '--target-os', 'darwin']);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /architecture: the bundle is for x86_64, a macOS library here needs aarch64/);
    assert.match(result.stderr, /libkrunfw-prebuilt-aarch64\.tar\.gz/);
  });

  test('hook rejects a damaged file', async () => {
    const copy = await copyPrebuilt(prebuilt, join(directory, 'damaged'));
    await writeFile(join(copy, 'tool', 'src', 'selftest', 'selftest.c'), '/* damaged */\n', { flag: 'a' });
    const result = await runHook(copy, ['--prefix', join(directory, 'prefix-damaged')]);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /tool\/src\/selftest\/selftest\.c: SHA-256 [0-9a-f]{64}, but SHA256SUMS lists/);
  });
});

describe('homebrew hook on the aarch64 prebuilt archive', () => {
  let directory: string;
  let prebuilt: string;

  before(async () => {
    directory = await mkdtemp(join(tmpdir(), 'krunfw-homebrew-darwin-'));
    prebuilt = await unpackedPrebuilt('aarch64', directory);
  });

  after(async () => {
    if (directory) await rm(directory, { recursive: true, force: true });
  });

  test('hook makes the arm64 macOS dylib', async () => {
    const prefix = join(directory, 'Cellar', 'libkrunfw', '5.0.0');
    const optPrefix = join(directory, 'opt', 'libkrunfw');
    const result = await runHook(prebuilt, ['--prefix', prefix, '--opt-prefix', optPrefix, '--target-os', 'darwin', '--json']);
    assert.equal(result.exitCode, 0, result.stderr);
    assert.equal(JSON.parse(result.stdout).selfTest, 'skipped');
    const dylib = join(prefix, 'lib', 'libkrunfw.5.dylib');
    assert.equal(await readlink(join(prefix, 'lib', 'libkrunfw.dylib')), 'libkrunfw.5.dylib');

    const id = await execa('llvm-objdump', ['--macho', '--dylib-id', dylib]);
    assert.equal(id.stdout.trim().split('\n').pop(), join(optPrefix, 'lib', 'libkrunfw.5.dylib'));
    const headers = (await execa('llvm-objdump', ['--macho', '--private-headers', dylib])).stdout;
    assert.match(headers, /^MH_MAGIC_64 +ARM64 .* DYLIB /m);
    const idCommand = headers.slice(headers.indexOf('cmd LC_ID_DYLIB'));
    assert.match(idCommand, /current version 5\.0\.0/);
    assert.match(idCommand, /compatibility version 5\.0\.0/);
    const exports = (await execa('llvm-nm', ['-g', '--defined-only', dylib])).stdout;
    assert.match(exports, / T _krunfw_get_kernel$/m);
    assert.match(exports, / T _krunfw_get_version$/m);
    assert.deepEqual((await readdir(prefix)).sort(), ['LICENSE', 'LICENSE-GPL-2.0-only.txt', 'LICENSE-LGPL-2.1-only.txt', 'lib', 'share']);
  });
});
