// SPDX-License-Identifier: LGPL-2.1-only
/**
 * Helpers for tests that drive krunvm through the test double in
 * test/krunvm-double/: a cached Debian bookworm root file system, and a
 * temporary bin directory with an executable `krunvm` plus a fresh state
 * directory.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdir, mkdtemp, open, readdir, readFile, rename, rm, symlink } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { constants as osConstants, homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import which from 'which';

import { KrunfwError } from '../../src/errors.js';

const DEBIAN_SUITE = 'bookworm';
/** Prefix of the directories that debootstrap fills before they are renamed into place. */
const PARTIAL_PREFIX = '.partial-';

/** The compiled double, next to this file's compiled form in dist/test/. */
const DOUBLE_PATH = fileURLToPath(new URL('../krunvm-double/krunvm.js', import.meta.url));

/** Returns the test cache directory: $KRUNFW_TEST_CACHE, or ~/.cache/krunfw-mac-tests. */
export function testCacheDirectory(): string {
  const configured = process.env.KRUNFW_TEST_CACHE;
  return configured !== undefined && configured !== '' ? configured : join(homedir(), '.cache', 'krunfw-mac-tests');
}

function debianArchitecture(): string {
  const names: Partial<Record<NodeJS.Architecture, string>> = { x64: 'amd64', arm64: 'arm64', ia32: 'i386' };
  return names[process.arch] ?? process.arch;
}

/** Returns the values of one deb822 field, such as `Suites: bookworm bookworm-updates`. */
function fieldValues(stanza: string, field: string): string[] {
  const match = new RegExp(`^${field}:[ \\t]*(.*)$`, 'im').exec(stanza);
  return match === null ? [] : match[1]!.trim().split(/\s+/);
}

interface AptSource {
  uri: string;
  suites: string[];
}

function isUsableMirror(source: AptSource): boolean {
  return /^(https?|file):/.test(source.uri) && source.suites.some((suite) => !/-(security|updates|backports)$/.test(suite));
}

async function readAptSources(): Promise<AptSource[]> {
  const sources: AptSource[] = [];
  const directory = '/etc/apt/sources.list.d';
  const entries = existsSync(directory) ? (await readdir(directory)).filter((name) => name.endsWith('.sources')) : [];
  for (const entry of entries.sort()) {
    const text = await readFile(join(directory, entry), 'utf8');
    for (const stanza of text.split(/\n\s*\n/)) {
      const enabled = fieldValues(stanza, 'Enabled')[0]?.toLowerCase() !== 'no';
      if (enabled && fieldValues(stanza, 'Types').includes('deb')) {
        const suites = fieldValues(stanza, 'Suites');
        sources.push(...fieldValues(stanza, 'URIs').map((uri) => ({ uri, suites })));
      }
    }
  }
  if (existsSync('/etc/apt/sources.list')) {
    for (const line of (await readFile('/etc/apt/sources.list', 'utf8')).split('\n')) {
      // deb [options] URI SUITE COMPONENT...
      const match = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)/.exec(line);
      if (match !== null) {
        sources.push({ uri: match[1]!, suites: [match[2]!] });
      }
    }
  }
  return sources;
}

/**
 * Returns the Debian package mirror that the host's apt uses. It is read at
 * run time so that its address never appears in the repository. The mirror
 * is the first `deb` source for bookworm, else the first source that is not
 * a security, updates or backports archive.
 */
export async function readAptMirror(): Promise<string> {
  const sources = (await readAptSources()).filter(isUsableMirror);
  const mirror = sources.find((source) => source.suites.includes(DEBIAN_SUITE)) ?? sources[0];
  if (mirror === undefined) {
    throw new KrunfwError('No Debian package mirror found in the host apt configuration', {
      hint: 'Add a deb source to /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list.',
    });
  }
  return mirror.uri;
}

/** Runs a util-linux program with an argv array and resolves with its exit code (or 128 + signal number). */
async function runProgram(file: string, args: string[], stdio: ('ignore' | 'inherit' | number)[]): Promise<number> {
  const child = spawn(file, args, { stdio });
  const failure = once(child, 'error').then(([error]) => {
    throw new KrunfwError(`Running ${file} failed: ${(error as Error).message}`, {
      hint: 'Install util-linux, which provides flock, setpriv and unshare.',
    });
  });
  const [code, signal] = (await Promise.race([once(child, 'exit'), failure])) as [number | null, NodeJS.Signals | null];
  return code ?? 128 + osConstants.signals[signal ?? 'SIGKILL'];
}

/**
 * Takes an exclusive lock on a file and waits for it. flock(1) locks the
 * open file description shared with this process, so the lock stays until
 * the returned handle is closed (or this process exits).
 */
async function lockFile(path: string): Promise<{ close(): Promise<void> }> {
  const handle = await open(path, 'a');
  const status = await runProgram('flock', ['--exclusive', '3'], ['ignore', 'ignore', 'inherit', handle.fd]);
  if (status !== 0) {
    await handle.close();
    throw new KrunfwError(`Locking ${path} failed: flock exited with ${status}`);
  }
  return handle;
}

async function lastLines(path: string, count: number): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-count).join('\n');
}

/** Throws unless nothing is mounted at or below `directory` in this mount namespace. */
export async function assertNothingMountedUnder(directory: string): Promise<void> {
  const mounts = await findMountsUnder(directory);
  if (mounts.length > 0) {
    throw new KrunfwError(`Still mounted under ${directory}: ${mounts.join(', ')}`, {
      hint: 'Unmount them before removing the directory; removing it now would delete the mounted files.',
    });
  }
}

/** Returns the mount points at or below `directory` in this process's mount namespace. */
export async function findMountsUnder(directory: string): Promise<string[]> {
  const prefix = directory.endsWith('/') ? directory : `${directory}/`;
  const mountInfo = await readFile('/proc/self/mountinfo', 'utf8');
  return mountInfo
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((mountPoint): mountPoint is string => mountPoint !== undefined)
    .filter((mountPoint) => mountPoint === directory || mountPoint.startsWith(prefix));
}

/**
 * Returns a Debian bookworm minbase root file system, building it with
 * debootstrap into the test cache on first use. That took 30 to 80 seconds
 * on a 2-core machine, depending on its load.
 * A lock serialises concurrent test processes, and the tree is renamed into
 * place only when debootstrap has finished, so a crashed build is never
 * taken for a finished one.
 */
export async function ensureDebianRootfs(): Promise<string> {
  const cache = testCacheDirectory();
  const rootfs = join(cache, `debian-${DEBIAN_SUITE}-minbase-${debianArchitecture()}`);
  if (existsSync(rootfs)) {
    return rootfs;
  }
  if ((await which('debootstrap', { nothrow: true })) === null) {
    throw new KrunfwError('debootstrap not found on PATH. The krunvm test double needs it to build a Debian root file system', {
      hint: 'Run: apt-get install debootstrap',
    });
  }
  await mkdir(cache, { recursive: true });

  const lock = await lockFile(join(cache, `debian-${DEBIAN_SUITE}.lock`));
  try {
    if (existsSync(rootfs)) {
      return rootfs;
    }
    // Holding the lock means that no other build is using these.
    for (const entry of await readdir(cache)) {
      if (entry.startsWith(PARTIAL_PREFIX)) {
        await assertNothingMountedUnder(join(cache, entry));
        await rm(join(cache, entry), { recursive: true, force: true });
      }
    }

    const partial = await mkdtemp(join(cache, PARTIAL_PREFIX));
    const target = join(partial, 'rootfs');
    const logPath = join(cache, 'debootstrap.log');
    const mirror = await readAptMirror();
    const log = await open(logPath, 'w');
    let status: number;
    try {
      // debootstrap mounts /proc and /sys in the target. In a private mount
      // namespace those mounts vanish even if debootstrap is killed.
      status = await runProgram(
        'setpriv',
        [
          '--pdeathsig', 'KILL', '--',
          'unshare', '--mount', '--propagation', 'private', '--pid', '--fork', '--kill-child', '--',
          'debootstrap', '--variant=minbase', DEBIAN_SUITE, target, mirror,
        ],
        ['ignore', log.fd, log.fd],
      );
    } finally {
      await log.close();
    }
    if (status !== 0) {
      await rm(partial, { recursive: true, force: true });
      throw new KrunfwError(`debootstrap of Debian ${DEBIAN_SUITE} failed with exit code ${status}`, {
        hint: `Read ${logPath}; debootstrap needs root and the package mirror from the host's apt configuration.`,
        details: await lastLines(logPath, 20),
      });
    }
    await rename(target, rootfs);
    await rm(partial, { recursive: true, force: true });
    return rootfs;
  } finally {
    await lock.close();
  }
}

/** A temporary krunvm for one test. Pass `env` to the code under test, or put `binDirectory` first on PATH. */
export interface KrunvmBin {
  /** A directory that contains an executable `krunvm`, a symbolic link to the compiled double. */
  binDirectory: string;
  /** The double's $KRUNVM_DOUBLE_STATE: VM records, the call log and the storage marker. */
  stateDirectory: string;
  /** This process's environment with PATH, KRUNVM_DOUBLE_STATE and KRUNVM_DOUBLE_ROOTFS set and no other KRUNVM_DOUBLE_ variable. */
  env: NodeJS.ProcessEnv;
  /** Removes both directories, after checking that nothing is mounted below them. */
  remove(): Promise<void>;
}

export interface KrunvmBinOptions {
  /**
   * Whether the storage volume is already configured (default true). Without
   * it, every command except `--version` shows krunvm's first-run prompt.
   */
  storageVolume?: boolean;
}

/** Creates a temporary bin directory with `krunvm` and a fresh state directory. */
export async function makeKrunvmBin(options: KrunvmBinOptions = {}): Promise<KrunvmBin> {
  const rootfs = await ensureDebianRootfs();
  if (!existsSync(DOUBLE_PATH)) {
    throw new KrunfwError(`The krunvm test double is not compiled: ${DOUBLE_PATH} is missing`, {
      hint: 'Run: npx tsc -p tsconfig.json',
    });
  }

  const root = await mkdtemp(join(tmpdir(), 'krunvm-double-'));
  const binDirectory = join(root, 'bin');
  const stateDirectory = join(root, 'state');
  await mkdir(binDirectory);
  await mkdir(stateDirectory);
  if (options.storageVolume ?? true) {
    await mkdir(join(stateDirectory, 'storage'));
  }
  // tsc writes the double without the executable bit that its #! line needs.
  await chmod(DOUBLE_PATH, 0o755);
  await symlink(DOUBLE_PATH, join(binDirectory, 'krunvm'));

  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('KRUNVM_DOUBLE_')) {
      env[key] = value;
    }
  }
  env.PATH = `${binDirectory}:${process.env.PATH ?? ''}`;
  env.KRUNVM_DOUBLE_STATE = stateDirectory;
  env.KRUNVM_DOUBLE_ROOTFS = rootfs;

  return {
    binDirectory,
    stateDirectory,
    env,
    async remove(): Promise<void> {
      await assertNothingMountedUnder(root);
      await rm(root, { recursive: true, force: true });
    },
  };
}

/** Returns the argv of every krunvm call recorded in a state directory, oldest first. */
export async function readKrunvmCalls(stateDirectory: string): Promise<string[][]> {
  const text = await readFile(join(stateDirectory, 'calls.jsonl'), 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') {
      return '';
    }
    throw error;
  });
  return text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as string[]);
}
