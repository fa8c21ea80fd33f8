// SPDX-License-Identifier: LGPL-2.1-only
//
// Building a libkrunfw-style tree (a checkout or fork of libkrunfw) instead
// of this repository's defaults: its Makefile's versions, its full config
// completed with olddefconfig, its patch series, and its git state.
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { parseMakefileVariables } from '../src/source-tree.js';
import { DEBIAN_KERNEL_TARBALL, REPOSITORY, TEST_CACHE, runCli } from './support/cli.js';
import type { BuildJson } from './support/shared-build.js';

const MAKEFILE = ['KERNEL_VERSION = linux-6.1.999', 'KERNEL_REMOTE = https://example.invalid/$(KERNEL_VERSION).tar.xz', '', 'ABI_VERSION = 5', 'FULL_VERSION = 5.7.1', ''].join('\n');

/** Makes a full config with the test kernel's own Kconfig: tinyconfig, which builds quickly, plus a few changes. */
async function makeFullConfig(scratch: string): Promise<string> {
  const tree = join(scratch, 'kernel');
  await mkdir(tree, { recursive: true });
  await execa('tar', ['-x', '-f', DEBIAN_KERNEL_TARBALL, '-C', tree, '--strip-components=1']);
  await execa('make', ['ARCH=x86_64', 'tinyconfig'], { cwd: tree });
  const config = await readFile(join(tree, '.config'), 'utf8');
  await rm(tree, { recursive: true, force: true });
  const changes = [
    'CONFIG_PRINTK=y',
    'CONFIG_TTY=y',
    'CONFIG_BINFMT_ELF=y',
    'CONFIG_SMP=y',
    // Needs PCI, which this config does not have: olddefconfig drops it, and the build warns.
    'CONFIG_VIRTIO_PCI=y',
  ];
  return config + changes.join('\n') + '\n';
}

async function git(directory: string, ...args: string[]): Promise<string> {
  const result = await execa('git', ['-C', directory, '-c', 'user.name=krunfw test', '-c', 'user.email=test@localhost', ...args]);
  return String(result.stdout).trim();
}

describe('libkrunfw-style source tree', () => {
  let scratch: string;
  let tree: string;
  let fullConfig: string;

  before(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'krunfw-source-dir-'));
    fullConfig = await makeFullConfig(scratch);
    tree = join(scratch, 'libkrunfw');
    await mkdir(join(tree, 'patches'), { recursive: true });
    await writeFile(join(tree, 'Makefile'), MAKEFILE);
    await writeFile(join(tree, 'config-libkrunfw_x86_64'), fullConfig);
    await copyFile(
      join(REPOSITORY, 'patches', '0001-exit-power-off-instead-of-panicking-when-init-exits.patch'),
      join(tree, 'patches', '0001-exit-power-off-instead-of-panicking-when-init-exits.patch'),
    );
    await git(tree, 'init', '-q');
    await git(tree, 'add', '.');
    await git(tree, 'commit', '-q', '-m', 'test tree');
  });

  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  describe('built end to end', () => {
    let build: BuildJson;
    let commit: string;

    before(async () => {
      commit = await git(tree, 'rev-parse', 'HEAD');
      const workDirectory = join(TEST_CACHE, 'e2e', 'source-dir');
      await rm(workDirectory, { recursive: true, force: true });
      await mkdir(workDirectory, { recursive: true });
      const result = await runCli(['build', '--json', '--source-dir', tree, '--kernel-tarball', DEBIAN_KERNEL_TARBALL, '--work-dir', workDirectory]);
      assert.equal(result.exitCode, 0, `build failed:\n${result.stderr}`);
      build = JSON.parse(result.stdout) as BuildJson;
    });

    test('library name follows FULL_VERSION', async () => {
      assert.match(build.library.path, /\/libkrunfw\.so\.5\.7\.1$/);
      const dynamic = await execa('readelf', ['-d', build.library.path]);
      assert.match(dynamic.stdout, /Library soname: \[libkrunfw\.so\.5\]/);
    });

    test('olddefconfig changes are warnings', () => {
      const warning = build.warnings.join('\n');
      assert.match(warning, /olddefconfig changed \d+ option\(s\) of .*config-libkrunfw_x86_64/);
      assert.match(warning, /CONFIG_VIRTIO_PCI: requested y, got n/);
    });

    test('provenance records the tree and its commit', async () => {
      const provenance = JSON.parse(await readFile(build.provenance, 'utf8'));
      assert.equal(provenance.source.directory, tree);
      assert.equal(provenance.source.gitCommit, commit);
      assert.equal(provenance.source.gitDirty, false);
      assert.equal(provenance.patches.length, 1);
      assert.match(provenance.patches[0].name, /0001-exit-power-off/);
      assert.equal(provenance.config.fragments[0].name, join(tree, 'config-libkrunfw_x86_64'));
    });

    test('print-plan reports uncommitted changes', async () => {
      await writeFile(join(tree, 'NOTES'), 'local change\n');
      const result = await runCli(['build', '--print-plan', '--source-dir', tree, '--work-dir', scratch]);
      assert.equal(result.exitCode, 0, result.stderr);
      assert.match(result.stdout, /kernel: +6\.1\.999 from https:\/\/cdn\.kernel\.org\/pub\/linux\/kernel\/v6\.x\/linux-6\.1\.999\.tar\.xz/);
      assert.match(result.stdout, new RegExp(`at ${commit} with uncommitted changes`));
      assert.match(result.stdout, /library: +libkrunfw\.so\.5\.7\.1 \(soname libkrunfw\.so\.5/);
      assert.match(result.stdout, /0001-exit-power-off/);
      await rm(join(tree, 'NOTES'));
    });
  });

  describe('malformed trees', () => {
    test('missing config for the arch', async () => {
      const result = await runCli(['build', '--print-plan', '--source-dir', tree, '--arch', 'aarch64']);
      assert.equal(result.exitCode, 1);
      assert.match(result.stderr, /no config-libkrunfw_aarch64, the full kernel config for aarch64/);
    });

    test('missing Makefile variable', async () => {
      const broken = join(scratch, 'no-abi');
      await mkdir(broken, { recursive: true });
      await writeFile(join(broken, 'Makefile'), MAKEFILE.replace('ABI_VERSION = 5\n', ''));
      const result = await runCli(['build', '--print-plan', '--source-dir', broken]);
      assert.equal(result.exitCode, 1);
      assert.match(result.stderr, /does not assign ABI_VERSION/);
    });

    test('Makefile values are read literally', () => {
      const values = parseMakefileVariables('KERNEL_VERSION = linux-$(MAJOR).1\nABI_VERSION = 5\nFULL_VERSION = 5.0.0\n', 'Makefile');
      assert.equal(values.KERNEL_VERSION, 'linux-$(MAJOR).1');
    });

    test('unparsable KERNEL_VERSION names the variable', async () => {
      const broken = join(scratch, 'computed-version');
      await mkdir(broken, { recursive: true });
      await writeFile(join(broken, 'Makefile'), MAKEFILE.replace('linux-6.1.999', 'linux-$(MAJOR).1'));
      await writeFile(join(broken, 'config-libkrunfw_x86_64'), fullConfig);
      const result = await runCli(['build', '--print-plan', '--source-dir', broken]);
      assert.equal(result.exitCode, 1);
      assert.match(result.stderr, /Cannot read KERNEL_VERSION in .*Makefile: "linux-\$\(MAJOR\)\.1"/);
    });

    test('patch that does not apply', async () => {
      const broken = join(scratch, 'bad-patch');
      await mkdir(join(broken, 'patches'), { recursive: true });
      await writeFile(join(broken, 'Makefile'), MAKEFILE);
      await writeFile(join(broken, 'config-libkrunfw_x86_64'), fullConfig);
      await writeFile(join(broken, 'patches', '0001-broken.patch'), '--- a/Makefile\n+++ b/Makefile\n@@ -1,2 +1,2 @@\n-NOT A LINE\n+STILL NOT\n context\n');
      const result = await runCli(['build', '--source-dir', broken, '--kernel-tarball', DEBIAN_KERNEL_TARBALL, '--work-dir', join(scratch, 'bad-patch-work')]);
      assert.equal(result.exitCode, 1);
      assert.match(result.stderr, /Patch 0001-broken\.patch does not apply/);
    });
  });
});
