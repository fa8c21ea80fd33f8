// SPDX-License-Identifier: LGPL-2.1-only
import { constants } from 'node:fs';
import { access, chmod, copyFile, lstat, mkdir, readFile, readlink, rename, rm, rmdir, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { KrunfwError } from './errors.js';
import { symlinkAtomic, temporaryPathBeside, writeFileAtomic } from './files.js';
import { sha256File } from './hash.js';
import { type LibraryNames, type LibraryVersion, type TargetOs, type Variant, libraryBaseName, libraryNames } from './library.js';
import type { Provenance } from './provenance.js';
import { toolVersion } from './versions.js';

/** One change that an install makes, with absolute paths. */
export type InstallAction =
  | { kind: 'directory'; path: string }
  | { kind: 'file'; path: string; source: string; mode: number; sha256: string }
  | { kind: 'symlink'; path: string; target: string };

/** An install request: the built library, the prefix and the layout under it. */
export interface InstallRequest {
  /** The directory that contains the built library. */
  libraryDirectory: string;
  names: LibraryNames;
  /** The library's OS, which picks the library path variable named in hints. */
  os: TargetOs;
  variant: Variant;
  /** Absolute installation prefix, such as /usr/local. */
  prefix: string;
  /** Staging directory that the prefix is placed under (make's DESTDIR). */
  destdir?: string;
  /** Library directory relative to the prefix: lib or lib64. */
  libdir: string;
  /** More files to copy, each as a path relative to the prefix and the file to copy there. */
  extraFiles?: Array<{ path: string; source: string }>;
  /** Whether to keep the install record that uninstall reads (default true). */
  keepRecord?: boolean;
}

/** The files and symlinks one or more installs into a prefix put there, with paths relative to the prefix. */
interface InstallRecord {
  format: 1;
  tool: string;
  files: Array<{ path: string; sha256: string }>;
  symlinks: Array<{ path: string; target: string }>;
  /** Directories the installs created. Uninstall removes those that are empty. */
  directories: string[];
}

/** Everything an install will change, computed before anything changes. */
export interface InstallPlan {
  /** DESTDIR joined with the prefix: where the files go. */
  root: string;
  os: TargetOs;
  libdir: string;
  /** The changes in the order they are made: directories, files, then symlinks. */
  actions: InstallAction[];
  /** The install record written after the actions, when one is kept. */
  recordPath?: string;
  /** The record to write: this install's entries plus those of earlier installs that are still in place. */
  record?: InstallRecord;
  /** The nearest existing directory that this user cannot write to, when there is one. */
  unwritable?: { path: string; code: string };
}

/** A file or symlink that uninstall removes or leaves. */
export interface UninstallEntry {
  kind: 'file' | 'symlink';
  path: string;
}

export interface UninstallPlan {
  root: string;
  recordPath: string;
  /** Entries that are still what the install put there. */
  remove: UninstallEntry[];
  /** Entries that are gone or were changed after the install, with the reason. Uninstall leaves them alone. */
  skip: Array<UninstallEntry & { reason: string }>;
  /** Directories the install created, deepest first. Each is removed if it ends up empty. */
  directories: string[];
}

/** Progress callbacks and cancellation for applying a plan. */
export interface ApplyOptions {
  signal?: AbortSignal;
  /** Called before each change is made. */
  onAction?: (action: InstallAction) => void;
}

/** Returns the variable that the dynamic loader reads extra library directories from. */
export function libraryPathVariable(os: TargetOs): 'LD_LIBRARY_PATH' | 'DYLD_LIBRARY_PATH' {
  return os === 'darwin' ? 'DYLD_LIBRARY_PATH' : 'LD_LIBRARY_PATH';
}

/**
 * Picks the library directory under a prefix, as the host's distribution
 * lays it out. Fedora, RHEL and openSUSE keep 64-bit libraries in lib64, and
 * there /usr/lib64 is a real directory that contains libc. Debian and Ubuntu
 * use lib, with only the dynamic loader in /usr/lib64. Arch makes /usr/lib64
 * a symlink to lib. macOS always uses lib.
 */
export async function defaultLibdir(os: TargetOs, systemRoot = '/'): Promise<'lib' | 'lib64'> {
  if (os === 'darwin') return 'lib';
  const lib64 = join(systemRoot, 'usr', 'lib64');
  const info = await lstat(lib64).catch(() => undefined);
  if (!info?.isDirectory()) return 'lib';
  return (await lstat(join(lib64, 'libc.so.6')).catch(() => undefined)) ? 'lib64' : 'lib';
}

function recordPathFor(root: string, variant: Variant): string {
  return join(root, 'share', 'krunfw-mac', `${libraryBaseName(variant)}.install.json`);
}

/** Returns DESTDIR joined with the prefix, rejecting a relative prefix. */
export function installRoot(prefix: string, destdir?: string): string {
  if (!isAbsolute(prefix)) {
    throw new KrunfwError(`Invalid prefix: ${prefix} is not an absolute path`, { hint: 'Pass an absolute --prefix, such as /usr/local or $HOME/.local.' });
  }
  return destdir ? join(resolve(destdir), prefix) : resolve(prefix);
}

function checkRelativePath(path: string, what: string): void {
  if (path === '' || isAbsolute(path) || path.split(/[\\/]/).some((part) => part === '..')) {
    throw new KrunfwError(`Invalid ${what}: ${path}`, { hint: `The ${what} is a path relative to the prefix, such as lib or lib64.` });
  }
}

async function pathKind(path: string): Promise<'file' | 'directory' | 'symlink' | 'other' | undefined> {
  const info = await lstat(path).catch(() => undefined);
  if (!info) return undefined;
  if (info.isSymbolicLink()) return 'symlink';
  if (info.isDirectory()) return 'directory';
  return info.isFile() ? 'file' : 'other';
}

/** Returns the directories from the top down that must be created for `directory` to exist. */
async function missingDirectories(directory: string): Promise<string[]> {
  const missing: string[] = [];
  let current = directory;
  for (;;) {
    const kind = await pathKind(current);
    if (kind === 'directory' || (kind === 'symlink' && (await stat(current).catch(() => undefined))?.isDirectory())) break;
    if (kind !== undefined) {
      throw new KrunfwError(`Cannot install into ${directory}: ${current} exists and is not a directory`, {
        hint: 'Remove it or pick another --prefix.',
      });
    }
    missing.unshift(current);
    const parent = dirname(current);
    if (parent === current) break;
    current = parent;
  }
  return missing;
}

/** Finds the nearest existing ancestor of each directory and returns the first that cannot be written. */
async function findUnwritable(directories: readonly string[]): Promise<{ path: string; code: string } | undefined> {
  for (const directory of directories) {
    let current = directory;
    while ((await pathKind(current)) === undefined && dirname(current) !== current) current = dirname(current);
    try {
      await access(current, constants.W_OK);
    } catch (error) {
      return { path: current, code: (error as NodeJS.ErrnoException).code ?? 'EACCES' };
    }
  }
  return undefined;
}

const NOT_WRITABLE_CODES = new Set(['EACCES', 'EPERM', 'EROFS']);

function describeCode(code: string): string {
  return code === 'EROFS' ? 'read-only file system' : 'permission denied';
}

function notWritableError(path: string, code: string, os: TargetOs, libdir: string, cause?: unknown): KrunfwError {
  const variable = libraryPathVariable(os);
  return new KrunfwError(`Cannot write to ${path}: ${describeCode(code)}`, {
    hint:
      'Run the command again with sudo, or install into a prefix you own and add its library directory to the library path:\n' +
      `  krunfw-mac install --prefix "$HOME/.local"\n  export ${variable}="$HOME/.local/${libdir}"`,
    cause,
  });
}

async function readRecord(path: string): Promise<InstallRecord | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const record = JSON.parse(text) as InstallRecord;
  if (record.format !== 1 || !Array.isArray(record.files) || !Array.isArray(record.symlinks) || !Array.isArray(record.directories)) {
    throw new KrunfwError(`Install record ${path} is not in a format this krunfw-mac reads`, {
      hint: 'Use the krunfw-mac version that installed the library, or remove the files it lists by hand.',
    });
  }
  return record;
}

/** Returns why a recorded file or symlink is no longer what the install put there, or undefined when it is unchanged. */
async function isUnchanged(root: string, entry: { path: string; sha256?: string; target?: string }): Promise<string | undefined> {
  const path = join(root, entry.path);
  const kind = await pathKind(path);
  if (kind === undefined) return 'not found';
  if (entry.target !== undefined) {
    if (kind !== 'symlink') return 'no longer a symlink';
    return (await readlink(path)) === entry.target ? undefined : 'points somewhere else now';
  }
  if (kind !== 'file') return 'no longer a regular file';
  return (await sha256File(path)) === entry.sha256 ? undefined : 'changed after the install';
}

/**
 * Works out every change an install makes, without making any: the
 * directories to create, the library and extra files to copy, the symlinks
 * and the install record. The record also keeps tracking the files of
 * earlier installs into the same prefix that are still in place.
 */
export async function planInstall(request: InstallRequest): Promise<InstallPlan> {
  const root = installRoot(request.prefix, request.destdir);
  checkRelativePath(request.libdir, 'library directory');
  const libraryDirectory = join(root, request.libdir);
  const source = join(request.libraryDirectory, request.names.fileName);
  if ((await pathKind(source)) !== 'file') {
    throw new KrunfwError(`Library not found: ${source}`, { hint: 'Run krunfw-mac build first, or pass the build\'s --output-dir.' });
  }

  const files: Array<Extract<InstallAction, { kind: 'file' }>> = [
    { kind: 'file', path: join(libraryDirectory, request.names.fileName), source, mode: 0o755, sha256: await sha256File(source) },
  ];
  for (const extra of request.extraFiles ?? []) {
    checkRelativePath(extra.path, 'install path');
    files.push({ kind: 'file', path: join(root, extra.path), source: extra.source, mode: 0o644, sha256: await sha256File(extra.source) });
  }
  const symlinks: Array<Extract<InstallAction, { kind: 'symlink' }>> = request.names.links.map(([link, target]) => ({
    kind: 'symlink',
    path: join(libraryDirectory, link),
    target,
  }));

  const keepRecord = request.keepRecord ?? true;
  const recordPath = keepRecord ? recordPathFor(root, request.variant) : undefined;
  const targetDirectories = [...new Set([...files, ...symlinks].map((action) => dirname(action.path)).concat(recordPath ? [dirname(recordPath)] : []))];
  const created = new Set<string>();
  for (const directory of targetDirectories) for (const missing of await missingDirectories(directory)) created.add(missing);
  const directories: InstallAction[] = [...created].sort((a, b) => a.split(sep).length - b.split(sep).length).map((path) => ({ kind: 'directory', path }));

  const actions = [...directories, ...files, ...symlinks];
  let record: InstallRecord | undefined;
  if (recordPath) {
    const relativeTo = (path: string) => relative(root, path) || '.';
    // Directories above the prefix, such as a new DESTDIR, are not the install's to remove.
    const insidePrefix = (path: string) => path === root || path.startsWith(root + sep);
    record = {
      format: 1,
      tool: `krunfw-mac ${toolVersion()}`,
      files: files.map((action) => ({ path: relativeTo(action.path), sha256: action.sha256 })),
      symlinks: symlinks.map((action) => ({ path: relativeTo(action.path), target: action.target })),
      directories: directories.filter((action) => insidePrefix(action.path)).map((action) => relativeTo(action.path)),
    };
    const previous = await readRecord(recordPath);
    if (previous) {
      const planned = new Set([...record.files, ...record.symlinks].map((entry) => entry.path));
      for (const entry of previous.files) {
        if (!planned.has(entry.path) && (await isUnchanged(root, entry)) === undefined) record.files.push(entry);
      }
      for (const entry of previous.symlinks) {
        if (!planned.has(entry.path) && (await isUnchanged(root, entry)) === undefined) record.symlinks.push(entry);
      }
      record.directories = [...new Set([...previous.directories, ...record.directories])];
    }
  }
  return { root, os: request.os, libdir: request.libdir, actions, recordPath, record, unwritable: await findUnwritable(targetDirectories) };
}

/** Copies a file under a temporary name beside its destination and renames it into place once it is complete. */
async function installFile(action: Extract<InstallAction, { kind: 'file' }>, signal?: AbortSignal): Promise<void> {
  const temporary = temporaryPathBeside(action.path);
  try {
    await copyFile(action.source, temporary);
    await chmod(temporary, action.mode);
    if ((await sha256File(temporary)) !== action.sha256) {
      throw new KrunfwError(`${action.source} changed while it was being installed`, { hint: 'Wait until the build is finished, then install again.' });
    }
    signal?.throwIfAborted();
    await rename(temporary, action.path);
  } finally {
    await rm(temporary, { force: true });
  }
}

/**
 * Makes the changes of a plan in order, then writes the install record.
 * Every file is renamed into place only when complete and every symlink is
 * replaced in one rename, so a failure or an abort at any point leaves each
 * path either as it was or as planned.
 */
export async function applyInstall(plan: InstallPlan, options: ApplyOptions = {}): Promise<void> {
  if (plan.unwritable) throw notWritableError(plan.unwritable.path, plan.unwritable.code, plan.os, plan.libdir);
  try {
    for (const action of plan.actions) {
      options.onAction?.(action);
      options.signal?.throwIfAborted();
      if (action.kind === 'directory') {
        await mkdir(action.path).catch(async (error: NodeJS.ErrnoException) => {
          if (error.code !== 'EEXIST' || (await pathKind(action.path)) !== 'directory') throw error;
        });
      } else if (action.kind === 'file') {
        await installFile(action, options.signal);
      } else {
        await symlinkAtomic(action.target, action.path);
      }
    }
    if (plan.recordPath && plan.record) await writeFileAtomic(plan.recordPath, JSON.stringify(plan.record, null, 2) + '\n');
  } catch (error) {
    // copyFile reports the source in `path` and the destination in `dest`.
    const errno = error as NodeJS.ErrnoException & { dest?: string };
    if (errno.code && NOT_WRITABLE_CODES.has(errno.code)) {
      throw notWritableError(errno.dest ?? errno.path ?? plan.root, errno.code, plan.os, plan.libdir, error);
    }
    throw error;
  }
}

/** Reads the install record of a prefix and sorts its entries into those to remove and those to leave alone. */
export async function planUninstall(request: { prefix: string; destdir?: string; variant: Variant }): Promise<UninstallPlan> {
  const root = installRoot(request.prefix, request.destdir);
  const recordPath = recordPathFor(root, request.variant);
  const record = await readRecord(recordPath);
  if (!record) {
    throw new KrunfwError(`No install record found: ${recordPath}`, {
      hint: `krunfw-mac install has not installed ${libraryBaseName(request.variant)} into ${root}, or it was uninstalled already. Check --prefix, --destdir and --variant.`,
    });
  }
  const plan: UninstallPlan = { root, recordPath, remove: [], skip: [], directories: [] };
  const entries = [
    ...record.files.map((entry) => ({ ...entry, kind: 'file' as const })),
    ...record.symlinks.map((entry) => ({ ...entry, kind: 'symlink' as const })),
  ];
  for (const entry of entries) {
    const reason = await isUnchanged(root, entry);
    const item = { kind: entry.kind, path: join(root, entry.path) };
    if (reason === undefined) plan.remove.push(item);
    else plan.skip.push({ ...item, reason });
  }
  plan.directories = record.directories.map((path) => join(root, path)).sort((a, b) => b.split(sep).length - a.split(sep).length);
  return plan;
}

/**
 * Removes what the install record lists and is unchanged, the record, and
 * then each directory the installs created once it is empty. Returns the
 * directories that were removed.
 */
export async function applyUninstall(plan: UninstallPlan, onRemove?: (path: string) => void): Promise<string[]> {
  const removedDirectories: string[] = [];
  try {
    for (const entry of plan.remove) {
      onRemove?.(entry.path);
      await rm(entry.path, { force: true });
    }
    onRemove?.(plan.recordPath);
    await rm(plan.recordPath, { force: true });
    for (const directory of plan.directories) {
      try {
        await rmdir(directory);
        removedDirectories.push(directory);
      } catch (error) {
        // A directory that now contains other files, or is gone already, stays as it is.
        const code = (error as NodeJS.ErrnoException).code;
        if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOENT') throw error;
      }
    }
  } catch (error) {
    const errno = error as NodeJS.ErrnoException;
    if (errno.code && NOT_WRITABLE_CODES.has(errno.code)) {
      throw new KrunfwError(`Cannot remove ${errno.path ?? plan.root}: ${describeCode(errno.code)}`, {
        hint: 'Run the command again with the rights it was installed with, such as sudo.',
        cause: error,
      });
    }
    throw error;
  }
  return removedDirectories;
}

function provenanceError(path: string, field: string): KrunfwError {
  return new KrunfwError(`${path} is not a krunfw-mac provenance file: ${field} is missing or invalid`, {
    hint: 'Point the command at the output directory of a finished krunfw-mac build.',
  });
}

/** Reads and checks the fields of provenance.json that installing and packaging rely on. */
export async function readProvenance(path: string): Promise<Provenance> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new KrunfwError(`Provenance file not found: ${path}`, {
      hint: 'Run krunfw-mac build first, or pass the output directory of a finished build with --output-dir.',
      cause: error,
    });
  }
  let value: Provenance;
  try {
    value = JSON.parse(text) as Provenance;
  } catch (error) {
    throw new KrunfwError(`${path} is not valid JSON`, { hint: 'Run krunfw-mac build again to rewrite it.', cause: error });
  }
  const isText = (item: unknown) => typeof item === 'string' && item.length > 0;
  const isSha256 = (item: unknown) => typeof item === 'string' && /^[0-9a-f]{64}$/.test(item);
  const checks: Array<[string, boolean]> = [
    ['variant', value?.variant === 'generic' || value?.variant === 'sev'],
    ['arch', isText(value?.arch)],
    ['abi', Number.isInteger(value?.abi)],
    ['kernel.version', isText(value?.kernel?.version)],
    ['kernel.tarball', isText(value?.kernel?.tarball?.name) && isSha256(value?.kernel?.tarball?.sha256)],
    ['patches', Array.isArray(value?.patches) && value.patches.every((patch) => isText(patch?.name) && isSha256(patch?.sha256))],
    ['config', isSha256(value?.config?.sha256) && Array.isArray(value?.config?.fragments)],
    ['bundle', isText(value?.bundle?.file) && isSha256(value?.bundle?.sha256) && isSha256(value?.bundle?.sourceSha256)],
    ['bundle.loadAddress', /^0x[0-9a-f]+$/.test(value?.bundle?.loadAddress ?? '') && /^0x[0-9a-f]+$/.test(value?.bundle?.entryAddress ?? '')],
    ['library', isText(value?.library?.file) && isText(value?.library?.soname) && isSha256(value?.library?.sha256)],
    ['sev', value?.variant !== 'sev' || [value?.sev?.qboot, value?.sev?.initrd].every((blob) => isText(blob?.source) && isSha256(blob?.sourceSha256))],
  ];
  const failed = checks.find(([, passed]) => !passed);
  if (failed) throw provenanceError(path, failed[0]);
  return value;
}

const LINUX_FILE_PATTERN = /^libkrunfw(?:-sev)?\.so\.(\d+)\.(\d+)\.(\d+)$/;
const DARWIN_FILE_PATTERN = /^libkrunfw(?:-sev)?\.(\d+)\.dylib$/;

/**
 * Reads the OS and version from a library's file name. A dylib's name
 * carries only the ABI, so its minor and patch versions are returned as 0.
 */
export function parseLibraryFileName(file: string): { os: TargetOs; version: LibraryVersion } | undefined {
  const linux = LINUX_FILE_PATTERN.exec(file);
  if (linux) return { os: 'linux', version: { abi: Number(linux[1]), minor: Number(linux[2]), patch: Number(linux[3]) } };
  const darwin = DARWIN_FILE_PATTERN.exec(file);
  if (darwin) return { os: 'darwin', version: { abi: Number(darwin[1]), minor: 0, patch: 0 } };
  return undefined;
}

/** A finished build's library, as its provenance file describes it. */
export interface BuiltLibrary {
  directory: string;
  provenance: Provenance;
  os: TargetOs;
  names: LibraryNames;
}

/**
 * Finds the library in a build's output directory from its provenance file
 * and checks that the file is the one the build made, so a library linked
 * by hand afterwards is not installed in its name.
 */
export async function findBuiltLibrary(outputDirectory: string): Promise<BuiltLibrary> {
  const provenancePath = join(outputDirectory, 'provenance.json');
  const provenance = await readProvenance(provenancePath);
  const file = provenance.library.file;
  const parsed = parseLibraryFileName(file);
  const names = parsed && libraryNames(parsed.os, provenance.variant as Variant, parsed.version);
  if (!parsed || !names || names.fileName !== file || parsed.version.abi !== provenance.abi) {
    throw new KrunfwError(`${provenancePath} names a library this krunfw-mac does not install: ${file} (ABI ${provenance.abi}, variant ${provenance.variant})`, {
      hint: 'Build again with this version of krunfw-mac.',
    });
  }
  const libraryPath = join(outputDirectory, file);
  let actual: string;
  try {
    actual = await sha256File(libraryPath);
  } catch (error) {
    throw new KrunfwError(`Library not found: ${libraryPath}`, { hint: 'Run krunfw-mac build again to link it.', cause: error });
  }
  if (actual !== provenance.library.sha256) {
    throw new KrunfwError(`${libraryPath} is not the library the build recorded in provenance.json`, {
      details: `expected SHA-256 ${provenance.library.sha256}\nactual SHA-256   ${actual}`,
      hint: 'It was changed or linked again after the build. Run krunfw-mac build again to make the two match.',
    });
  }
  return { directory: outputDirectory, provenance, os: parsed.os, names };
}
