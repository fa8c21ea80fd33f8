// SPDX-License-Identifier: LGPL-2.1-only
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { BuildResult } from '../../src/pipeline.js';
import { DEBIAN_KERNEL_TARBALL, TEST_CACHE, runCli } from './cli.js';

/**
 * The kernel builds the end-to-end tests share. Each arch is built once, in a
 * fixed work directory under the test cache; a later call with the same
 * arguments is a no-op rebuild, so every test file that needs a built
 * library calls this instead of building its own.
 */
export function sharedWorkDirectory(arch: 'x86_64' | 'aarch64'): string {
  return join(TEST_CACHE, 'e2e', arch);
}

/** What `build --json` prints: the build result without the plan, plus the arch and variant. */
export type BuildJson = Omit<BuildResult, 'plan'> & { arch: string; variant: string };

/** Builds (or finds up to date) the shipped configuration from Debian's 6.1 source. */
export async function sharedBuild(arch: 'x86_64' | 'aarch64', extraArgs: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<BuildJson> {
  const workDirectory = sharedWorkDirectory(arch);
  await mkdir(workDirectory, { recursive: true });
  const result = await runCli(
    ['build', '--json', '--arch', arch, '--kernel-tarball', DEBIAN_KERNEL_TARBALL, '--work-dir', workDirectory, ...extraArgs],
    { env: { KRUNFW_CACHE_DIR: join(TEST_CACHE, 'downloads'), ...env } },
  );
  assert.equal(result.exitCode, 0, `build failed:\n${result.stderr}`);
  return JSON.parse(result.stdout) as BuildJson;
}
