// SPDX-License-Identifier: LGPL-2.1-only
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

/** The repository root (dist/test/support/ is three levels below it). */
export const REPOSITORY = fileURLToPath(new URL('../../..', import.meta.url)).replace(/\/$/, '');
export const CLI = join(REPOSITORY, 'bin', 'krunfw-mac.js');

/** Debian's kernel source package: the tests' stand-in for a kernel.org tarball. */
export const DEBIAN_KERNEL_TARBALL = '/usr/src/linux-source-6.1.tar.xz';

/** Where the tests keep state that is expensive to make (kernel trees, root file systems), outside the repository. */
export const TEST_CACHE = process.env.KRUNFW_TEST_CACHE ?? join(os.homedir(), '.cache', 'krunfw-mac-tests');

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs the krunfw-mac command line as a user would, without a terminal. */
export async function runCli(
  args: string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<CliResult> {
  const result = await execa(process.execPath, [CLI, ...args], {
    cwd: options.cwd ?? REPOSITORY,
    env: { NO_COLOR: '1', ...options.env },
    stdin: 'ignore',
    reject: false,
    timeout: options.timeoutMs,
  });
  return { exitCode: result.exitCode ?? -1, stdout: String(result.stdout), stderr: String(result.stderr) };
}
