// SPDX-License-Identifier: LGPL-2.1-only
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { execa } from 'execa';

import {
  ensureDebianRootfs,
  findMountsUnder,
  type KrunvmBin,
  makeKrunvmBin,
  readAptMirror,
  readKrunvmCalls,
} from './support/krunvm-double.js';

const DEBIAN_IMAGE = 'docker.io/library/debian:bookworm-slim';

interface KrunvmResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

const bins: KrunvmBin[] = [];
const hostDirectories: string[] = [];

async function newBin(options: { storageVolume?: boolean } = {}): Promise<KrunvmBin> {
  const bin = await makeKrunvmBin(options);
  bins.push(bin);
  return bin;
}

/** Creates a host directory to map into a VM. The after hook removes it. */
async function newHostDirectory(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), 'krunvm-double-volume-'));
  hostDirectories.push(directory);
  return directory;
}

/** Runs `krunvm` from the bin directory on PATH, with stdin closed unless input is given. */
async function krunvm(
  bin: KrunvmBin,
  args: string[],
  options: { input?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<KrunvmResult> {
  const result = await execa('krunvm', args, {
    env: { ...bin.env, ...options.env },
    extendEnv: false,
    reject: false,
    ...(options.input === undefined ? { stdin: 'ignore' as const } : { input: options.input }),
  });
  return { exitCode: result.exitCode ?? -1, stdout: result.stdout, stderr: result.stderr };
}

async function createVm(bin: KrunvmBin, name: string, extraArgs: string[] = []): Promise<void> {
  const result = await krunvm(bin, ['create', '--name', name, ...extraArgs, DEBIAN_IMAGE]);
  assert.equal(result.exitCode, 0, result.stdout + result.stderr);
}

/** Starts `krunvm start` in the background and resolves once the guest has printed `ready`. */
async function startInBackground(bin: KrunvmBin, args: string[]): Promise<ChildProcess> {
  const child = spawn('krunvm', ['start', ...args], { env: bin.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
      if (output.includes('ready\n')) {
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`krunvm start exited with ${code} before the guest was ready: ${output}`)));
  });
  return child;
}

/** Returns the host PIDs of processes whose command line contains `marker`. */
async function findProcesses(marker: string): Promise<number[]> {
  const found: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) {
      continue;
    }
    const commandLine = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (commandLine.split('\0').includes(marker)) {
      found.push(Number(entry));
    }
  }
  return found;
}

/** Polls until `count` processes with `marker` run, because the guest may print before its background jobs start. */
async function waitForProcesses(marker: string, count: number): Promise<number[]> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const found = await findProcesses(marker);
    if (found.length >= count) {
      return found;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return findProcesses(marker);
}

function uniqueSleepSeconds(): string {
  return String(800000 + Math.floor(Math.random() * 100000));
}

before(async () => {
  await ensureDebianRootfs();
});

after(async () => {
  const roots = bins.map((bin) => join(bin.stateDirectory, '..'));
  const { stdout } = await execa('findmnt', ['--raw', '--noheadings', '--output', 'TARGET']);
  const leftovers = stdout.split('\n').filter((target) => roots.some((root) => target.startsWith(root)));
  for (const bin of bins) {
    await bin.remove();
  }
  for (const directory of hostDirectories) {
    await rm(directory, { recursive: true, force: true });
  }
  assert.deepEqual(leftovers, []);
});

describe('krunvm double: records', () => {
  test('create then list shows record', async () => {
    const bin = await newBin();
    const volume = await newHostDirectory();

    const created = await krunvm(bin, ['create', '--name', 'builder', '--cpus', '4', '--mem', '2048', '-w', '/work', '-v', `${volume}:/work`, DEBIAN_IMAGE]);
    const listed = await krunvm(bin, ['list']);

    assert.equal(created.exitCode, 0);
    assert.equal(created.stdout, 'microVM created with name: builder');
    assert.match(listed.stdout, /^builder$/m);
    assert.match(listed.stdout, /^ CPUs: 4$/m);
    assert.match(listed.stdout, /^ RAM \(MiB\): 2048$/m);
    assert.match(listed.stdout, /^ Workdir: \/work$/m);
    assert.ok(listed.stdout.includes(` Mapped volumes: {"${volume}": "/work"}`), listed.stdout);
  });

  test('create without name uses container name', async () => {
    const bin = await newBin();

    const first = await krunvm(bin, ['create', DEBIAN_IMAGE]);
    const second = await krunvm(bin, ['create', 'debian']);

    assert.equal(first.stdout, 'microVM created with name: debian-working-container');
    assert.equal(second.stdout, 'microVM created with name: debian-working-container-1');
  });

  test('create rejects existing name', async () => {
    const bin = await newBin();
    await createVm(bin, 'twice');

    const result = await krunvm(bin, ['create', '--name', 'twice', DEBIAN_IMAGE]);

    assert.equal(result.exitCode, 255);
    assert.equal(result.stdout, 'A VM with this name already exists');
  });

  test('create rejects non-Debian image', async () => {
    const bin = await newBin();

    const result = await krunvm(bin, ['create', '--name', 'fedora', 'quay.io/fedora/fedora:40']);
    const listed = await krunvm(bin, ['list']);

    assert.equal(result.exitCode, 255);
    assert.match(result.stderr, /image not known/);
    assert.equal(listed.stdout, 'No microVMs found');
  });

  test('create accepts any image on request', async () => {
    const bin = await newBin();
    const env = { KRUNVM_DOUBLE_ACCEPT_ANY_IMAGE: '1' };

    const created = await krunvm(bin, ['create', '--name', 'fedora', 'quay.io/fedora/fedora:40'], { env });
    const started = await krunvm(bin, ['start', 'fedora', '/usr/bin/false'], { env });

    assert.equal(created.exitCode, 0);
    assert.equal(started.exitCode, 0);
    assert.deepEqual((await readKrunvmCalls(bin.stateDirectory)).at(-1), ['start', 'fedora', '/usr/bin/false']);
  });

  test('create reports injected failure', async () => {
    const bin = await newBin();

    const result = await krunvm(bin, ['create', '--name', 'broken', DEBIAN_IMAGE], {
      env: { KRUNVM_DOUBLE_FAIL_CREATE: 'buildah returned an error: disk full' },
    });

    assert.equal(result.exitCode, 255);
    assert.equal(result.stdout, 'buildah returned an error: disk full');
  });

  test('volume rules reject bad mappings', async () => {
    const bin = await newBin();
    const volume = await newHostDirectory();
    const cases: [string, string][] = [
      [`${volume}/a:b:/work`, "Too many ':' separators"],
      [volume, "Too many ':' separators"],
      ['relative/dir:/work', 'Invalid volume, host_path is not an absolute path'],
      [`${volume}/missing:/work`, 'Invalid volume, host_path does not exists'],
      [`${volume}:work`, 'Invalid volume, guest_path is not an absolute path'],
      [`${volume}:/src/work`, 'Invalid volume, only single direct root children are supported as guest_path'],
    ];

    for (const [mapping, message] of cases) {
      const result = await krunvm(bin, ['create', '--name', 'mapped', '-v', mapping, DEBIAN_IMAGE]);
      assert.equal(result.exitCode, 2, mapping);
      assert.ok(result.stderr.startsWith(`error: invalid value '${mapping}' for '--volume <VOLUMES>': ${message}\n`), result.stderr);
    }
    assert.equal((await krunvm(bin, ['list'])).stdout, 'No microVMs found');
  });

  test('delete removes VM', async () => {
    const bin = await newBin();
    await createVm(bin, 'short-lived');

    const deleted = await krunvm(bin, ['delete', 'short-lived']);
    const listed = await krunvm(bin, ['list']);

    assert.equal(deleted.exitCode, 0);
    assert.equal(listed.stdout, 'No microVMs found');
    assert.deepEqual(await readdir(join(bin.stateDirectory, 'vms')), []);
  });

  test('delete rejects unknown name', async () => {
    const bin = await newBin();

    const result = await krunvm(bin, ['delete', 'nowhere']);

    assert.equal(result.exitCode, 255);
    assert.equal(result.stdout, 'No VM found with that name');
  });

  test('delete fails when container gone', async () => {
    const bin = await newBin();
    await createVm(bin, 'orphan');

    const result = await krunvm(bin, ['delete', 'orphan'], { env: { KRUNVM_DOUBLE_DELETE_CONTAINER_GONE: 'orphan' } });
    const listed = await krunvm(bin, ['list']);

    assert.equal(result.exitCode, 255);
    assert.match(result.stderr, /container not known/);
    assert.match(listed.stdout, /^orphan$/m);
  });

  test('changevm renames and edits', async () => {
    const bin = await newBin();
    await createVm(bin, 'before');

    const changed = await krunvm(bin, ['changevm', '--new-name', 'after', '--cpus', '9', '--mem', '512', 'before']);
    const listed = await krunvm(bin, ['list']);

    assert.equal(changed.exitCode, 0);
    assert.match(changed.stdout, /^Error: the maximum number of CPUs supported is 8$/m);
    assert.match(listed.stdout, /^after$/m);
    assert.match(listed.stdout, /^ CPUs: 2$/m);
    assert.match(listed.stdout, /^ RAM \(MiB\): 512$/m);
  });

  test('config sets create defaults', async () => {
    const bin = await newBin();

    const configured = await krunvm(bin, ['config', '--cpus', '3', '--mem', '3072']);
    await createVm(bin, 'defaults');
    const listed = await krunvm(bin, ['list']);

    assert.match(configured.stdout, /^Default number of CPUs for newly created VMs: 3$/m);
    assert.match(listed.stdout, /^ CPUs: 3$/m);
    assert.match(listed.stdout, /^ RAM \(MiB\): 3072$/m);
  });

  test('calls log records argv', async () => {
    const bin = await newBin();

    await krunvm(bin, ['--version']);
    await krunvm(bin, ['create', '--name', 'logged', '-w', '/work', DEBIAN_IMAGE]);

    assert.deepEqual(await readKrunvmCalls(bin.stateDirectory), [
      ['--version'],
      ['create', '--name', 'logged', '-w', '/work', DEBIAN_IMAGE],
    ]);
  });
});

describe('krunvm double: command line', () => {
  test('version defaults to 0.2.6', async () => {
    const bin = await newBin();

    const result = await krunvm(bin, ['--version']);

    assert.equal(result.stdout, 'krunvm 0.2.6');
  });

  test('version follows KRUNVM_DOUBLE_VERSION', async () => {
    const bin = await newBin();

    const result = await krunvm(bin, ['--version'], { env: { KRUNVM_DOUBLE_VERSION: '0.2.5' } });

    assert.equal(result.stdout, 'krunvm 0.2.5');
  });

  test('storage prompt exits 255 on EOF', async () => {
    const bin = await newBin({ storageVolume: false });

    const result = await krunvm(bin, ['list']);

    assert.equal(result.exitCode, 255);
    assert.match(result.stdout, /case-sensitive volume/);
    assert.match(result.stdout, /Please enter the mountpoint for this volume \[\/Volumes\/krunvm\]: $/);
  });

  test('storage prompt skips --version', async () => {
    const bin = await newBin({ storageVolume: false });

    const result = await krunvm(bin, ['--version']);

    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout, 'krunvm 0.2.6');
  });

  test('storage prompt accepts mount point', async () => {
    const bin = await newBin({ storageVolume: false });
    const volume = await newHostDirectory();

    const answered = await krunvm(bin, ['list'], { input: `${volume}\n` });
    const again = await krunvm(bin, ['list']);

    assert.equal(answered.exitCode, 255);
    assert.match(answered.stdout, /Please execute krunvm again$/);
    assert.equal(again.exitCode, 0);
    assert.equal(again.stdout, 'No microVMs found');
  });

  test('missing state directory fails', async () => {
    const bin = await newBin();

    const result = await krunvm(bin, ['list'], { env: { KRUNVM_DOUBLE_STATE: '' } });

    assert.equal(result.exitCode, 70);
    assert.match(result.stderr, /KRUNVM_DOUBLE_STATE is not set/);
  });

  test('start rejects dash argument before --', async () => {
    const bin = await newBin();
    await createVm(bin, 'dashes');

    const result = await krunvm(bin, ['start', 'dashes', '/bin/sh', '-c', 'exit 0']);

    assert.equal(result.exitCode, 2);
    assert.match(result.stderr, /^error: unexpected argument '-c' found$/m);
    assert.match(result.stderr, /use '-- -c'/);
  });

  test('start rejects unknown VM', async () => {
    const bin = await newBin();

    const result = await krunvm(bin, ['start', 'ghost', '/bin/true']);

    assert.equal(result.exitCode, 255);
    assert.equal(result.stdout, 'No VM found with name ghost');
  });

  test('old version fails on volumes', async () => {
    const bin = await newBin();
    const volume = await newHostDirectory();
    const env = { KRUNVM_DOUBLE_VERSION: '0.2.5' };
    const created = await krunvm(bin, ['create', '--name', 'old', '-v', `${volume}:/work`, DEBIAN_IMAGE], { env });

    const result = await krunvm(bin, ['start', 'old', '/bin/true'], { env });

    assert.equal(created.exitCode, 0);
    assert.equal(result.exitCode, 255);
    assert.equal(result.stdout, 'Error setting VM mapped volumes');
  });
});

describe('krunvm double: guest', () => {
  test('start runs command in Debian', async () => {
    const bin = await newBin();
    await createVm(bin, 'debian');

    const result = await krunvm(bin, ['start', 'debian', '/usr/bin/cat', '/etc/debian_version']);

    assert.equal(result.exitCode, 0);
    assert.match(result.stdout, /^12\.\d+$/);
  });

  test('start mounts overlay as root', async () => {
    const bin = await newBin();
    await createVm(bin, 'layers');

    const result = await krunvm(bin, ['start', 'layers', '/usr/bin/cat', '/proc/mounts']);

    assert.match(result.stdout, /^overlay \/ overlay /m);
    assert.match(result.stdout, /^proc \/proc proc /m);
  });

  test('start maps volume at workdir', async () => {
    const bin = await newBin();
    const volume = await newHostDirectory();
    await writeFile(join(volume, 'from-host.txt'), 'host data\n');
    await createVm(bin, 'mapped', ['-v', `${volume}:/work`, '-w', '/work']);

    const result = await krunvm(bin, ['start', 'mapped', '/bin/sh', '--', '-c', 'pwd; cat from-host.txt; echo guest data > from-guest.txt']);

    assert.equal(result.exitCode, 0, result.stderr);
    assert.equal(result.stdout, '/work\nhost data');
    assert.equal(await readFile(join(volume, 'from-guest.txt'), 'utf8'), 'guest data\n');
  });

  test('start sets environment', async () => {
    const bin = await newBin();
    await createVm(bin, 'envy');

    const result = await krunvm(bin, ['start', '--env', 'GREETING=hello world', 'envy', '/usr/bin/printenv', 'GREETING', 'HOSTNAME', 'HOME', 'PATH']);

    assert.equal(result.stdout, 'hello world\nenvy\n/root\n/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
  });

  test('start passes stdin to guest', async () => {
    const bin = await newBin();
    await createVm(bin, 'reader');

    const result = await krunvm(bin, ['start', 'reader', '/usr/bin/tr', 'a-z', 'A-Z'], { input: 'piped in\n' });

    assert.equal(result.stdout, 'PIPED IN');
  });

  test('start resolves mirror host', async (t) => {
    const mirrorHost = new URL(await readAptMirror()).hostname;
    if (mirrorHost === '') {
      t.skip('the host apt mirror is a local file: URI');
      return;
    }
    const bin = await newBin();
    await createVm(bin, 'online');

    const result = await krunvm(bin, ['start', 'online', '/usr/bin/getent', 'hosts', mirrorHost]);

    assert.equal(result.exitCode, 0, result.stderr);
    assert.match(result.stdout, new RegExp(`\\s${mirrorHost.replaceAll('.', '\\.')}`));
  });

  test('files persist until delete', async () => {
    const bin = await newBin();
    await createVm(bin, 'keeper');

    const written = await krunvm(bin, ['start', 'keeper', '/bin/sh', '--', '-c', 'echo kept > /root/note.txt']);
    const readBack = await krunvm(bin, ['start', 'keeper', '/usr/bin/cat', '/root/note.txt']);
    await krunvm(bin, ['delete', 'keeper']);
    await createVm(bin, 'keeper');
    const afterRecreate = await krunvm(bin, ['start', 'keeper', '/usr/bin/test', '--', '-e', '/root/note.txt']);

    assert.equal(written.exitCode, 0);
    assert.equal(readBack.stdout, 'kept');
    assert.equal(afterRecreate.exitCode, 1);
  });

  test('rootfs stays untouched', async () => {
    const bin = await newBin();
    await createVm(bin, 'writer');
    const rootfs = bin.env.KRUNVM_DOUBLE_ROOTFS!;

    await krunvm(bin, ['start', 'writer', '/usr/bin/touch', '/root/only-in-upper']);

    await assert.rejects(readFile(join(rootfs, 'root', 'only-in-upper')), { code: 'ENOENT' });
  });

  test('start passes exit status', async () => {
    const bin = await newBin();
    await createVm(bin, 'status');

    const exited = await krunvm(bin, ['start', 'status', '/bin/sh', '--', '-c', 'exit 7']);
    const notFound = await krunvm(bin, ['start', 'status', 'no-such-command']);
    const killed = await krunvm(bin, ['start', 'status', '/bin/sh', '--', '-c', 'kill -KILL $$']);

    assert.equal(exited.exitCode, 7);
    assert.equal(notFound.exitCode, 127);
    assert.equal(killed.exitCode, 137);
  });

  test('start exit zero mode hides status', async () => {
    const bin = await newBin();
    await createVm(bin, 'old-libkrun');

    const result = await krunvm(bin, ['start', 'old-libkrun', '/bin/sh', '--', '-c', 'exit 7'], {
      env: { KRUNVM_DOUBLE_EXIT_ZERO: '1' },
    });

    assert.equal(result.exitCode, 0);
  });

  test('start fails on missing workdir', async () => {
    const bin = await newBin();
    await createVm(bin, 'lost', ['-w', '/nonexistent']);

    const result = await krunvm(bin, ['start', 'lost', '/bin/true']);

    assert.equal(result.exitCode, 125);
    assert.match(result.stderr, /chdir to \/nonexistent failed/);
  });

  test('second start hits lock', async () => {
    const bin = await newBin();
    await createVm(bin, 'busy');
    const seconds = uniqueSleepSeconds();
    const first = await startInBackground(bin, ['busy', '/bin/sh', '--', '-c', `echo ready; exec /usr/bin/sleep ${seconds}`]);

    try {
      const second = await krunvm(bin, ['start', 'busy', '/bin/true']);

      assert.equal(second.exitCode, 255);
      assert.equal(second.stdout, "Couldn't acquire lock file. Is another instance of this VM already running?");
    } finally {
      first.kill('SIGTERM');
      await once(first, 'exit');
    }
  });

  test('SIGTERM kills guest tree', async () => {
    const bin = await newBin();
    await createVm(bin, 'stopped');
    const seconds = uniqueSleepSeconds();
    const child = await startInBackground(bin, [
      'stopped', '/bin/sh', '--', '-c', `/usr/bin/sleep ${seconds} & /usr/bin/sleep ${seconds} & echo ready; wait`,
    ]);
    const runningBefore = await waitForProcesses(seconds, 2);

    child.kill('SIGTERM');
    const [exitCode] = (await once(child, 'exit')) as [number | null];

    assert.equal(runningBefore.length, 2);
    assert.equal(exitCode, 143);
    assert.deepEqual(await findProcesses(seconds), []);
    assert.deepEqual(await findMountsUnder(bin.stateDirectory), []);
    assert.equal((await krunvm(bin, ['start', 'stopped', '/bin/true'])).exitCode, 0);
  });

  test('SIGINT exits 130', async () => {
    const bin = await newBin();
    await createVm(bin, 'interrupted');
    const seconds = uniqueSleepSeconds();
    const child = await startInBackground(bin, ['interrupted', '/bin/sh', '--', '-c', `echo ready; exec /usr/bin/sleep ${seconds}`]);

    child.kill('SIGINT');
    const [exitCode] = (await once(child, 'exit')) as [number | null];

    assert.equal(exitCode, 130);
    assert.deepEqual(await findProcesses(seconds), []);
  });

  test('guest mounts stay private', async () => {
    const bin = await newBin();
    const volume = await newHostDirectory();
    await mkdir(join(volume, 'inner'));
    await createVm(bin, 'private', ['-v', `${volume}:/work`]);
    const child = await startInBackground(bin, ['private', '/bin/sh', '--', '-c', `echo ready; exec /usr/bin/sleep ${uniqueSleepSeconds()}`]);

    try {
      assert.deepEqual(await findMountsUnder(bin.stateDirectory), []);
      assert.deepEqual(await findMountsUnder(volume), []);
    } finally {
      child.kill('SIGTERM');
      await once(child, 'exit');
    }
  });
});
