// SPDX-License-Identifier: LGPL-2.1-only
import { readdir } from 'node:fs/promises';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { KrunfwError } from '../errors.js';
import { packageRoot } from '../versions.js';
import { type LoadedBuilder, loadBuilderFile } from './definition.js';

/** The builder used when neither --builder nor BUILDER names one. */
export const DEFAULT_BUILDER = 'fedora';

/** Returns the per-user directory for builder plugins. */
export function userBuilderDirectory(env: NodeJS.ProcessEnv = process.env): string {
  if (process.platform === 'darwin') return join(os.homedir(), 'Library', 'Application Support', 'krunfw-mac', 'builders');
  return join(env.XDG_CONFIG_HOME || join(os.homedir(), '.config'), 'krunfw-mac', 'builders');
}

async function loadDirectory(directory: string, origin: string): Promise<LoadedBuilder[]> {
  let names: string[];
  try {
    names = (await readdir(directory)).filter((name) => name.endsWith('.json')).sort();
  } catch {
    return [];
  }
  return Promise.all(names.map((name) => loadBuilderFile(join(directory, name), origin)));
}

/**
 * Finds every builder: the shipped ones, then the per-user directory, then
 * the work directory's `builders/`, then --builder-file. A later one
 * replaces an earlier one of the same name.
 */
export async function discoverBuilders(options: { workDirectory: string; builderFile?: string; env?: NodeJS.ProcessEnv }): Promise<LoadedBuilder[]> {
  const found = [
    ...(await loadDirectory(join(packageRoot(), 'builders'), 'built-in')),
    ...(await loadDirectory(userBuilderDirectory(options.env), 'user')),
  ];
  const workBuilders = join(resolve(options.workDirectory), 'builders');
  if (workBuilders !== join(packageRoot(), 'builders')) found.push(...(await loadDirectory(workBuilders, 'work directory')));
  if (options.builderFile) found.push(await loadBuilderFile(resolve(options.builderFile), 'file'));
  const byName = new Map<string, LoadedBuilder>();
  for (const builder of found) byName.set(builder.definition.name, builder);
  return [...byName.values()];
}

/** Picks the builder: --builder, else BUILDER, else the default; --builder-file alone selects its own. */
export function selectBuilder(builders: LoadedBuilder[], requested: string | undefined, builderFile?: string): LoadedBuilder {
  const fromFile = builderFile ? builders.find((builder) => builder.origin === 'file') : undefined;
  const name = requested ?? fromFile?.definition.name ?? DEFAULT_BUILDER;
  const builder = builders.find((candidate) => candidate.definition.name === name);
  if (!builder) {
    throw new KrunfwError(`Unknown builder: ${name}`, {
      hint: `Available builders: ${builders.map((candidate) => candidate.definition.name).join(', ')}. Add one as JSON in builders/ of the work directory or ${userBuilderDirectory()}.`,
    });
  }
  return builder;
}
