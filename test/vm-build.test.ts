// SPDX-License-Identifier: LGPL-2.1-only
//
// The builder VM path end to end, through the krunvm test double with the
// shipped debian builder: apt really provisions the guest and Debian's 6.1
// source is really built in the guest's own file system, with the small test
// config. Two full kernel builds run here (the first, whose VM is deleted,
// and the first --keep-vm one); later builds reuse the kept VM.
//
// The work directory's path has a space and both kinds of quote in it, so
// every build also checks that the path reaches krunvm and the guest intact.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { sha256, sha256File } from '../src/hash.js';
import { vmNameFor } from '../src/vm.js';
import { CLI, DEBIAN_KERNEL_TARBALL, REPOSITORY, runCli } from './support/cli.js';
import { readKrunvmCalls } from './support/krunvm-double.js';
import type { BuildJson } from './support/shared-build.js';
import { type VmHarness, debianBuildArguments, guestArgv, listVmNames, makeVmHarness, readJsonIfPresent } from './support/vm-harness.js';

/** Generous: a kernel build shares two cores with other work. */
const BUILD_TIMEOUT_MS = 30 * 60 * 1000;
const GUEST_TREE = '/var/tmp/krunfw-build/x86_64-generic/tree';
const STAGES = ['tree', 'config', 'kernel', 'bundle', 'link'];

let harness: VmHarness;
let work: string;
let name: string;
let buildArguments: string[];

/** Paths below `directory`, relative to `root`, with a trailing / for directories. */
async function listTree(directory: string, root = directory): Promise<string[]> {
  const paths: string[] = [];
  for (const entry of await readdir(directory, { withFileTypes: true })) {
    const path = join(directory, entry.name);
    if (entry.isDirectory()) paths.push(`${relative(root, path)}/`, ...(await listTree(path, root)));
    else paths.push(relative(root, path));
  }
  return paths.sort();
}

/** Returns the guest working directory of a KrunvmExecutor call: the argument of env -C. */
function guestDirectory(call: readonly string[]): string | undefined {
  const index = call.indexOf('-C', call.indexOf('--'));
  return index < 0 ? undefined : call[index + 1];
}

async function callCount(): Promise<number> {
  return (await readKrunvmCalls(harness.bin.stateDirectory)).length;
}

/** Runs a command in the VM through the double, as a user would check it, and returns its exit code. */
async function inGuest(argv: string[]): Promise<number> {
  const [program, ...args] = argv;
  const result = await execa('krunvm', ['start', name, program!, '--', ...args], { env: harness.env, stdin: 'ignore', reject: false });
  return result.exitCode ?? -1;
}

function combined(result: { stdout: string; stderr: string }): string {
  return `${result.stdout}\n${result.stderr}`;
}

before(async () => {
  harness = await makeVmHarness();
  work = join(harness.root, `work dir "it's"`);
  await mkdir(work);
  name = vmNameFor(work);
  // A private copy of the patch series, outside the work directory: it must be staged for the guest, and edits to
  // the shipped series while these builds run must not make a later build here redo the kernel.
  const patches = join(harness.root, 'patches');
  await mkdir(patches);
  for (const patch of (await readdir(join(REPOSITORY, 'patches'))).filter((file) => file.endsWith('.patch'))) {
    await copyFile(join(REPOSITORY, 'patches', patch), join(patches, patch));
  }
  buildArguments = debianBuildArguments(work, ['--patches', patches]);
});

after(async () => {
  await harness?.remove();
});

describe('VM build, VM deleted afterwards', () => {
  let result: { exitCode: number; stdout: string; stderr: string };
  let calls: string[][];
  const outputs = () => join(work, 'out', 'x86_64');

  before(async () => {
    result = await runCli(buildArguments, { env: harness.env, timeoutMs: BUILD_TIMEOUT_MS });
    calls = await readKrunvmCalls(harness.bin.stateDirectory);
  });

  test('build succeeds', () => {
    assert.equal(result.exitCode, 0, combined(result));
    assert.ok(result.stderr.includes(`Built ${join(outputs(), 'libkrunfw.so.5.0.0')} (Linux 6.1.`), result.stderr);
  });

  test('VM created with the quoted work directory', () => {
    const creates = calls.filter((call) => call[0] === 'create');
    assert.equal(creates.length, 1);
    assert.deepEqual(creates[0]!.slice(0, 3), ['create', '--name', name]);
    const volume = creates[0]!.indexOf('-v');
    assert.equal(creates[0]![volume + 1], `${work}:/work`);
    assert.equal(creates[0]!.at(-1), 'docker.io/library/debian:bookworm-20251117');
  });

  test('guest provisioned with apt-get', () => {
    const provisioning = calls.map(guestArgv).filter((argv) => argv?.[0] === '/usr/bin/apt-get');
    assert.deepEqual(provisioning[0], ['/usr/bin/apt-get', 'update']);
    assert.deepEqual(provisioning[1]?.slice(0, 3), ['/usr/bin/apt-get', 'install', '-y']);
    assert.ok(provisioning[1]?.includes('make'), 'make is installed');
    assert.ok(provisioning[1]?.includes('gcc'), 'gcc is installed');
  });

  test('kernel built in the guest file system', () => {
    const builds = calls.filter((call) => guestArgv(call)?.[0] === 'make' && guestArgv(call)?.at(-1) === 'vmlinux');
    assert.equal(builds.length, 1);
    assert.equal(guestDirectory(builds[0]!), GUEST_TREE);
    const extracts = calls.filter((call) => guestArgv(call)?.[0] === 'tar');
    assert.equal(extracts.length, 1);
    assert.match(guestDirectory(extracts[0]!) ?? '', /^\/var\/tmp\/krunfw-build\/x86_64-generic\/tree\.tmp-\d+$/);
    assert.ok(guestArgv(extracts[0]!)?.includes('/work/.krunfw/inputs/linux-source-6.1.tar.xz'), 'the tarball is read through /work');
  });

  test('work directory holds no kernel tree', async () => {
    const paths = await listTree(work);
    // What a VM build leaves on the host: staged inputs, the VM's log, stamps, logs, the artifact copy and out/.
    const allowed = [
      /^\.krunfw\/$/,
      /^\.krunfw\/inputs\/(linux-source-6\.1\.tar\.xz|[\w.-]+\.patch)?$/,
      /^\.krunfw\/vm\/(krunvm\.log)?$/,
      /^\.krunfw\/vm-x86_64-generic\/(tarball-hash\.json|merged\.config|kernel\.config)?$/,
      /^\.krunfw\/vm-x86_64-generic\/(artifact|logs|stamps|selftest)\/([\w.-]+)?$/,
      /^out\/(x86_64\/([\w.-]+)?)?$/,
    ];
    const unexpected = paths.filter((path) => !allowed.some((pattern) => pattern.test(path)));
    assert.deepEqual(unexpected, []);
    assert.ok(!paths.some((path) => /(^|\/)(Makefile|Kconfig)$/.test(path)), 'no kernel source file on the host');
  });

  test('library linked and self-tested', async () => {
    const library = join(outputs(), 'libkrunfw.so.5.0.0');
    const dynamic = await execa('readelf', ['-d', library]);
    assert.match(dynamic.stdout, /Library soname: \[libkrunfw\.so\.5\]/);
    const symbols = await execa('nm', ['-D', '--defined-only', library]);
    assert.match(symbols.stdout, / T krunfw_get_kernel$/m);
    assert.match(symbols.stdout, / T krunfw_get_version$/m);
    assert.match(combined(result), /Self-test/);
    assert.ok(existsSync(join(work, '.krunfw', 'vm-x86_64-generic', 'selftest', 'krunfw-selftest')), 'the self-test program was built');
  });

  test('VM deleted at the end', async () => {
    assert.deepEqual(calls.at(-1), ['delete', name]);
    assert.deepEqual(await listVmNames(harness.env), []);
    assert.equal(existsSync(join(work, '.krunfw', 'vm', `${name}.json`)), false, 'no VM record left');
  });

  test('provenance written', async () => {
    const provenance = JSON.parse(await readFile(join(outputs(), 'provenance.json'), 'utf8'));
    assert.match(provenance.kernel.version, /^6\.1\.\d+/);
    assert.equal(provenance.kernel.tarball.sha256, await sha256File(DEBIAN_KERNEL_TARBALL));
    assert.equal(provenance.kernel.artifact.sha256, await sha256File(join(work, '.krunfw', 'vm-x86_64-generic', 'artifact', 'vmlinux')));
    assert.equal(provenance.library.sha256, await sha256File(join(outputs(), 'libkrunfw.so.5.0.0')));
    assert.equal(provenance.config.sha256, await sha256File(join(outputs(), 'kernel.config')));
    assert.equal(provenance.arch, 'x86_64');
  });
});

describe('VM kept with --keep-vm', () => {
  let first: BuildJson;
  let second: BuildJson;
  let secondCalls: string[][];

  before(async () => {
    const kept = await runCli([...buildArguments, '--keep-vm', '--json'], { env: harness.env, timeoutMs: BUILD_TIMEOUT_MS });
    assert.equal(kept.exitCode, 0, kept.stderr);
    first = JSON.parse(kept.stdout) as BuildJson;
    const skip = await callCount();
    const again = await runCli([...buildArguments, '--keep-vm', '--json'], { env: harness.env, timeoutMs: BUILD_TIMEOUT_MS });
    assert.equal(again.exitCode, 0, again.stderr);
    second = JSON.parse(again.stdout) as BuildJson;
    secondCalls = (await readKrunvmCalls(harness.bin.stateDirectory)).slice(skip);
  });

  test('first kept build builds the kernel', () => {
    assert.deepEqual(Object.keys(first.stages).sort(), [...STAGES].sort());
    assert.equal(first.stages.kernel, 'ran');
  });

  test('VM survives the build', async () => {
    assert.deepEqual(await listVmNames(harness.env), [name]);
  });

  test('VM record names the builder definition', async () => {
    const record = await readJsonIfPresent<{ name: string; image: string; builderSha256: string }>(join(work, '.krunfw', 'vm', `${name}.json`));
    assert.equal(record?.name, name);
    assert.equal(record?.builderSha256, sha256(await readFile(join(REPOSITORY, 'builders', 'debian.json'), 'utf8')));
  });

  test('kernel tree lives in the VM', async () => {
    assert.equal(await inGuest(['/usr/bin/test', '-f', `${GUEST_TREE}/Makefile`]), 0);
    assert.equal(await inGuest(['/usr/bin/test', '-f', `${GUEST_TREE}/vmlinux`]), 0);
  });

  test('second build skips provisioning', () => {
    assert.deepEqual(secondCalls.filter((call) => call[0] === 'create' || call[0] === 'delete'), []);
    assert.deepEqual(secondCalls.filter((call) => guestArgv(call)?.[0] === '/usr/bin/apt-get'), []);
  });

  test('second build does no kernel work', () => {
    assert.deepEqual(second.stages, Object.fromEntries(STAGES.map((stage) => [stage, 'skipped'])));
    const kernelWork = secondCalls.map(guestArgv).filter((argv) => argv !== undefined && ['make', 'tar', 'patch', 'cp'].includes(argv[0]!));
    assert.deepEqual(kernelWork, []);
    assert.equal(second.library.sha256, first.library.sha256);
  });
});

describe('changed builder definition', () => {
  let result: { exitCode?: number; stdout: string; stderr: string };
  let calls: string[][];
  let pluginSha256: string;

  before(async () => {
    // A work directory plugin replaces the built-in debian builder; one more package changes its hash.
    const shipped = JSON.parse(await readFile(join(REPOSITORY, 'builders', 'debian.json'), 'utf8')) as { provision: string[][] };
    shipped.provision.at(-1)!.push('cpio');
    const text = JSON.stringify(shipped, null, 2) + '\n';
    pluginSha256 = sha256(text);
    await mkdir(join(work, 'builders'));
    await writeFile(join(work, 'builders', 'debian.json'), text);
    const skip = await callCount();

    // Provisioning is what this checks; once the new VM record is written, the kernel work is interrupted.
    const child = execa(process.execPath, [CLI, ...buildArguments, '--keep-vm'], { env: harness.env, stdin: 'ignore', reject: false, timeout: BUILD_TIMEOUT_MS });
    let exited = false;
    void child.finally(() => (exited = true));
    const recordFile = join(work, '.krunfw', 'vm', `${name}.json`);
    while (!exited && (await readJsonIfPresent<{ builderSha256: string }>(recordFile))?.builderSha256 !== pluginSha256) {
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    child.kill('SIGINT');
    const finished = await child;
    result = { exitCode: finished.exitCode, stdout: String(finished.stdout), stderr: String(finished.stderr) };
    calls = (await readKrunvmCalls(harness.bin.stateDirectory)).slice(skip);
  });

  test('old VM replaced with a message', () => {
    assert.match(combined(result), new RegExp(`Builder definition changed; replacing VM ${name}`));
    const deleted = calls.findIndex((call) => call[0] === 'delete' && call[1] === name);
    const created = calls.findIndex((call) => call[0] === 'create');
    assert.ok(deleted >= 0, 'the old VM was deleted');
    assert.ok(deleted < created, 'the old VM was deleted before the new one was created');
  });

  test('new definition provisioned', async () => {
    const install = calls.map(guestArgv).find((argv) => argv?.[0] === '/usr/bin/apt-get' && argv[1] === 'install');
    assert.ok(install?.includes('cpio'), 'apt-get installs the added package');
    assert.equal(await inGuest(['/usr/bin/dpkg', '-s', 'cpio']), 0);
  });

  test('record holds the new hash', async () => {
    const record = await readJsonIfPresent<{ builderSha256: string }>(join(work, '.krunfw', 'vm', `${name}.json`));
    assert.equal(record?.builderSha256, pluginSha256);
  });

  test('interrupted kept build exits 130, keeps VM', async () => {
    assert.equal(result.exitCode, 130, combined(result));
    assert.deepEqual(await listVmNames(harness.env), [name]);
  });
});
