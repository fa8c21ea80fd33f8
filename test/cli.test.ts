// SPDX-License-Identifier: LGPL-2.1-only
//
// The standalone commands as a user runs them: bundle and link a small
// handmade vmlinux, load the result with the self-test program, and the
// help and error output of the command line.
import assert from 'node:assert/strict';
import { mkdtemp, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { SELFTEST_SOURCE } from '../src/selftest/selftest.js';
import { runCli } from './support/cli.js';
import { buildElf, patternBytes } from './support/elf-fixture.js';

describe('bundle and link commands', () => {
  let directory: string;
  let vmlinux: string;
  let firstSegment: { fileOffset: number; size: number };

  before(async () => {
    directory = await mkdtemp(join(tmpdir(), 'krunfw-cli-'));
    vmlinux = join(directory, 'vmlinux');
    await writeFile(vmlinux, buildElf({ segments: [{ paddr: 0x1000000n, data: patternBytes(5000, 1) }, { paddr: 0x1010000n, data: patternBytes(300, 2), memsz: 4096n }] }));
  });

  after(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  test('bundle writes kernel.c and reports addresses', async () => {
    const result = await runCli(['bundle', vmlinux, '-o', join(directory, 'kernel.c'), '--json', '--kernel-version', '6.1.0-test']);
    assert.equal(result.exitCode, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.format, 'elf');
    assert.equal(report.loadAddress, '0x1000000');
    assert.equal(report.size % 65536, 0);
    assert.equal(report.firstSegment.size, 5000);
    firstSegment = report.firstSegment;
  });

  test('link makes a loadable library', async () => {
    const result = await runCli(['link', join(directory, 'kernel.c'), '--output-dir', directory, '--json']);
    assert.equal(result.exitCode, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.soname, 'libkrunfw.so.5');
    assert.equal(await readlink(join(directory, 'libkrunfw.so.5')), 'libkrunfw.so.5.0.0');
    const program = join(directory, 'selftest');
    await execa('cc', ['-o', program, SELFTEST_SOURCE, '-ldl']);
    const check = await execa(program, [
      `library=${report.library}`, 'abi=5', 'load=0x1000000', 'entry=0x1000000', `artifact=${vmlinux}`, `offset=${firstSegment.fileOffset}`, `length=${firstSegment.size}`,
    ], { reject: false });
    assert.equal(check.exitCode, 0, check.stdout);
  });

  test('self-test fails on a wrong entry address', async () => {
    const program = join(directory, 'selftest');
    const check = await execa(program, [
      `library=${join(directory, 'libkrunfw.so.5')}`, 'abi=5', 'load=0x1000000', 'entry=0x2000000', `artifact=${vmlinux}`, `offset=${firstSegment.fileOffset}`, `length=${firstSegment.size}`,
    ], { reject: false });
    assert.equal(check.exitCode, 1);
    assert.match(check.stdout, /FAIL entry address/);
  });

  test('bundle of a non-kernel file fails without a stack trace', async () => {
    const text = join(directory, 'notes.txt');
    await writeFile(text, 'not a kernel');
    const result = await runCli(['bundle', text, '--format', 'elf', '-o', join(directory, 'bad.c')]);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /^error: /m);
    assert.doesNotMatch(result.stderr, /at .*\.js:\d+/);
  });
});

describe('command line', () => {
  test('build --help lists every option', async () => {
    const result = await runCli(['build', '--help']);
    assert.equal(result.exitCode, 0);
    for (const option of ['--arch', '--work-dir', '--kernel-version', '--kernel-tarball', '--kernel-sha256', '--mirror', '--patches', '--config', '--allow-dropped', '--max-cpus', '--jobs', '--json', '--verbose', '--vm', '--builder', '--keep-vm', '--variant', '--qboot', '--initrd']) {
      assert.match(result.stdout, new RegExp(`${option}\\b`), `missing ${option}`);
    }
  });

  test('json failure prints an error document', async () => {
    const result = await runCli(['build', '--print-plan', '--json', '--max-cpus', '1']);
    assert.equal(result.exitCode, 1);
    const document = JSON.parse(result.stdout);
    assert.equal(document.ok, false);
    assert.match(document.error.message, /Invalid --max-cpus value: 1/);
    assert.match(result.stderr, /^error: Invalid --max-cpus value: 1/m);
  });

  test('unknown command fails with help', async () => {
    const result = await runCli(['frobnicate']);
    assert.notEqual(result.exitCode, 0);
    assert.match(result.stderr, /Unknown argument|Did you mean/);
  });

  test('print-plan shows the plan without building', async () => {
    const workDirectory = await mkdtemp(join(tmpdir(), 'krunfw-plan-'));
    const result = await runCli(['build', '--print-plan', '--json', '--arch', 'aarch64', '--work-dir', workDirectory, '--kernel-version', '6.12.1']);
    assert.equal(result.exitCode, 0, result.stderr);
    const plan = JSON.parse(result.stdout);
    assert.equal(plan.guestArch, 'aarch64');
    assert.equal(plan.kernel.crossCompile, 'aarch64-linux-gnu-');
    assert.equal(plan.kernelSource.url, 'https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.1.tar.xz');
    await rm(workDirectory, { recursive: true, force: true });
  });
});
