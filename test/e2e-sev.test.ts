// SPDX-License-Identifier: LGPL-2.1-only
//
// The SEV variant end to end: a real build of Debian's 6.1 source with the
// shipped SEV fragment, a qboot-sized test firmware and a small initrd made
// here, the self-test of all three accessors, and a QEMU boot of the vmlinux
// with that initrd (no SEV hardware is needed to boot it unencrypted).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { checkVariantSupported } from '../src/plan.js';
import { bootKernel, makeInitramfs } from './support/boot.js';
import { DEBIAN_KERNEL_TARBALL, TEST_CACHE, runCli } from './support/cli.js';
import type { BuildJson } from './support/shared-build.js';

const MARKER = 'KRUNFW-E2E-SEV-INITRD-RAN';

/** Returns a stand-in for qboot's bios.bin: the right size, and bytes a test can recognise. */
function testFirmware(size = 65536): Buffer {
  const firmware = Buffer.alloc(size);
  for (let index = 0; index < size; index++) firmware[index] = (index * 7 + 3) & 0xff;
  return firmware;
}

describe('SEV variant', () => {
  let inputs: string;
  let qboot: string;
  let initrd: string;

  before(async () => {
    inputs = await mkdtemp(join(tmpdir(), 'krunfw-sev-inputs-'));
    qboot = join(inputs, 'bios.bin');
    await writeFile(qboot, testFirmware());
    initrd = await makeInitramfs({ arch: 'x86_64', directory: inputs, marker: MARKER });
  });

  after(async () => {
    await rm(inputs, { recursive: true, force: true });
  });

  describe('real build from Debian 6.1 source', () => {
    let build: BuildJson;

    before(async () => {
      const workDirectory = join(TEST_CACHE, 'e2e', 'x86_64-sev');
      await mkdir(workDirectory, { recursive: true });
      const result = await runCli([
        'build', '--json', '--variant', 'sev', '--qboot', qboot, '--initrd', initrd,
        '--kernel-tarball', DEBIAN_KERNEL_TARBALL, '--work-dir', workDirectory,
      ]);
      assert.equal(result.exitCode, 0, `build failed:\n${result.stderr}`);
      build = JSON.parse(result.stdout) as BuildJson;
    });

    test('library is libkrunfw-sev with its soname', async () => {
      assert.match(build.library.path, /\/out\/x86_64-sev\/libkrunfw-sev\.so\.5\.\d+\.\d+$/);
      const dynamic = await execa('readelf', ['-d', build.library.path]);
      assert.match(dynamic.stdout, /Library soname: \[libkrunfw-sev\.so\.5\]/);
      const symbols = await execa('nm', ['-D', '--defined-only', build.library.path]);
      for (const symbol of ['krunfw_get_kernel', 'krunfw_get_version', 'krunfw_get_qboot', 'krunfw_get_initrd']) {
        assert.match(symbols.stdout, new RegExp(`\\b${symbol}\\b`));
      }
    });

    test('provenance records the variant, firmware and initrd', async () => {
      const provenance = JSON.parse(await readFile(build.provenance, 'utf8'));
      assert.equal(provenance.variant, 'sev');
      assert.equal(provenance.library.soname, 'libkrunfw-sev.so.5');
      assert.equal(provenance.sev.qboot.name, 'bios.bin');
      assert.equal(provenance.sev.qboot.source, 'qboot.c');
      assert.equal(provenance.sev.initrd.source, 'initrd.c');
      assert.match(provenance.sev.initrd.sha256, /^[0-9a-f]{64}$/);
    });

    test('config has memory encryption and initrd support', async () => {
      const config = await readFile(build.kernelConfig.path, 'utf8');
      for (const option of ['AMD_MEM_ENCRYPT', 'SEV_GUEST', 'BLK_DEV_INITRD', 'RD_GZIP', 'VIRTIO_MMIO']) {
        assert.match(config, new RegExp(`^CONFIG_${option}=y$`, 'm'));
      }
    });

    test('vmlinux boots with the initrd and runs its init', async () => {
      const boot = await bootKernel({ arch: 'x86_64', kernel: build.kernelArtifact.path, initrd, timeoutMs: 120_000 });
      assert.equal(boot.timedOut, false, `guest did not stop by itself:\n${boot.output.slice(-3000)}`);
      assert.match(boot.output, new RegExp(`^${MARKER}`, 'm'), boot.output.slice(-3000));
      assert.doesNotMatch(boot.output, /Kernel panic/, boot.output.slice(-3000));
    });
  });

  describe('rejected before any work', () => {
    const workDirectory = join(tmpdir(), 'krunfw-sev-rejects');
    const base = () => ['build', '--variant', 'sev', '--kernel-tarball', DEBIAN_KERNEL_TARBALL, '--work-dir', workDirectory];

    test('qboot of the wrong size', async () => {
      const small = join(inputs, 'small-bios.bin');
      await writeFile(small, testFirmware(65535));
      const result = await runCli([...base(), '--qboot', small, '--initrd', initrd]);
      assert.equal(result.exitCode, 1);
      assert.match(result.stderr, /has 65535 bytes; libkrun accepts only exactly 65536/);
    });

    test('initrd that is not gzip', async () => {
      const plain = join(inputs, 'plain.cpio');
      await writeFile(plain, '070701not really');
      const result = await runCli([...base(), '--qboot', qboot, '--initrd', plain]);
      assert.equal(result.exitCode, 1);
      assert.match(result.stderr, /is not gzip-compressed/);
    });

    test('gzip initrd without a cpio archive', async () => {
      const notCpio = join(inputs, 'text.gz');
      await writeFile(notCpio, gzipSync(Buffer.from('hello, not an archive\n')));
      const result = await runCli([...base(), '--qboot', qboot, '--initrd', notCpio]);
      assert.equal(result.exitCode, 1);
      assert.match(result.stderr, /does not contain a cpio archive/);
    });

    test('SEV for an aarch64 guest', async () => {
      const result = await runCli([...base(), '--arch', 'aarch64', '--qboot', qboot, '--initrd', initrd]);
      assert.equal(result.exitCode, 1);
      assert.match(result.stderr, /SEV variant exists only for x86_64 guests on Linux hosts, not for aarch64/);
    });

    test('SEV=1 selects the variant and needs qboot', async () => {
      const result = await runCli(['build', '--kernel-tarball', DEBIAN_KERNEL_TARBALL, '--work-dir', workDirectory], { env: { SEV: '1' } });
      assert.equal(result.exitCode, 1);
      assert.match(result.stderr, /SEV variant needs the qboot firmware/);
    });

    test('SEV on macOS', () => {
      assert.throws(
        () => checkVariantSupported('sev', { os: 'darwin', cpu: 'aarch64', cpus: 8, memoryMiB: 16384 }, undefined),
        /SEV variant exists only for x86_64 guests on Linux hosts, not for aarch64 on darwin/,
      );
    });

    test('no build state was written', () => {
      assert.equal(existsSync(join(workDirectory, '.krunfw', 'x86_64-sev', 'tree')), false);
      assert.equal(existsSync(join(workDirectory, 'out')), false);
    });
  });
});
