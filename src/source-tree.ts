// SPDX-License-Identifier: LGPL-2.1-only
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { KrunfwError } from './errors.js';
import type { GuestArch } from './host.js';
import type { LibraryVersion, Variant } from './library.js';

/** The facts krunfw-mac reads from a libkrunfw-style source tree. */
export interface SourceTree {
  directory: string;
  kernelVersion: string;
  version: LibraryVersion;
  /** The full kernel config for the arch and variant. */
  configFile: string;
  patchDirectory?: string;
  /** The extra series of the SEV variant. */
  teePatchDirectory?: string;
  qboot?: string;
  initrd?: string;
}

/** The tree's git commit, and whether it had uncommitted changes; undefined when it is not a git checkout. */
export interface SourceRevision {
  commit: string;
  dirty: boolean;
}

const VARIABLES = ['KERNEL_VERSION', 'ABI_VERSION', 'FULL_VERSION'] as const;
type Variable = (typeof VARIABLES)[number];

/**
 * Reads the version variables from a libkrunfw Makefile as plain text; the
 * Makefile is never run. Only simple `NAME = value` assignments count.
 */
export function parseMakefileVariables(text: string, path: string): Record<Variable, string> {
  const values: Partial<Record<Variable, string>> = {};
  for (const line of text.split('\n')) {
    const match = /^\s*(KERNEL_VERSION|ABI_VERSION|FULL_VERSION)\s*[:?]?=\s*(.*?)\s*(#.*)?$/.exec(line);
    if (match) values[match[1] as Variable] = match[2]!;
  }
  for (const name of VARIABLES) {
    const value = values[name];
    if (value === undefined) {
      throw new KrunfwError(`${path} does not assign ${name}`, {
        hint: `A libkrunfw Makefile has a line such as ${name === 'KERNEL_VERSION' ? 'KERNEL_VERSION = linux-6.12.76' : name === 'ABI_VERSION' ? 'ABI_VERSION = 5' : 'FULL_VERSION = 5.3.0'}.`,
      });
    }
  }
  return values as Record<Variable, string>;
}

function unparsable(path: string, name: Variable, value: string, expected: string): KrunfwError {
  return new KrunfwError(`Cannot read ${name} in ${path}: "${value}" is not ${expected}`, {
    hint: 'krunfw-mac reads the Makefile as text and does not expand make variables or functions; write the value literally.',
  });
}

async function firstExisting(paths: string[]): Promise<string | undefined> {
  for (const path of paths) {
    try {
      await access(path);
      return path;
    } catch {
      // Try the next one.
    }
  }
  return undefined;
}

async function required(path: string, purpose: string): Promise<string> {
  try {
    await access(path);
    return path;
  } catch {
    throw new KrunfwError(`The source tree has no ${path.split('/').pop()}, ${purpose}: ${path}`, {
      hint: 'Check --source-dir, or pass the file with the matching option.',
    });
  }
}

/** Reads a libkrunfw-style tree for one arch and variant. */
export async function readSourceTree(
  directory: string,
  arch: GuestArch,
  variant: Variant,
  overrides: { qboot?: string; initrd?: string } = {},
): Promise<SourceTree> {
  const makefile = join(directory, 'Makefile');
  let text: string;
  try {
    text = await readFile(makefile, 'utf8');
  } catch (error) {
    throw new KrunfwError(`The source tree has no Makefile, which names its kernel and library versions: ${makefile}`, {
      hint: 'Pass the top directory of a libkrunfw checkout with --source-dir.',
      cause: error,
    });
  }
  const variables = parseMakefileVariables(text, makefile);
  const kernelVersion = /^(?:linux-)?(\d+\.\d+(?:\.\d+)?(?:-rc\d+)?)$/.exec(variables.KERNEL_VERSION)?.[1];
  if (!kernelVersion) throw unparsable(makefile, 'KERNEL_VERSION', variables.KERNEL_VERSION, 'a kernel release such as linux-6.12.76');
  if (!/^\d+$/.test(variables.ABI_VERSION)) throw unparsable(makefile, 'ABI_VERSION', variables.ABI_VERSION, 'a whole number');
  const full = /^(\d+)\.(\d+)\.(\d+)$/.exec(variables.FULL_VERSION);
  if (!full) throw unparsable(makefile, 'FULL_VERSION', variables.FULL_VERSION, 'a version such as 5.3.0');
  const abi = Number(variables.ABI_VERSION);
  if (Number(full[1]) !== abi) {
    throw unparsable(makefile, 'FULL_VERSION', variables.FULL_VERSION, `a version that starts with ABI_VERSION (${abi})`);
  }

  const configName = `config-libkrunfw${variant === 'sev' ? '-sev' : ''}_${arch}`;
  const tree: SourceTree = {
    directory,
    kernelVersion,
    version: { abi, minor: Number(full[2]), patch: Number(full[3]) },
    configFile: await required(join(directory, configName), `the full kernel config for ${arch}${variant === 'sev' ? ' (SEV)' : ''}`),
    patchDirectory: await firstExisting([join(directory, 'patches')]),
  };
  if (variant === 'sev') {
    tree.teePatchDirectory = await firstExisting([join(directory, 'patches-tee'), join(directory, 'patches-sev')]);
    tree.qboot = overrides.qboot ?? (await required(join(directory, 'qboot', 'sev', 'bios.bin'), 'the qboot firmware of the SEV variant'));
    tree.initrd = overrides.initrd ?? (await required(join(directory, 'initrd', 'initrd.gz'), 'the initrd of the SEV variant'));
  }
  return tree;
}

/** Returns the tree's git commit and whether it has uncommitted changes, or undefined outside git. */
export async function readSourceRevision(directory: string): Promise<SourceRevision | undefined> {
  const commit = await execa('git', ['-C', directory, 'rev-parse', 'HEAD'], { reject: false, stdin: 'ignore' });
  if (commit.exitCode !== 0) return undefined;
  const status = await execa('git', ['-C', directory, 'status', '--porcelain'], { reject: false, stdin: 'ignore' });
  return { commit: String(commit.stdout).trim(), dirty: String(status.stdout).trim() !== '' };
}
