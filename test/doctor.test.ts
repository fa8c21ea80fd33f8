// SPDX-License-Identifier: LGPL-2.1-only
//
// `krunfw-mac doctor`: the builder VM checks through the krunvm test double,
// each failing check with its fix, and the native checks of host tools.
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import which from 'which';
import { findInstalledLibkrunfw } from '../src/doctor.js';
import { detectHost } from '../src/host.js';
import { CLI, runCli } from './support/cli.js';
import { type VmHarness, makeVmHarness } from './support/vm-harness.js';

interface Check {
  name: string;
  ok: boolean;
  detail: string;
  hint?: string;
}

interface DoctorJson {
  ok: boolean;
  checks: Check[];
}

const VM_CHECKS = ['host', 'krunvm', 'krunvm version', 'krunvm storage volume', 'installed libkrunfw', 'host C compiler', 'free disk', 'memory'];

let harness: VmHarness;

async function doctor(args: string[], env: NodeJS.ProcessEnv): Promise<{ exitCode: number; json: DoctorJson; stderr: string }> {
  const result = await runCli(['doctor', '--json', ...args], { env });
  return { exitCode: result.exitCode, json: JSON.parse(result.stdout) as DoctorJson, stderr: result.stderr };
}

function findCheck(json: DoctorJson, name: string): Check {
  const found = json.checks.find((check) => check.name === name);
  assert.ok(found, `no "${name}" check in ${json.checks.map((check) => check.name).join(', ')}`);
  return found;
}

/** Asserts that exactly the named check failed. */
function assertOnlyFailure(json: DoctorJson, name: string): Check {
  assert.equal(json.ok, false);
  assert.deepEqual(json.checks.filter((check) => !check.ok).map((check) => check.name), [name]);
  return findCheck(json, name);
}

before(async () => {
  harness = await makeVmHarness();
});

after(async () => {
  await harness?.remove();
});

describe('doctor --vm', () => {
  test('all checks pass with the double', async () => {
    const { exitCode, json } = await doctor(['--vm', '--work-dir', harness.root], harness.env);
    assert.equal(exitCode, 0, JSON.stringify(json, null, 2));
    assert.equal(json.ok, true);
    assert.deepEqual(json.checks.map((check) => check.name), VM_CHECKS);
    assert.deepEqual(json.checks.filter((check) => !check.ok), []);
    assert.equal(findCheck(json, 'krunvm').detail, join(harness.bin.binDirectory, 'krunvm'));
    assert.equal(findCheck(json, 'krunvm version').detail, '0.2.6');
    assert.equal(findCheck(json, 'installed libkrunfw').detail, join(harness.libraryDirectory, 'libkrunfw.so.5'));
  });

  test('no krunvm on PATH', async () => {
    const path = process.env.PATH ?? '';
    assert.equal(await which('krunvm', { nothrow: true, path }), null, 'precondition: no real krunvm on PATH');
    const { exitCode, json } = await doctor(['--vm', '--work-dir', harness.root], { ...harness.env, PATH: path });
    assert.equal(exitCode, 1);
    const check = assertOnlyFailure(json, 'krunvm');
    assert.equal(check.detail, 'krunvm was not found on PATH');
    assert.equal(check.hint, 'Install it with: brew tap libkrun/krun && brew install krunvm');
    assert.ok(!json.checks.some((item) => item.name === 'krunvm version'), 'no version check without krunvm');
  });

  test('krunvm 0.2.5 too old', async () => {
    const { exitCode, json } = await doctor(['--vm', '--work-dir', harness.root], { ...harness.env, KRUNVM_DOUBLE_VERSION: '0.2.5' });
    assert.equal(exitCode, 1);
    const check = assertOnlyFailure(json, 'krunvm version');
    assert.equal(check.detail, 'krunvm 0.2.5 is too old: mapping the work directory into the VM needs 0.2.6 or later');
    assert.equal(check.hint, 'Run: brew upgrade krunvm');
  });

  test('krunvm 0.3.0 accepted', async () => {
    const { json } = await doctor(['--vm', '--work-dir', harness.root], { ...harness.env, KRUNVM_DOUBLE_VERSION: '0.3.0' });
    assert.equal(findCheck(json, 'krunvm version').ok, true);
  });

  test('no storage volume, stdin left open', async () => {
    const noStorage = await makeVmHarness({ storageVolume: false });
    try {
      // An open stdin pipe: krunvm's prompt would wait on it unless doctor closes krunvm's stdin.
      const result = await execa(process.execPath, [CLI, 'doctor', '--vm', '--json', '--work-dir', noStorage.root], {
        env: noStorage.env,
        stdin: 'pipe',
        reject: false,
        timeout: 5 * 60 * 1000,
      });
      assert.equal(result.timedOut, false, 'doctor waited on krunvm');
      assert.equal(result.exitCode, 1);
      const check = assertOnlyFailure(JSON.parse(String(result.stdout)) as DoctorJson, 'krunvm storage volume');
      assert.equal(check.detail, 'krunvm has no storage volume configured and would stop to ask for one');
      assert.match(check.hint ?? '', /diskutil apfs addVolume disk3 "Case-sensitive APFS" krunvm/);
    } finally {
      await noStorage.remove();
    }
  });

  test('no installed libkrunfw', async (context) => {
    if ((await findInstalledLibkrunfw(detectHost(), {})) !== undefined) {
      context.skip('this host has a libkrunfw.so.5 installed in a system directory');
      return;
    }
    const empty = join(harness.root, 'empty-lib');
    await mkdir(empty, { recursive: true });
    const { exitCode, json } = await doctor(['--vm', '--work-dir', harness.root], { ...harness.env, LD_LIBRARY_PATH: empty });
    assert.equal(exitCode, 1);
    const check = assertOnlyFailure(json, 'installed libkrunfw');
    assert.match(check.detail, new RegExp(`^no libkrunfw\\.so\\.5 in ${empty}, `));
    assert.match(check.detail, /the builder VM itself needs one to boot$/);
    assert.match(check.hint ?? '', /build one natively first: krunfw-mac build, then krunfw-mac install/);
  });

  test('non-ELF libkrunfw.so.5 not accepted', async (context) => {
    if ((await findInstalledLibkrunfw(detectHost(), {})) !== undefined) {
      context.skip('this host has a libkrunfw.so.5 installed in a system directory');
      return;
    }
    const fake = join(harness.root, 'text-lib');
    await mkdir(fake, { recursive: true });
    await writeFile(join(fake, 'libkrunfw.so.5'), 'not a library\n');
    const { json } = await doctor(['--vm', '--work-dir', harness.root], { ...harness.env, LD_LIBRARY_PATH: fake });
    assert.equal(findCheck(json, 'installed libkrunfw').ok, false);
  });

  test('--mem above host memory', async () => {
    const host = detectHost();
    const { exitCode, json } = await doctor(['--vm', '--work-dir', harness.root, '--mem', String(host.memoryMiB)], harness.env);
    assert.equal(exitCode, 1);
    const check = assertOnlyFailure(json, 'memory');
    assert.equal(check.detail, `${host.memoryMiB} MiB total is not enough for a ${host.memoryMiB} MiB VM and the host`);
    assert.equal(check.hint, `Pass a smaller --mem, at most ${Math.max(512, host.memoryMiB - 1024)}.`);
  });

  test('work directory not created yet', async () => {
    const future = join(harness.root, 'not', 'yet');
    const { exitCode, json } = await doctor(['--vm', '--work-dir', future], harness.env);
    assert.equal(exitCode, 0, JSON.stringify(json, null, 2));
    assert.match(findCheck(json, 'free disk').detail, new RegExp(` MiB free in ${harness.root} \\(for ${future}, not created yet\\)$`));
  });

  test('work directory under a file', async () => {
    const file = join(harness.root, 'a-file');
    await writeFile(file, '');
    const { exitCode, json } = await doctor(['--vm', '--work-dir', join(file, 'work')], harness.env);
    assert.equal(exitCode, 1);
    const check = assertOnlyFailure(json, 'free disk');
    assert.match(check.detail, /a-file is not a directory/);
  });

  test('text output marks failures with their fix', async () => {
    const result = await runCli(['doctor', '--vm', '--work-dir', harness.root], { env: { ...harness.env, KRUNVM_DOUBLE_VERSION: '0.2.4' } });
    assert.equal(result.exitCode, 1);
    assert.match(result.stdout, /^ok {3}krunvm: /m);
    assert.match(result.stdout, /^FAIL krunvm version: krunvm 0\.2\.4 is too old: .*\n {5}fix: Run: brew upgrade krunvm$/m);
  });
});

describe('doctor natively', () => {
  test('lists host tools', async () => {
    const { json } = await doctor([], { ...process.env, NO_COLOR: '1' });
    const host = findCheck(json, 'host');
    assert.equal(host.ok, true);
    assert.match(host.detail, /builds natively$/);
    const names = json.checks.map((check) => check.name);
    for (const tool of ['make', 'gcc', 'flex', 'bison', 'bc', 'perl', 'tar', 'xz', 'patch', 'libelf.h', 'openssl/opensslv.h']) {
      assert.ok(names.includes(tool), `doctor checks ${tool}`);
    }
    assert.ok(!names.includes('krunvm'), 'a native build does not need krunvm');
  });

  test('missing tool reported with its package', async () => {
    const { exitCode, json } = await doctor([], { ...process.env, CC: 'no-such-compiler-krunfw', NO_COLOR: '1' });
    assert.equal(exitCode, 1);
    const check = findCheck(json, 'no-such-compiler-krunfw');
    assert.equal(check.ok, false);
    assert.equal(check.detail, 'missing');
    assert.match(check.hint ?? '', /apt-get install/);
  });
});
