// SPDX-License-Identifier: LGPL-2.1-only
//
// Failures of the builder VM path, through the krunvm test double. Most
// builds here use a builder whose `make` is a stand-in and a fake kernel
// tarball, so each one takes seconds. The code they exercise (VM lifecycle,
// guest command results, cleanup) is the real one.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import which from 'which';
import { sha256 } from '../src/hash.js';
import { vmNameFor } from '../src/vm.js';
import { CLI, runCli } from './support/cli.js';
import { sendBytes, startHttpServer } from './support/http-server.js';
import { findMountsUnder, readKrunvmCalls } from './support/krunvm-double.js';
import {
  DEBIAN_IMAGE,
  type VmHarness,
  callsSince,
  fakeBuildArguments,
  guestArgv,
  listVmNames,
  makeVmHarness,
  processesRootedUnder,
  writeFakeKernelTarball,
  writeFakeMakeBuilder,
} from './support/vm-harness.js';

/** Generous: builds share two cores with other work. */
const BUILD_TIMEOUT_MS = 30 * 60 * 1000;

let harness: VmHarness;
let tarball: string;
let directoryCount = 0;

/** Creates a fresh work directory under the harness root. */
async function newWorkDirectory(): Promise<string> {
  const directory = join(harness.root, `work-${++directoryCount}`);
  await mkdir(directory);
  return directory;
}

/** Builder files live outside the work directories, so discovery does not also find them there. */
async function newFakeBuilder(options: Parameters<typeof writeFakeMakeBuilder>[1]): Promise<string> {
  return writeFakeMakeBuilder(join(harness.root, 'builder-files', `builder-${++directoryCount}.json`), options);
}

function output(result: { stdout: string; stderr: string }): string {
  return `${result.stdout}\n${result.stderr}`;
}

async function libraryFiles(workDirectory: string): Promise<string[]> {
  const directory = join(workDirectory, 'out', 'x86_64');
  if (!existsSync(directory)) return [];
  return (await readdir(directory)).filter((name) => name.startsWith('libkrunfw'));
}

before(async () => {
  harness = await makeVmHarness();
  tarball = await writeFakeKernelTarball(harness.root);
});

after(async () => {
  await harness?.remove();
});

describe('builder VM faults', () => {
  test('leftover VM is replaced with a message', async () => {
    const work = await newWorkDirectory();
    const name = vmNameFor(work);
    await execa('krunvm', ['create', '--name', name, DEBIAN_IMAGE], { env: harness.env, stdin: 'ignore' });
    const builder = await newFakeBuilder({ target: 'copy' });
    const skip = (await readKrunvmCalls(harness.bin.stateDirectory)).length;

    const result = await runCli(fakeBuildArguments(work, builder, tarball), { env: harness.env, timeoutMs: BUILD_TIMEOUT_MS });

    assert.equal(result.exitCode, 0, output(result));
    assert.match(output(result), new RegExp(`Replacing VM ${name}, left behind by an earlier run`));
    const calls = await callsSince(harness.bin, skip);
    const deleteIndex = calls.findIndex((call) => call[0] === 'delete' && call[1] === name);
    const createIndex = calls.findIndex((call) => call[0] === 'create');
    assert.ok(deleteIndex >= 0, 'the leftover VM was deleted');
    assert.ok(deleteIndex < createIndex, 'the leftover VM was deleted before the new one was created');
    assert.deepEqual(await listVmNames(harness.env), []);
    assert.deepEqual(await libraryFiles(work), ['libkrunfw.so', 'libkrunfw.so.5', 'libkrunfw.so.5.0.0']);
  });

  test('undeletable leftover VM explained', async () => {
    const work = await newWorkDirectory();
    const name = vmNameFor(work);
    await execa('krunvm', ['create', '--name', name, DEBIAN_IMAGE], { env: harness.env, stdin: 'ignore' });
    const builder = await newFakeBuilder({ target: 'copy' });
    const env = { ...harness.env, KRUNVM_DOUBLE_DELETE_CONTAINER_GONE: name };

    const result = await runCli(fakeBuildArguments(work, builder, tarball), { env, timeoutMs: BUILD_TIMEOUT_MS });

    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, new RegExp(`error: krunvm cannot delete VM ${name}: its buildah container is gone`));
    assert.match(result.stderr, /hint: .*build in another work directory/);
    await execa('krunvm', ['delete', name], { env: harness.env, stdin: 'ignore' });
  });

  test('create failure names krunvm create and its output', async () => {
    const work = await newWorkDirectory();
    const builder = await newFakeBuilder({ target: 'copy' });
    const env = { ...harness.env, KRUNVM_DOUBLE_FAIL_CREATE: 'Error creating a buildah container: no space left on device' };

    const result = await runCli(fakeBuildArguments(work, builder, tarball), { env, timeoutMs: BUILD_TIMEOUT_MS });

    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /error: krunvm create failed with exit status 255: krunvm create --name krunfw-[0-9a-f]{12} /);
    assert.match(result.stderr, /no space left on device/);
    assert.match(result.stderr, /hint: Full output: .*krunvm\.log/);
    assert.deepEqual(await listVmNames(harness.env), []);
  });

  test('provision failure names command, deletes VM', async () => {
    const work = await newWorkDirectory();
    const builder = await newFakeBuilder({ target: 'copy', provision: [['/bin/false']] });
    const skip = (await readKrunvmCalls(harness.bin.stateDirectory)).length;

    const result = await runCli(fakeBuildArguments(work, builder, tarball), { env: harness.env, timeoutMs: BUILD_TIMEOUT_MS });

    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /error: Command failed in VM krunfw-[0-9a-f]{12} \(exited with status 1\): \/bin\/false/);
    const calls = await callsSince(harness.bin, skip);
    assert.ok(calls.some((call) => call[0] === 'delete' && call[1] === vmNameFor(work)), 'krunvm delete was called');
    assert.deepEqual(await listVmNames(harness.env), []);
  });

  test('failed make under exit-zero krunvm fails', async () => {
    const work = await newWorkDirectory();
    const builder = await newFakeBuilder({ target: 'fail' });
    const env = { ...harness.env, KRUNVM_DOUBLE_EXIT_ZERO: '1' };

    const result = await runCli(fakeBuildArguments(work, builder, tarball), { env, timeoutMs: BUILD_TIMEOUT_MS });

    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /error: Command failed in VM krunfw-[0-9a-f]{12} \(exited with status 2\): make -j2 .*vmlinux/);
    assert.match(result.stderr, /fake make: vmlinux failed/);
    assert.doesNotMatch(output(result), /Built /);
    assert.deepEqual(await libraryFiles(work), []);
    assert.deepEqual(await listVmNames(harness.env), []);
  });

  test('make without artifact under exit-zero krunvm fails', async () => {
    const work = await newWorkDirectory();
    const builder = await newFakeBuilder({ target: 'missing' });
    const env = { ...harness.env, KRUNVM_DOUBLE_EXIT_ZERO: '1' };

    const result = await runCli(fakeBuildArguments(work, builder, tarball), { env, timeoutMs: BUILD_TIMEOUT_MS });

    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /error: make finished but \/var\/tmp\/krunfw-build\/x86_64-generic\/tree\/vmlinux was not produced/);
    assert.doesNotMatch(output(result), /Built /);
    assert.deepEqual(await libraryFiles(work), []);
    assert.deepEqual(await listVmNames(harness.env), []);
  });

  test('guest without exit status fails', async () => {
    const work = await newWorkDirectory();
    // Killing the status-printing shell leaves no status line, as when a VM dies mid-command.
    const builder = await newFakeBuilder({ target: 'copy', provision: [['/bin/sh', '-c', 'kill -KILL "$PPID"']] });
    const env = { ...harness.env, KRUNVM_DOUBLE_EXIT_ZERO: '1' };

    const result = await runCli(fakeBuildArguments(work, builder, tarball), { env, timeoutMs: BUILD_TIMEOUT_MS });

    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /error: The guest command reported no exit status: \/bin\/sh -c .* in VM krunfw-[0-9a-f]{12}/);
    assert.deepEqual(await listVmNames(harness.env), []);
  });

  test('Ctrl-C during make cleans up, exits 130', async () => {
    const work = await newWorkDirectory();
    const builder = await newFakeBuilder({ target: 'hang' });
    const marker = join(work, 'fake-make-started');
    const child = execa(process.execPath, [CLI, ...fakeBuildArguments(work, builder, tarball)], {
      env: harness.env,
      stdin: 'ignore',
      reject: false,
      timeout: BUILD_TIMEOUT_MS,
    });
    let exited = false;
    void child.finally(() => (exited = true));
    while (!existsSync(marker) && !exited) await new Promise((resolve) => setTimeout(resolve, 200));
    assert.ok(existsSync(marker), 'the stand-in make started before the build ended');
    assert.notDeepEqual(await processesRootedUnder(harness.bin.stateDirectory), [], 'the guest make is running');

    child.kill('SIGINT');
    const result = await child;

    assert.equal(result.exitCode, 130, String(result.stderr));
    assert.match(String(result.stderr), /Interrupted \(SIGINT\)/);
    assert.deepEqual(await listVmNames(harness.env), []);
    assert.deepEqual(await libraryFiles(work), []);
    assert.deepEqual(await findMountsUnder(harness.bin.stateDirectory), []);
    assert.deepEqual(await processesRootedUnder(harness.bin.stateDirectory), [], 'no guest process is left');
  });

  test('invalid builder plugin names file, field, expectation', async () => {
    const work = await newWorkDirectory();
    const plugin = join(work, 'builders', 'broken.json');
    await mkdir(join(work, 'builders'));
    await writeFile(plugin, JSON.stringify({ name: 'broken', image: 'debian:bookworm', provision: [] }));

    const result = await runCli(['build', '--vm', '--builder', 'debian', '--work-dir', work], { env: harness.env });

    assert.equal(result.exitCode, 1);
    assert.ok(result.stderr.includes(`Invalid builder definition ${plugin}`), result.stderr);
    assert.match(result.stderr, /field "image" must be a fully qualified image reference with a registry and a tag or digest/);
  });

  test('krunvm missing from PATH', async () => {
    const path = process.env.PATH ?? '';
    assert.equal(await which('krunvm', { nothrow: true, path }), null, 'precondition: no real krunvm on PATH');
    const work = await newWorkDirectory();

    const result = await runCli(['build', '--vm', '--builder', 'debian', '--work-dir', work], { env: { ...harness.env, PATH: path } });

    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /krunvm: krunvm was not found on PATH/);
    assert.match(result.stderr, /fix: Install it with: brew tap libkrun\/krun && brew install krunvm/);
  });

  test('krunvm 0.2.5 is too old', async () => {
    const work = await newWorkDirectory();
    const env = { ...harness.env, KRUNVM_DOUBLE_VERSION: '0.2.5' };

    const result = await runCli(['build', '--vm', '--builder', 'debian', '--work-dir', work], { env });

    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /krunvm 0\.2\.5 is too old: mapping the work directory into the VM needs 0\.2\.6 or later/);
    assert.match(result.stderr, /fix: Run: brew upgrade krunvm/);
    assert.equal((await readKrunvmCalls(harness.bin.stateDirectory)).filter((call) => call[0] === 'create' && call.includes(vmNameFor(work))).length, 0);
  });

  test('missing storage volume fails fast with open stdin', async () => {
    const noStorage = await makeVmHarness({ storageVolume: false });
    try {
      const work = join(noStorage.root, 'work');
      await mkdir(work);
      // stdin stays an open pipe: krunvm would wait on it forever unless krunfw-mac closes krunvm's stdin.
      const child = execa(process.execPath, [CLI, 'build', '--vm', '--builder', 'debian', '--work-dir', work], {
        env: noStorage.env,
        stdin: 'pipe',
        reject: false,
        timeout: 5 * 60 * 1000,
      });
      const result = await child;

      assert.equal(result.timedOut, false, 'krunfw-mac waited on krunvm');
      assert.equal(result.exitCode, 1);
      assert.match(String(result.stderr), /krunvm has no storage volume configured/);
      assert.match(String(result.stderr), /diskutil apfs addVolume disk3 "Case-sensitive APFS" krunvm/);
    } finally {
      await noStorage.remove();
    }
  });

  test('work directory with colon is explained', async () => {
    const work = join(harness.root, 'work:colon');
    await mkdir(work);

    const result = await runCli(['build', '--vm', '--builder', 'debian', '--work-dir', work], { env: harness.env });

    assert.equal(result.exitCode, 1);
    assert.ok(result.stderr.includes(`The work directory's path contains ':', which krunvm cannot map into a VM: ${work}`), result.stderr);
    assert.match(result.stderr, /hint: krunvm splits HOST:GUEST volume arguments on ":"/);
    const calls = await readKrunvmCalls(harness.bin.stateDirectory);
    assert.ok(!calls.some((call) => call.some((argument) => argument.includes('work:colon'))), 'krunvm never saw the path');
  });

  test('unknown builder lists available ones', async () => {
    const result = await runCli(['build', '--vm', '--builder', 'no-such-builder', '--work-dir', harness.root], { env: harness.env });

    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /error: Unknown builder: no-such-builder/);
    assert.match(result.stderr, /hint: Available builders: debian, fedora\./);
  });

  test('BUILDER=debian selects debian', async () => {
    const result = await runCli(['build', '--vm', '--print-plan', '--json', '--work-dir', harness.root], {
      env: { ...harness.env, BUILDER: 'debian' },
    });

    assert.equal(result.exitCode, 0, result.stderr);
    const plan = JSON.parse(result.stdout) as { vm: { builder: { name: string; image: string } } };
    assert.equal(plan.vm.builder.name, 'debian');
    assert.equal(plan.vm.builder.image, DEBIAN_IMAGE);
  });

  test('--builder overrides BUILDER', async () => {
    const result = await runCli(['build', '--vm', '--print-plan', '--json', '--builder', 'fedora', '--work-dir', harness.root], {
      env: { ...harness.env, BUILDER: 'debian' },
    });

    assert.equal(result.exitCode, 0, result.stderr);
    const plan = JSON.parse(result.stdout) as { vm: { builder: { name: string } } };
    assert.equal(plan.vm.builder.name, 'fedora');
  });

  test('kept VM replaced when size changes', async () => {
    const work = await newWorkDirectory();
    const builder = await newFakeBuilder({ target: 'copy' });
    const first = await runCli(fakeBuildArguments(work, builder, tarball, ['--keep-vm']), { env: harness.env, timeoutMs: BUILD_TIMEOUT_MS });
    assert.equal(first.exitCode, 0, output(first));
    const skip = (await readKrunvmCalls(harness.bin.stateDirectory)).length;

    const resized = await runCli(fakeBuildArguments(work, builder, tarball, ['--keep-vm'], { cpus: 2, memoryMiB: 3072 }), {
      env: harness.env,
      timeoutMs: BUILD_TIMEOUT_MS,
    });

    assert.equal(resized.exitCode, 0, output(resized));
    assert.match(output(resized), new RegExp(`VM size changed to 2 CPUs and 3072 MiB; replacing VM ${vmNameFor(work)}`));
    const creates = (await callsSince(harness.bin, skip)).filter((call) => call[0] === 'create');
    assert.equal(creates.length, 1);
    assert.equal(creates[0]![creates[0]!.indexOf('--mem') + 1], '3072');
    await execa('krunvm', ['delete', vmNameFor(work)], { env: harness.env, stdin: 'ignore' });
  });

  test('kept VM replaced without --keep-vm, with a hint', async () => {
    const work = await newWorkDirectory();
    const builder = await newFakeBuilder({ target: 'copy' });
    const kept = await runCli(fakeBuildArguments(work, builder, tarball, ['--keep-vm']), { env: harness.env, timeoutMs: BUILD_TIMEOUT_MS });
    assert.equal(kept.exitCode, 0, output(kept));

    const result = await runCli(fakeBuildArguments(work, builder, tarball), { env: harness.env, timeoutMs: BUILD_TIMEOUT_MS });

    assert.equal(result.exitCode, 0, output(result));
    assert.match(output(result), new RegExp(`Replacing VM ${vmNameFor(work)}, kept by an earlier build \\(pass --keep-vm to reuse it\\)`));
    assert.deepEqual(await listVmNames(harness.env), []);
  });

  test('download build into a new work directory', async () => {
    // Nothing exists at the work directory yet: doctor, the download and krunvm create must all cope.
    const work = join(harness.root, 'not-yet', 'work');
    const builder = await newFakeBuilder({ target: 'copy' });
    const server = await startHttpServer();
    try {
      const bytes = await readFile(tarball);
      server.route('/v6.x/linux-6.1.0.tar.xz', sendBytes(bytes));
      const download = ['--kernel-version', '6.1.0', '--mirror', server.baseUrl, '--kernel-sha256', sha256(bytes)];

      const result = await runCli(fakeBuildArguments(work, builder, download), {
        env: harness.env,
        timeoutMs: BUILD_TIMEOUT_MS,
      });

      assert.equal(result.exitCode, 0, output(result));
      assert.equal(server.requestCount('/v6.x/linux-6.1.0.tar.xz'), 1);
      assert.ok(existsSync(join(work, '.krunfw', 'inputs', 'linux-6.1.0.tar.xz')), 'the downloaded tarball was staged for the guest');
      assert.deepEqual(await libraryFiles(work), ['libkrunfw.so', 'libkrunfw.so.5', 'libkrunfw.so.5.0.0']);
    } finally {
      await server.close();
    }
  });

  test('guest commands get argv without quoting', async () => {
    // The stand-in provision command receives the whole script as one argument; this checks it arrived intact.
    const work = await newWorkDirectory();
    const text = `it's "quoted" $HOME \`no\` ; | & *`;
    const builder = await newFakeBuilder({ target: 'copy', provision: [['/bin/sh', '-c', 'printf "%s" "$1" > /work/argument.txt', 'write', text]] });

    const result = await runCli(fakeBuildArguments(work, builder, tarball), { env: harness.env, timeoutMs: BUILD_TIMEOUT_MS });

    assert.equal(result.exitCode, 0, output(result));
    assert.equal(await readFile(join(work, 'argument.txt'), 'utf8'), text);
    const calls = await readKrunvmCalls(harness.bin.stateDirectory);
    assert.ok(calls.some((call) => guestArgv(call)?.at(-1) === text), 'the argument was passed as one argv element');
  });
});
