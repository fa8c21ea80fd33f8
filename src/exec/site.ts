// SPDX-License-Identifier: LGPL-2.1-only
import { access, copyFile, link, mkdir, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, join, relative, sep } from 'node:path';
import { KrunfwError } from '../errors.js';
import { sha256File } from '../hash.js';
import type { Executor } from './executor.js';
import { LocalExecutor } from './local.js';

/**
 * Where the kernel stages run: this host, or a builder VM's own file system.
 * Paths given to a site are the site's own, except where a method says it
 * takes a host path.
 */
export interface BuildSite {
  readonly executor: Executor;
  /** Directory on the site that contains the kernel tree and temporary trees. */
  readonly buildDirectory: string;
  /** Makes a host file visible to the site and returns the site's path for it. */
  stageInput(hostPath: string): Promise<string>;
  /** Translates a host path inside the work directory to the site's path for it. */
  toSite(hostPath: string): string;
  /** 'file', 'directory' or undefined when nothing is there. */
  kind(path: string): Promise<'file' | 'directory' | undefined>;
  remove(path: string): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  makeDirectory(path: string): Promise<void>;
  list(path: string): Promise<string[]>;
  readText(path: string): Promise<string>;
  /** SHA-256 of a file, or undefined when it is missing. */
  sha256(path: string): Promise<string | undefined>;
  /** Copies a site file to a host path in the work directory, unless it is already there; returns the host path to read. */
  bringBack(sitePath: string, hostPath: string): Promise<string>;
}

/** The kernel stages on this host: site paths are host paths. */
export class LocalSite implements BuildSite {
  readonly executor: Executor = new LocalExecutor();

  constructor(readonly buildDirectory: string) {}

  async stageInput(hostPath: string): Promise<string> {
    return hostPath;
  }

  toSite(hostPath: string): string {
    return hostPath;
  }

  async kind(path: string): Promise<'file' | 'directory' | undefined> {
    try {
      return (await stat(path)).isDirectory() ? 'directory' : 'file';
    } catch {
      return undefined;
    }
  }

  async remove(path: string): Promise<void> {
    await rm(path, { recursive: true, force: true });
  }

  async rename(from: string, to: string): Promise<void> {
    await rename(from, to);
  }

  async makeDirectory(path: string): Promise<void> {
    await mkdir(path, { recursive: true });
  }

  async list(path: string): Promise<string[]> {
    try {
      return await readdir(path);
    } catch {
      return [];
    }
  }

  async readText(path: string): Promise<string> {
    return readFile(path, 'utf8');
  }

  async sha256(path: string): Promise<string | undefined> {
    try {
      await access(path);
    } catch {
      return undefined;
    }
    return sha256File(path);
  }

  async bringBack(sitePath: string): Promise<string> {
    return sitePath;
  }
}

/**
 * Copies or hard-links a host file into `directory` (inside the work
 * directory, so a VM sees it) unless it is there already with the same
 * content. Returns the host path of the copy.
 */
export async function stageIntoDirectory(hostPath: string, directory: string, workDirectory: string): Promise<string> {
  const inside = relative(workDirectory, hostPath);
  if (!inside.startsWith('..') && !inside.startsWith(sep)) return hostPath;
  await mkdir(directory, { recursive: true });
  const destination = join(directory, basename(hostPath));
  try {
    const [source, existing] = await Promise.all([stat(hostPath), stat(destination)]);
    if (source.size === existing.size && (source.ino === existing.ino || (await sha256File(hostPath)) === (await sha256File(destination)))) {
      return destination;
    }
  } catch {
    // Not staged yet.
  }
  await rm(destination, { force: true });
  try {
    await link(hostPath, destination);
  } catch {
    await copyFile(hostPath, destination);
  }
  return destination;
}

/** Fails when a path that must be inside the work directory is not. */
export function insideWorkDirectory(hostPath: string, workDirectory: string, guestWorkDirectory: string): string {
  const inside = relative(workDirectory, hostPath);
  if (inside.startsWith('..') || inside.startsWith(sep)) {
    throw new KrunfwError(`${hostPath} is outside the work directory ${workDirectory}, so the builder VM cannot see it`);
  }
  return inside === '' ? guestWorkDirectory : `${guestWorkDirectory}/${inside.split(sep).join('/')}`;
}
