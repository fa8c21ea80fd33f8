// SPDX-License-Identifier: LGPL-2.1-only
//
// End to end on x86_64: a real kernel build from Debian's 6.1 source with the
// shipped fragments and patch series, the linked library, and a QEMU boot of
// the vmlinux it carries. Later tests reuse the same tree incrementally.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { execa } from 'execa';
import { bootKernel, makeRootDisk } from './support/boot.js';
import { CLI, DEBIAN_KERNEL_TARBALL, REPOSITORY, TEST_CACHE, runCli } from './support/cli.js';
import { type BuildJson, sharedBuild, sharedWorkDirectory } from './support/shared-build.js';

const MARKER = 'KRUNFW-E2E-INIT-RAN';

describe('x86_64 build from Debian 6.1 source', () => {
  let build: BuildJson;

  before(async () => {
    build = await sharedBuild('x86_64');
  });

  test('library has soname, symlinks and no symbols', async () => {
    assert.match(build.library.path, /\/libkrunfw\.so\.5\.\d+\.\d+$/);
    const dynamic = await execa('readelf', ['-d', build.library.path]);
    assert.match(dynamic.stdout, /Library soname: \[libkrunfw\.so\.5\]/);
    const [soLink, devLink] = build.library.links;
    assert.equal(await readlink(soLink!), build.library.path.split('/').pop());
    assert.equal(await readlink(devLink!), 'libkrunfw.so.5');
    const sections = await execa('readelf', ['-S', build.library.path]);
    assert.doesNotMatch(sections.stdout, /\.symtab/);
  });

  test('provenance names kernel, patches, config and hashes', async () => {
    const provenance = JSON.parse(await readFile(build.provenance, 'utf8'));
    assert.equal(provenance.kernel.version, build.kernelVersion);
    assert.match(build.kernelVersion, /^6\.1\.\d+/);
    assert.equal(provenance.kernel.tarball.sha256, build.tarball.sha256);
    assert.equal(provenance.arch, 'x86_64');
    assert.equal(provenance.abi, 5);
    assert.equal(provenance.bundle.sha256, build.kernelSource.bundleSha256);
    assert.equal(provenance.library.sha256, build.library.sha256);
    assert.equal(provenance.config.sha256, build.kernelConfig.sha256);
    assert.ok(provenance.patches.length >= 1, 'the shipped series has at least one patch');
    for (const patch of provenance.patches) assert.match(patch.sha256, /^[0-9a-f]{64}$/);
    assert.equal(provenance.tool.name, 'krunfw-mac');
  });

  test('config keeps every fragment value and NR_CPUS', async () => {
    const config = await readFile(build.kernelConfig.path, 'utf8');
    assert.match(config, /^CONFIG_NR_CPUS=16$/m);
    assert.match(config, /^CONFIG_VIRTIO_MMIO=y$/m);
    assert.match(config, /^CONFIG_PVH=y$/m);
    assert.match(config, /^# CONFIG_MODULES is not set$/m);
  });

  test('vmlinux boots under QEMU and powers off after init', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'krunfw-e2e-boot-'));
    try {
      const disk = await makeRootDisk({ arch: 'x86_64', directory, marker: MARKER });
      const boot = await bootKernel({ arch: 'x86_64', kernel: build.kernelArtifact.path, rootDisk: disk, timeoutMs: 120_000 });
      assert.equal(boot.timedOut, false, `guest did not stop by itself:\n${boot.output.slice(-3000)}`);
      assert.match(boot.output, new RegExp(`^${MARKER}`, 'm'), boot.output.slice(-3000));
      assert.doesNotMatch(boot.output, /Kernel panic/, boot.output.slice(-3000));
      // Printed by the shipped power-off patch instead of the panic.
      assert.match(boot.output, /init exited with exitcode=0x00000000/);
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });

  test('second run is a no-op', async () => {
    const again = await sharedBuild('x86_64');
    assert.deepEqual(again.stages, { tree: 'skipped', config: 'skipped', kernel: 'skipped', bundle: 'skipped', link: 'skipped' });
    assert.equal(again.library.sha256, build.library.sha256);
  });

  test('changed fragment reconfigures without extracting', async () => {
    const fragment = join(await mkdtemp(join(tmpdir(), 'krunfw-e2e-fragment-')), 'hostname.config');
    await writeFile(fragment, 'CONFIG_DEFAULT_HOSTNAME="krunfw-e2e"\n');
    const changed = await sharedBuild('x86_64', ['--config', fragment]);
    assert.equal(changed.stages.tree, 'skipped');
    assert.equal(changed.stages.config, 'ran');
    assert.equal(changed.stages.kernel, 'ran');
    assert.match(await readFile(changed.kernelConfig.path, 'utf8'), /^CONFIG_DEFAULT_HOSTNAME="krunfw-e2e"$/m);
    assert.notEqual(changed.kernelArtifact.sha256, build.kernelArtifact.sha256);
  });

  test('dropped option fails the audit', async () => {
    const fragment = join(await mkdtemp(join(tmpdir(), 'krunfw-e2e-fragment-')), 'dropped.config');
    await writeFile(fragment, 'CONFIG_KRUNFW_NO_SUCH_OPTION=y\n# unmet dependency: the x86_64 fragments have no PCI\nCONFIG_VIRTIO_PCI=y\n');
    const result = await runCli([
      'build', '--arch', 'x86_64', '--kernel-tarball', DEBIAN_KERNEL_TARBALL, '--work-dir', sharedWorkDirectory('x86_64'), '--config', fragment,
    ]);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /dropped 2 requested config option/);
    assert.match(result.stderr, /CONFIG_KRUNFW_NO_SUCH_OPTION: requested y, got n/);
    assert.match(result.stderr, /CONFIG_VIRTIO_PCI: requested y, got n/);
    assert.match(result.stderr, /--allow-dropped/);
  });

  test('Ctrl-C during make leaves no finished-looking state', async () => {
    const fragment = join(await mkdtemp(join(tmpdir(), 'krunfw-e2e-fragment-')), 'hostname.config');
    await writeFile(fragment, 'CONFIG_DEFAULT_HOSTNAME="krunfw-interrupted"\n');
    const workDirectory = sharedWorkDirectory('x86_64');
    const stamps = join(workDirectory, '.krunfw', 'x86_64-generic', 'stamps');
    const child = execa(process.execPath, [
      CLI, 'build', '--arch', 'x86_64', '--kernel-tarball', DEBIAN_KERNEL_TARBALL, '--work-dir', workDirectory, '--config', fragment,
    ], { reject: false, stdin: 'ignore', env: { NO_COLOR: '1' } });
    // Wait until make is running: the kernel stage's stamp is removed when it starts.
    const deadline = Date.now() + 120_000;
    while (existsSync(join(stamps, 'kernel.json')) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 200));
    await new Promise((resolve) => setTimeout(resolve, 3000));
    child.kill('SIGINT');
    const result = await child;
    assert.equal(result.exitCode, 130, String(result.stderr));
    assert.equal(existsSync(join(stamps, 'kernel.json')), false, 'an interrupted make must not leave a kernel stamp');
    assert.equal(existsSync(join(stamps, 'bundle.json')), true, 'earlier outputs stay');
    const files = await readdir(join(workDirectory, 'out', 'x86_64'));
    assert.deepEqual(files.filter((name) => name.includes('.tmp-')), []);
  });

  test('shipped configuration builds again afterwards', async () => {
    const restored = await sharedBuild('x86_64');
    assert.equal(restored.stages.tree, 'skipped');
    assert.equal(restored.stages.config, 'ran');
    assert.equal(restored.kernelConfig.sha256, build.kernelConfig.sha256);
  });
});

describe('patch series failures', () => {
  test('failing patch is named and its tree never reused', async () => {
    const workDirectory = join(TEST_CACHE, 'e2e', 'bad-patch');
    await rm(workDirectory, { recursive: true, force: true });
    const series = join(workDirectory, 'series');
    await mkdir(series, { recursive: true });
    const shipped = join(REPOSITORY, 'patches');
    for (const name of await readdir(shipped)) {
      if (name.endsWith('.patch')) await copyFile(join(shipped, name), join(series, name));
    }
    await writeFile(
      join(series, '9999-does-not-apply.patch'),
      [
        '--- a/Makefile',
        '+++ b/Makefile',
        '@@ -1,3 +1,3 @@',
        ' # no kernel Makefile starts with these lines',
        '-VERSION = 99',
        '+VERSION = 100',
        ' PATCHLEVEL = 99',
        '',
      ].join('\n'),
    );
    const args = ['build', '--arch', 'x86_64', '--kernel-tarball', DEBIAN_KERNEL_TARBALL, '--work-dir', workDirectory, '--patches', series];
    const first = await runCli(args);
    assert.equal(first.exitCode, 1);
    assert.match(first.stderr, /Patch 9999-does-not-apply\.patch does not apply/);
    assert.match(first.stderr, /Rejected hunks/);
    assert.match(first.stderr, /\+VERSION = 100/);
    assert.equal(existsSync(join(workDirectory, '.krunfw', 'x86_64-generic', 'tree')), false);

    const second = await runCli(args);
    assert.equal(second.exitCode, 1);
    assert.match(second.stderr, /Patch 9999-does-not-apply\.patch does not apply/);
    await rm(workDirectory, { recursive: true, force: true });
  });
});
