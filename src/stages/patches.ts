// SPDX-License-Identifier: LGPL-2.1-only
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KrunfwError } from '../errors.js';
import { sha256 } from '../hash.js';
import type { Command } from '../exec/executor.js';

/** One patch of a series, in the order it is applied. */
export interface PatchFile {
  name: string;
  /** Host path. */
  path: string;
  sha256: string;
}

/**
 * Lists every `*.patch` directly in `directory`, in sorted order (byte order
 * of the names, so `0002-` comes before `0010-` only when numbers are padded,
 * as with `git format-patch`).
 */
export async function listPatches(directory: string): Promise<PatchFile[]> {
  let names: string[];
  try {
    names = (await readdir(directory, { withFileTypes: true }))
      .filter((entry) => entry.isFile() && entry.name.endsWith('.patch'))
      .map((entry) => entry.name);
  } catch (error) {
    throw new KrunfwError(`Patch directory not found: ${directory}`, {
      hint: 'Pass an existing directory with --patches, or --no-patches to build without patches.',
      cause: error,
    });
  }
  // Byte order, not the locale's: the series order must not depend on the user's language settings.
  names.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  return Promise.all(
    names.map(async (name) => {
      const path = join(directory, name);
      return { name, path, sha256: sha256(await readFile(path)) };
    }),
  );
}

/**
 * Applies one patch in the tree. Rejected hunks go to `rejectFile` so that a
 * failure can show them; the tree is discarded after any failure.
 */
export function applyPatchCommand(patchPath: string, treeDirectory: string, rejectFile: string): Command {
  return {
    argv: ['patch', '-p1', '--forward', '--batch', '--no-backup-if-mismatch', `--reject-file=${rejectFile}`, '-i', patchPath],
    cwd: treeDirectory,
    // GNU patch reads these to pick a version-control mode; keep the host's out of it.
    unsetEnv: ['PATCH_GET', 'POSIXLY_CORRECT', 'VERSION_CONTROL'],
  };
}
