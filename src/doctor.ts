// SPDX-License-Identifier: LGPL-2.1-only
import { open, statfs } from 'node:fs/promises';
import { existsSync, statSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import which from 'which';
import { KrunfwError } from './errors.js';
import { runKrunvm } from './exec/krunvm.js';
import type { Host } from './host.js';
import { buildMode } from './plan.js';
import { buildRequirements, findMissing, missingRequirementsError } from './preflight.js';

/** One line of `krunfw-mac doctor`. */
export interface CheckResult {
  name: string;
  ok: boolean;
  /** The finding, or the problem. */
  detail: string;
  /** How to fix a failed check. */
  hint?: string;
}

/** krunvm maps volumes on macOS from this version on. */
export const MINIMUM_KRUNVM_VERSION: readonly [number, number, number] = [0, 2, 6];

/** Free space the work directory needs for a VM build: tarball, staged inputs, artifact, kernel.c and library. */
const MINIMUM_FREE_DISK_MIB = 4096;

export interface DoctorRequest {
  host: Host;
  /** Linux only: check the VM path instead of the native one. */
  vm: boolean;
  workDirectory: string;
  /** Memory the builder VM will get, in MiB. */
  memoryMiB: number;
  cc: string[];
  env?: NodeJS.ProcessEnv;
}

export function parseKrunvmVersion(output: string): [number, number, number] | undefined {
  const match = /(\d+)\.(\d+)\.(\d+)/.exec(output);
  return match ? [Number(match[1]), Number(match[2]), Number(match[3])] : undefined;
}

function atLeast(version: readonly number[], minimum: readonly number[]): boolean {
  for (let index = 0; index < minimum.length; index++) {
    if (version[index]! !== minimum[index]!) return version[index]! > minimum[index]!;
  }
  return true;
}

/** Directories where libkrun's dlopen finds libkrunfw, in search order. */
export function librarySearchPath(host: Host, env: NodeJS.ProcessEnv): string[] {
  const fromEnv = (name: string) => (env[name] ?? '').split(delimiter).filter(Boolean);
  if (host.os === 'darwin') {
    // krunvm 0.2.5 and later add Homebrew's lib to DYLD_LIBRARY_PATH when it is unset; /usr/local/lib is dyld's fallback.
    const homebrew = join(env.HOMEBREW_PREFIX || '/opt/homebrew', 'lib');
    return [...fromEnv('DYLD_LIBRARY_PATH'), homebrew, '/usr/local/lib'];
  }
  return [...fromEnv('LD_LIBRARY_PATH'), '/usr/local/lib64', '/usr/local/lib', '/usr/lib64', '/usr/lib', '/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu'];
}

const LIBRARY_MAGIC: Record<string, number[][]> = {
  // 64-bit Mach-O, little-endian; ELF.
  darwin: [[0xcf, 0xfa, 0xed, 0xfe]],
  linux: [[0x7f, 0x45, 0x4c, 0x46]],
};

/** Finds an installed libkrunfw that the builder VM's libkrun can load, or undefined. */
export async function findInstalledLibkrunfw(host: Host, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  const fileName = host.os === 'darwin' ? 'libkrunfw.5.dylib' : 'libkrunfw.so.5';
  for (const directory of librarySearchPath(host, env)) {
    const path = join(directory, fileName);
    try {
      const handle = await open(path, 'r');
      try {
        const { buffer } = await handle.read(Buffer.alloc(4), 0, 4, 0);
        if ((LIBRARY_MAGIC[host.os] ?? []).some((magic) => magic.every((byte, index) => buffer[index] === byte))) return path;
      } finally {
        await handle.close();
      }
    } catch {
      // Not in this directory.
    }
  }
  return undefined;
}

/** Returns `path` made absolute, or its nearest parent that exists. */
function nearestExistingPath(path: string): string {
  let current = resolve(path);
  while (!existsSync(current) && dirname(current) !== current) current = dirname(current);
  return current;
}

async function check(name: string, body: () => Promise<Omit<CheckResult, 'name'>>): Promise<CheckResult> {
  try {
    return { name, ...(await body()) };
  } catch (error) {
    if (error instanceof KrunfwError) return { name, ok: false, detail: error.message, hint: error.hint };
    throw error;
  }
}

/** Runs every check for the build this host would do, and returns them all, passed or not. */
export async function runDoctor(request: DoctorRequest): Promise<CheckResult[]> {
  const env = request.env ?? process.env;
  const results: CheckResult[] = [];
  let mode: 'native' | 'vm';
  try {
    mode = buildMode(request.host, request.vm);
    results.push({ name: 'host', ok: true, detail: `${request.host.os} on ${request.host.cpu}: ${mode === 'vm' ? 'builds in a krunvm builder VM' : 'builds natively'}` });
  } catch (error) {
    if (!(error instanceof KrunfwError)) throw error;
    return [{ name: 'host', ok: false, detail: error.message, hint: error.hint }];
  }

  if (mode === 'native') {
    const requirements = buildRequirements({ cc: request.cc });
    const missing = new Set((await findMissing(requirements, request.cc)).map((requirement) => requirement.name));
    for (const requirement of requirements) {
      results.push(
        missing.has(requirement.name)
          ? { name: requirement.name, ok: false, detail: 'missing', hint: missingRequirementsError([requirement]).hint }
          : { name: requirement.name, ok: true, detail: 'found' },
      );
    }
    return results;
  }

  const krunvm = await which('krunvm', { nothrow: true, path: env.PATH });
  results.push(
    krunvm
      ? { name: 'krunvm', ok: true, detail: krunvm }
      : { name: 'krunvm', ok: false, detail: 'krunvm was not found on PATH', hint: 'Install it with: brew tap libkrun/krun && brew install krunvm' },
  );
  if (krunvm) {
    results.push(
      await check('krunvm version', async () => {
        const result = await runKrunvm(krunvm, ['--version']);
        const version = parseKrunvmVersion(result.output);
        if (!version) return { ok: false, detail: `could not read the version from "${result.output.trim()}"`, hint: 'Reinstall krunvm: brew reinstall krunvm' };
        const text = version.join('.');
        return atLeast(version, MINIMUM_KRUNVM_VERSION)
          ? { ok: true, detail: text }
          : { ok: false, detail: `krunvm ${text} is too old: mapping the work directory into the VM needs ${MINIMUM_KRUNVM_VERSION.join('.')} or later`, hint: 'Run: brew upgrade krunvm' };
      }),
    );
    results.push(
      await check('krunvm storage volume', async () => {
        const result = await runKrunvm(krunvm, ['list']);
        if (/diskutil apfs addVolume|Case-sensitive APFS/i.test(result.output)) {
          return {
            ok: false,
            detail: 'krunvm has no storage volume configured and would stop to ask for one',
            hint: 'Create a case-sensitive APFS volume (diskutil apfs addVolume disk3 "Case-sensitive APFS" krunvm), then run "krunvm list" once in a terminal and enter its mount point.',
          };
        }
        if (result.exitCode !== 0) return { ok: false, detail: `krunvm list failed with exit status ${result.exitCode}: ${result.output.trim().split('\n').pop()}` };
        return { ok: true, detail: 'configured' };
      }),
    );
  }

  const library = await findInstalledLibkrunfw(request.host, env);
  results.push(
    library
      ? { name: 'installed libkrunfw', ok: true, detail: library }
      : {
          name: 'installed libkrunfw',
          ok: false,
          detail: `no ${request.host.os === 'darwin' ? 'libkrunfw.5.dylib' : 'libkrunfw.so.5'} in ${librarySearchPath(request.host, env).join(', ')}; the builder VM itself needs one to boot`,
          hint: request.host.os === 'darwin' ? 'Install it with: brew install libkrunfw' : 'Install your distribution\'s libkrunfw package, or build one natively first: krunfw-mac build, then krunfw-mac install',
        },
  );

  const compiler = await which(request.cc[0]!, { nothrow: true, path: env.PATH });
  results.push(
    compiler
      ? { name: 'host C compiler', ok: true, detail: compiler }
      : { name: 'host C compiler', ok: false, detail: `${request.cc[0]} was not found`, hint: request.host.os === 'darwin' ? 'Run: xcode-select --install' : 'Install gcc or set CC.' },
  );

  results.push(
    await check('free disk', async () => {
      // A build creates the work directory, so before the first build the space comes from its nearest existing parent.
      const measured = nearestExistingPath(request.workDirectory);
      const where = measured === resolve(request.workDirectory) ? measured : `${measured} (for ${request.workDirectory}, not created yet)`;
      if (!statSync(measured).isDirectory()) {
        return { ok: false, detail: `${measured} is not a directory, so the work directory ${request.workDirectory} cannot be created`, hint: 'Pass another --work-dir.' };
      }
      const stats = await statfs(measured);
      const freeMiB = Math.floor((stats.bavail * stats.bsize) / (1024 * 1024));
      return freeMiB >= MINIMUM_FREE_DISK_MIB
        ? { ok: true, detail: `${freeMiB} MiB free in ${where}` }
        : { ok: false, detail: `only ${freeMiB} MiB free in ${where}; a build needs about ${MINIMUM_FREE_DISK_MIB} MiB`, hint: 'Free some space or pass another --work-dir.' };
    }),
  );
  results.push(
    request.host.memoryMiB >= request.memoryMiB + 1024
      ? { name: 'memory', ok: true, detail: `${request.host.memoryMiB} MiB total, ${request.memoryMiB} MiB for the VM` }
      : {
          name: 'memory',
          ok: false,
          detail: `${request.host.memoryMiB} MiB total is not enough for a ${request.memoryMiB} MiB VM and the host`,
          hint: `Pass a smaller --mem, at most ${Math.max(512, request.host.memoryMiB - 1024)}.`,
        },
  );
  return results;
}

/** Fails with every failed check, for the start of a build. */
export function failedChecksError(results: CheckResult[]): KrunfwError | undefined {
  const failed = results.filter((result) => !result.ok);
  if (failed.length === 0) return undefined;
  return new KrunfwError(`Preflight failed: ${failed.map((result) => result.name).join(', ')}`, {
    details: failed.map((result) => `${result.name}: ${result.detail}${result.hint ? `\n  fix: ${result.hint}` : ''}`).join('\n'),
    hint: 'Fix the checks above; krunfw-mac doctor runs them all again.',
  });
}
