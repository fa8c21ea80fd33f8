// SPDX-License-Identifier: LGPL-2.1-only
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { KrunfwError } from '../errors.js';
import { sha256File } from '../hash.js';
import type { Command, Executor } from './executor.js';
import { type BuildSite, insideWorkDirectory, stageIntoDirectory } from './site.js';

/** Guest path of the work directory in the builder VM. krunvm maps only direct children of /. */
export const GUEST_WORK_DIRECTORY = '/work';

/**
 * The kernel stages inside a builder VM. The kernel tree lives in the VM's
 * own file system, which is case-sensitive, not in the mapped work
 * directory, which on a Mac usually is not. Inputs are staged into the work
 * directory and results are copied back through it.
 */
export class GuestSite implements BuildSite {
  constructor(
    readonly executor: Executor,
    /** Host path of the work directory mapped at /work. */
    private readonly workDirectory: string,
    /** Guest directory for the tree, outside /work. */
    readonly buildDirectory: string,
    /** Host directory (inside the work directory) where inputs from elsewhere are staged. */
    private readonly inputDirectory: string,
  ) {}

  toSite(hostPath: string): string {
    return insideWorkDirectory(hostPath, this.workDirectory, GUEST_WORK_DIRECTORY);
  }

  async stageInput(hostPath: string): Promise<string> {
    return this.toSite(await stageIntoDirectory(hostPath, this.inputDirectory, this.workDirectory));
  }

  private command(argv: string[]): Command {
    return { argv, cwd: '/' };
  }

  /** Runs a small guest command and returns its output, or undefined when it failed. */
  private async probe(argv: string[]): Promise<string | undefined> {
    try {
      return await this.executor.capture(this.command(argv));
    } catch (error) {
      if (error instanceof KrunfwError) return undefined;
      throw error;
    }
  }

  async kind(path: string): Promise<'file' | 'directory' | undefined> {
    const output = await this.probe(['stat', '-c', '%F', '--', path]);
    if (output === undefined) return undefined;
    if (/^directory$/m.test(output)) return 'directory';
    if (/^regular (empty )?file$/m.test(output)) return 'file';
    return undefined;
  }

  async remove(path: string): Promise<void> {
    await this.executor.run(this.command(['rm', '-rf', '--', path]));
  }

  async rename(from: string, to: string): Promise<void> {
    await this.executor.run(this.command(['mv', '-T', '--', from, to]));
  }

  async makeDirectory(path: string): Promise<void> {
    await this.executor.run(this.command(['mkdir', '-p', '--', path]));
  }

  async list(path: string): Promise<string[]> {
    const output = await this.probe(['ls', '-1A', '--', path]);
    return output ? output.split('\n').filter(Boolean) : [];
  }

  async readText(path: string): Promise<string> {
    return this.executor.capture(this.command(['cat', '--', path]));
  }

  async sha256(path: string): Promise<string | undefined> {
    const output = await this.probe(['sha256sum', '--', path]);
    return output === undefined ? undefined : /^([0-9a-f]{64})\s/m.exec(output)?.[1];
  }

  /** Copies a file out through /work and checks that the copy has the VM's bytes. */
  async bringBack(sitePath: string, hostPath: string): Promise<string> {
    const expected = await this.sha256(sitePath);
    if (expected === undefined) throw new KrunfwError(`${sitePath} is missing in the builder VM`);
    try {
      if ((await sha256File(hostPath)) === expected) return hostPath;
    } catch {
      // Not copied yet.
    }
    await mkdir(dirname(hostPath), { recursive: true });
    await this.executor.run(this.command(['cp', '--', sitePath, this.toSite(hostPath)]));
    const actual = await sha256File(hostPath).catch(() => undefined);
    if (actual !== expected) {
      throw new KrunfwError(`Copying ${sitePath} out of the builder VM failed: the copy's SHA-256 is ${actual ?? 'missing'}, expected ${expected}`, {
        hint: `Check that the work directory is writable and has free space: ${dirname(hostPath)}`,
      });
    }
    return hostPath;
  }
}

/** Host directory for inputs staged for a VM build. */
export function inputDirectory(workDirectory: string): string {
  return join(workDirectory, '.krunfw', 'inputs');
}
