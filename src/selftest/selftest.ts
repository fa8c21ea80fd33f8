// SPDX-License-Identifier: LGPL-2.1-only
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { KrunfwError } from '../errors.js';
import type { Executor } from '../exec/executor.js';
import { packageRoot } from '../versions.js';

export interface SelfTestRequest {
  library: string;
  abi: number;
  loadAddress: bigint;
  entryAddress: bigint;
  /** The kernel artifact, and the byte range the bundle must start with. */
  artifact: string;
  artifactOffset: number;
  artifactLength: number;
  /** SEV blobs: symbol suffix and the file whose bytes it must return. */
  blobs?: Array<{ name: string; file: string }>;
  /** File that receives the whole kernel bundle, when set. */
  dumpKernel?: string;
  /** Directory for the compiled test program. */
  workDirectory: string;
  /** Host C compiler command (from CC). */
  cc: string[];
}

export const SELFTEST_SOURCE = join(packageRoot(), 'src', 'selftest', 'selftest.c');

/**
 * Compiles and runs the self-test program against a linked library on this
 * host, and returns its report. Fails listing every check that did not pass.
 */
export async function runSelfTest(request: SelfTestRequest, executor: Executor): Promise<string> {
  await mkdir(request.workDirectory, { recursive: true });
  const program = join(request.workDirectory, 'krunfw-selftest');
  await executor.run({
    argv: [...request.cc, '-O1', '-o', program, SELFTEST_SOURCE, '-ldl'],
    cwd: request.workDirectory,
  });
  const argv = [
    program,
    `library=${request.library}`,
    `abi=${request.abi}`,
    `load=0x${request.loadAddress.toString(16)}`,
    `entry=0x${request.entryAddress.toString(16)}`,
    `artifact=${request.artifact}`,
    `offset=${request.artifactOffset}`,
    `length=${request.artifactLength}`,
    ...(request.dumpKernel ? [`dump=${request.dumpKernel}`] : []),
    ...(request.blobs ?? []).map((blob) => `blob=${blob.name}:${blob.file}`),
  ];
  try {
    return await executor.capture({ argv, cwd: request.workDirectory });
  } catch (error) {
    if (error instanceof KrunfwError) {
      throw new KrunfwError(`Self-test of ${request.library} failed`, {
        details: error.details,
        hint: 'The library does not match the kernel it was built from; rebuild it, and report a bug if it fails again.',
        cause: error,
      });
    }
    throw error;
  }
}
