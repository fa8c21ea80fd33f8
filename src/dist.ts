// SPDX-License-Identifier: LGPL-2.1-only
import { readFile, readdir, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, sep } from 'node:path';
import { KrunfwError } from './errors.js';
import { sha256, sha256File } from './hash.js';
import { readProvenance } from './install.js';
import { libraryBaseName, type Variant } from './library.js';
import type { Provenance } from './provenance.js';
import { KERNEL_TARGETS } from './stages/kernel.js';
import { type TarEntry, writeTarGz } from './tar.js';
import { REPRODUCIBLE_BUILD_ENV, packageRoot } from './versions.js';

/** Whether the GPL source archive carries the kernel tarball itself or only where to download it. */
export type SourcesMode = 'full' | 'reference';

export interface DistRequest {
  /** A finished build's output directory: kernel.c, kernel.config and provenance.json. */
  buildOutput: string;
  /** Directory the archives are written to. */
  archiveDirectory: string;
  /** Also write the GPL source archive. */
  sources?: SourcesMode;
  /** The kernel tarball, when neither the path in provenance.json nor the download cache has it. */
  kernelTarball?: string;
  /** URL the tarball is published at, for a reference when the build used a local tarball. */
  kernelUrl?: string;
  /** The download cache, where a downloaded tarball is looked for. */
  cacheDirectory: string;
  /** Modification time of every archive entry, in seconds since the epoch. */
  mtime: number;
}

export interface ArchiveResult {
  path: string;
  sha256: string;
  /** The archive's one top-level directory. */
  directory: string;
  /** Every file in it, relative to that directory. */
  files: string[];
}

export interface DistResult {
  prebuilt: ArchiveResult;
  sources?: ArchiveResult & { mode: SourcesMode };
}

/** A file in an archive, relative to its top-level directory. */
export interface ArchiveFile {
  path: string;
  source: { file: string } | { data: Uint8Array };
  executable?: boolean;
}

/**
 * License texts by their name in the archives and their file in LICENSES/.
 * Homebrew copies files with such names from the top of a build into the
 * formula's prefix.
 */
export const LICENSE_FILES: ReadonlyArray<{ name: string; text: string }> = [
  { name: 'LICENSE-GPL-2.0-only.txt', text: 'GPL-2.0-only.txt' },
  { name: 'LICENSE-LGPL-2.1-only.txt', text: 'LGPL-2.1-only.txt' },
];

export function prebuiltDirectoryName(provenance: Pick<Provenance, 'variant' | 'arch'>): string {
  return `${libraryBaseName(provenance.variant as Variant)}-prebuilt-${provenance.arch}`;
}

export function sourcesDirectoryName(provenance: Pick<Provenance, 'variant' | 'arch'>): string {
  return `${libraryBaseName(provenance.variant as Variant)}-sources-${provenance.arch}`;
}

/**
 * Lists the C files of a bundle with the SHA-256 the build recorded for
 * each: kernel.c, and for the SEV variant the firmware and initrd bundles.
 */
export function bundleSourceFiles(provenance: Provenance): Array<{ file: string; sha256: string }> {
  const files = [{ file: provenance.bundle.file, sha256: provenance.bundle.sourceSha256 }];
  if (provenance.sev) {
    files.push({ file: provenance.sev.qboot.source, sha256: provenance.sev.qboot.sourceSha256 });
    files.push({ file: provenance.sev.initrd.source, sha256: provenance.sev.initrd.sourceSha256 });
  }
  return files;
}

function text(value: string): { data: Uint8Array } {
  return { data: Buffer.from(value) };
}

/** Appends SHA256SUMS, in the format `sha256sum -c` reads, listing every other file. */
async function withChecksums(files: ArchiveFile[]): Promise<ArchiveFile[]> {
  const lines: string[] = [];
  const sorted = [...files].sort((a, b) => Buffer.compare(Buffer.from(a.path), Buffer.from(b.path)));
  for (const file of sorted) {
    const digest = 'data' in file.source ? sha256(file.source.data) : await sha256File(file.source.file);
    lines.push(`${digest}  ${file.path}`);
  }
  return [...files, { path: 'SHA256SUMS', source: text(lines.join('\n') + '\n') }];
}

async function writeArchive(archiveDirectory: string, directory: string, files: ArchiveFile[], mtime: number): Promise<ArchiveResult> {
  const complete = await withChecksums(files);
  const entries: TarEntry[] = complete.map((file) => ({
    kind: 'file',
    path: `${directory}/${file.path}`,
    source: file.source,
    executable: file.executable,
  }));
  const path = join(archiveDirectory, `${directory}.tar.gz`);
  await writeTarGz(path, entries, { mtime });
  return { path, sha256: await sha256File(path), directory, files: complete.map((file) => file.path).sort() };
}

/** Checks that a file is still the one provenance.json recorded, naming both hashes if not. */
async function checkRecordedFile(path: string, expected: string, what: string): Promise<void> {
  let actual: string;
  try {
    actual = await sha256File(path);
  } catch (error) {
    throw new KrunfwError(`${what} not found: ${path}`, { hint: 'Run krunfw-mac build again, then dist.', cause: error });
  }
  if (actual !== expected) {
    throw new KrunfwError(`${what} ${path} changed after the build`, {
      details: `provenance.json SHA-256 ${expected}\nactual SHA-256          ${actual}`,
      hint: 'Run krunfw-mac build again so that the build output and provenance.json match, then dist.',
    });
  }
}

function licenseFiles(): ArchiveFile[] {
  return LICENSE_FILES.map(({ name, text: file }) => ({ path: name, source: { file: join(packageRoot(), 'LICENSES', file) } }));
}

function licenseSummary(provenance: Provenance): string {
  return `libkrunfw ${provenance.variant === 'sev' ? '(SEV variant) ' : ''}built by krunfw-mac ${provenance.tool.version}

The C code of the bundle (${provenance.bundle.file}), the library compiled from
it, and krunfw-mac itself are licensed under the GNU Lesser General Public
License, version 2.1 only (LGPL-2.1-only): see LICENSE-LGPL-2.1-only.txt.
Third-party packages that krunfw-mac uses carry their own license files in
their directories.

The data that the bundle carries is a Linux ${provenance.kernel.version} kernel, licensed under
the GNU General Public License, version 2 only (GPL-2.0-only): see
LICENSE-GPL-2.0-only.txt. Whoever distributes this archive, or a library
built from it, must also offer the kernel's complete corresponding source:
the kernel tarball (SHA-256 ${provenance.kernel.tarball.sha256}),
the patches and the kernel configuration that provenance.json lists.
\`krunfw-mac dist --sources\` writes an archive with all of them.
`;
}

function prebuiltGuide(provenance: Provenance, files: string[]): string {
  return `${prebuiltDirectoryName(provenance)}: Linux ${provenance.kernel.version} for ${provenance.arch}, libkrunfw ABI ${provenance.abi}

This directory holds libkrunfw as C source. ${files.join(', ')} carr${files.length === 1 ? 'ies' : 'y'} the guest
kernel as data and compile${files.length === 1 ? 's' : ''} into the library without any kernel toolchain.

To check, compile and install it (a Homebrew formula's install step does
the same):

  node tool/bin/krunfw-mac.js homebrew --prefix PREFIX

This checks provenance.json and SHA256SUMS, compiles the bundle with $CC
(default cc) into ${libraryBaseName(provenance.variant as Variant)}.${provenance.abi}.dylib on macOS or ${libraryBaseName(provenance.variant as Variant)}.so.${provenance.abi} on Linux,
runs the self-test, and installs the library, its symlinks and the license
texts into PREFIX. It needs Node.js 20.5 or later and a C compiler, and no
network. \`--opt-prefix DIR\` sets the directory the macOS install name
points into (default: PREFIX).

Files:
  ${files.join(', ')}   the kernel bundle
  provenance.json        kernel tarball, patches, configuration and hashes of this build
  LICENSE, LICENSE-*.txt the licenses
  SHA256SUMS             the SHA-256 of every other file (sha256sum -c SHA256SUMS)
  tool/                  krunfw-mac ${provenance.tool.version}, which runs the step above
`;
}

/** Lists the files of a directory tree, following symlinks, leaving out any directory named in `skip`. */
async function listFiles(directory: string, skip: (relativePath: string) => boolean = () => false): Promise<string[]> {
  const found: string[] = [];
  const walk = async (relativeDirectory: string): Promise<void> => {
    for (const name of await readdir(join(directory, relativeDirectory))) {
      const relativePath = relativeDirectory ? `${relativeDirectory}/${name}` : name;
      const info = await stat(join(directory, relativePath));
      if (info.isDirectory()) {
        if (!skip(relativePath)) await walk(relativePath);
      } else if (info.isFile()) {
        found.push(relativePath);
      }
    }
  };
  await walk('');
  return found;
}

async function fileExists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}

/** Finds an installed package the way Node.js resolves it, without looking above the tool's own directory. */
async function resolvePackage(name: string, from: string, root: string): Promise<string | undefined> {
  for (let directory = from; ; directory = dirname(directory)) {
    const candidate = join(directory, 'node_modules', name);
    if (await fileExists(join(candidate, 'package.json'))) return candidate;
    if (directory === root || dirname(directory) === directory) return undefined;
  }
}

/** Returns the directories of every runtime dependency of the package at `root`, direct or indirect. */
async function dependencyDirectories(root: string): Promise<string[]> {
  const found = new Set<string>();
  const queue = [root];
  while (queue.length > 0) {
    const packageDirectory = queue.shift()!;
    const manifest = JSON.parse(await readFile(join(packageDirectory, 'package.json'), 'utf8')) as {
      dependencies?: Record<string, string>;
      optionalDependencies?: Record<string, string>;
    };
    const optional = new Set(Object.keys(manifest.optionalDependencies ?? {}));
    for (const name of [...Object.keys(manifest.dependencies ?? {}), ...optional]) {
      const directory = await resolvePackage(name, packageDirectory, root);
      if (directory === undefined) {
        if (optional.has(name)) continue;
        throw new KrunfwError(`Cannot bundle krunfw-mac: its dependency ${name} is not installed under ${root}`, {
          hint: `Run npm ci (or npm install --omit=dev) in ${root}.`,
        });
      }
      if (!found.has(directory)) {
        found.add(directory);
        queue.push(directory);
      }
    }
  }
  return [...found];
}

/**
 * Lists the files of this krunfw-mac that the Homebrew hook needs: the
 * compiled code, the self-test source, package.json, the licenses, and every
 * runtime dependency in the same node_modules layout. They go into the
 * prebuilt archive, so a formula needs only Node.js and a C compiler.
 */
export async function toolFiles(root: string = packageRoot()): Promise<ArchiveFile[]> {
  const paths = ['package.json', 'LICENSE', 'bin/krunfw-mac.js', 'src/selftest/selftest.c'];
  paths.push(...(await listFiles(join(root, 'LICENSES'))).map((file) => `LICENSES/${file}`));
  const compiled = await listFiles(join(root, 'dist', 'src')).catch(() => []);
  if (compiled.length === 0) {
    throw new KrunfwError(`Cannot bundle krunfw-mac: ${join(root, 'dist', 'src')} contains no compiled code`, { hint: `Run npm run build in ${root}.` });
  }
  paths.push(...compiled.filter((file) => file.endsWith('.js')).map((file) => `dist/src/${file}`));
  for (const directory of await dependencyDirectories(root)) {
    const packagePath = relative(root, directory).split(sep).join('/');
    // A nested node_modules directory contains other packages, which are collected on their own.
    const files = await listFiles(directory, (path) => path === 'node_modules');
    paths.push(...files.map((file) => `${packagePath}/${file}`));
  }
  const result: ArchiveFile[] = [];
  for (const path of paths) {
    const file = join(root, ...path.split('/'));
    if (!(await fileExists(file))) throw new KrunfwError(`Cannot bundle krunfw-mac: ${file} is missing`, { hint: `Reinstall krunfw-mac in ${root}.` });
    result.push({ path: `tool/${path}`, source: { file } });
  }
  return result;
}

/** Writes `<library>-prebuilt-<arch>.tar.gz`: the bundle, provenance, licenses, the hook and SHA256SUMS. */
export async function writePrebuiltArchive(request: DistRequest, provenance: Provenance): Promise<ArchiveResult> {
  const bundleFiles = bundleSourceFiles(provenance);
  const files: ArchiveFile[] = [];
  for (const bundle of bundleFiles) {
    await checkRecordedFile(join(request.buildOutput, bundle.file), bundle.sha256, 'Bundle');
    files.push({ path: bundle.file, source: { file: join(request.buildOutput, bundle.file) } });
  }
  files.push(
    { path: 'provenance.json', source: { file: join(request.buildOutput, 'provenance.json') } },
    { path: 'LICENSE', source: text(licenseSummary(provenance)) },
    ...licenseFiles(),
    { path: 'BUILDING', source: text(prebuiltGuide(provenance, bundleFiles.map((bundle) => bundle.file))) },
    ...(await toolFiles()),
  );
  return writeArchive(request.archiveDirectory, prebuiltDirectoryName(provenance), files, request.mtime);
}

function isUrl(value: string): boolean {
  return /^(https?|ftp):\/\//.test(value);
}

/** Finds the build's kernel tarball: the given file, the local path the build used, or the download cache. */
async function locateKernelTarball(request: DistRequest, provenance: Provenance): Promise<string> {
  const name = provenance.kernel.tarball.name;
  const candidate = request.kernelTarball
    ?? (isUrl(name) ? join(request.cacheDirectory, 'kernels', basename(new URL(name).pathname)) : name);
  if (!(await fileExists(candidate))) {
    throw new KrunfwError(`Kernel tarball not found: ${candidate}`, {
      hint: `The build used ${name}. Pass that file with --kernel-tarball, or use --sources=reference to name its URL and SHA-256 instead.`,
    });
  }
  await checkRecordedFile(candidate, provenance.kernel.tarball.sha256, 'Kernel tarball');
  return candidate;
}

/** Resolves a path recorded in provenance.json: relative paths are relative to krunfw-mac's own directory. */
function recordedPath(name: string): string {
  return isAbsolute(name) ? name : join(packageRoot(), name);
}

/**
 * Lays out the config fragments in the source archive. When the first two
 * are a common.config and an <arch>.config, as in a generic build, they go
 * to config/ so that `--config-dir config` rebuilds with them, and fragments
 * added with --config go to config/extra/. Any other list (an SEV build, or
 * the full config of a source tree) goes to config/ numbered in order.
 */
function configLayout(provenance: Provenance): { files: Array<{ path: string; name: string; sha256: string }>; buildArguments?: string[] } {
  const fragments = provenance.config.fragments;
  const standard = provenance.variant === 'generic'
    && fragments.length >= 2
    && basename(fragments[0]!.name) === 'common.config'
    && basename(fragments[1]!.name) === `${provenance.arch}.config`;
  const numbered = (index: number, name: string) => `${String(index + 1).padStart(2, '0')}-${basename(name)}`;
  const files = fragments.map((fragment, index) => {
    let path = `config/${numbered(index, fragment.name)}`;
    if (standard) path = index < 2 ? `config/${basename(fragment.name)}` : `config/extra/${numbered(index, fragment.name)}`;
    return { path, name: fragment.name, sha256: fragment.sha256 };
  });
  if (!standard) return { files };
  const extras = files.slice(2).flatMap((file) => ['--config', file.path]);
  return { files, buildArguments: ['--config-dir', 'config', ...extras] };
}

/** Returns a patch's path in the source archive: shipped series keep their place under patches/, others go to patches/ by name. */
function patchArchivePath(name: string): string {
  return !isAbsolute(name) && name.startsWith('patches/') ? name : `patches/${basename(name)}`;
}

function sourcesGuide(provenance: Provenance, tarball: { file: string; url?: string }, patches: string[], buildArguments?: string[]): string {
  const target = KERNEL_TARGETS[provenance.arch as keyof typeof KERNEL_TARGETS];
  const environment = Object.entries({ ...REPRODUCIBLE_BUILD_ENV, KBUILD_BUILD_VERSION: '1' }).map(([key, value]) => `${key}='${value}'`).join(' ');
  const crossNote = target ? `\n   Add CROSS_COMPILE=${target.crossPrefix} when building on another architecture.` : '';
  const obtain = tarball.url
    ? `1. Download ${tarball.url}\n   and check that its SHA-256 is ${provenance.kernel.tarball.sha256}\n   (KERNEL-SOURCE repeats both). Unpack it.`
    : `1. Unpack ${tarball.file} (SHA-256 ${provenance.kernel.tarball.sha256}).`;
  const patchSteps = patches.length > 0
    ? `2. In the unpacked tree, apply the patches in this order:\n${patches.map((patch) => `     patch -p1 < ${patch}`).join('\n')}`
    : '2. The build applied no patches.';
  // The one-command rebuild exists for a generic build from the shipped layout, with one flat patch series.
  const flatSeries = patches.every((patch) => /^patches\/[^/]+$/.test(patch));
  const krunfwBuild = buildArguments && flatSeries && !provenance.source
    ? `\nkrunfw-mac ${provenance.tool.version} runs the same steps in one command:\n\n  krunfw-mac build --arch ${provenance.arch} --kernel-tarball ${tarball.file} ${patches.length > 0 ? '--patches patches' : '--no-patches'} ${buildArguments.join(' ')} --max-cpus ${provenance.config.maxCpus}\n`
    : '';
  return `Complete corresponding source of the Linux ${provenance.kernel.version} kernel in ${prebuiltDirectoryName(provenance)}

The kernel is licensed GPL-2.0-only (LICENSE-GPL-2.0-only.txt).
provenance.json names every input of the build with its SHA-256, and
SHA256SUMS lists the SHA-256 of every file in this directory.

How to rebuild the kernel:

${obtain}
${patchSteps}
3. Copy kernel.config to .config in the tree and run
     make ARCH=${target?.makeArch ?? '<arch>'} olddefconfig
   kernel.config is the complete configuration the build used. It was
   expanded from the fragments in config/, applied in the order of
   provenance.json, with NR_CPUS=${provenance.config.maxCpus}.
4. Build with a fixed build identity, so that the result is the same:
     ${environment} make ARCH=${target?.makeArch ?? '<arch>'} ${target?.makeTarget ?? '<target>'}${crossNote}
5. ${target?.artifact ?? 'The kernel'} is the kernel that the library carries. \`krunfw-mac bundle\` turns it
   into the C bundle and \`krunfw-mac link\` compiles that into the library.
${krunfwBuild}`;
}

/**
 * Writes `<library>-sources-<arch>.tar.gz` with the kernel tarball (or its
 * URL and SHA-256), the patch series, the config fragments, the expanded
 * .config, provenance.json, the licenses and a guide to rebuilding. Each
 * input must still have the SHA-256 that provenance.json recorded.
 */
export async function writeSourcesArchive(request: DistRequest, provenance: Provenance, mode: SourcesMode): Promise<ArchiveResult> {
  const files: ArchiveFile[] = [];
  const tarballName = provenance.kernel.tarball.name;
  let tarball: { file: string; url?: string };
  if (mode === 'full') {
    const path = await locateKernelTarball(request, provenance);
    tarball = { file: basename(path) };
    files.push({ path: tarball.file, source: { file: path } });
  } else {
    const url = request.kernelUrl ?? (isUrl(tarballName) ? tarballName : undefined);
    if (url === undefined) {
      throw new KrunfwError(`The build used a local kernel tarball (${tarballName}), so there is no URL to refer to`, {
        hint: 'Pass the URL it is published at with --kernel-url, or use --sources to include the tarball itself.',
      });
    }
    tarball = { file: basename(new URL(url).pathname), url };
    files.push({
      path: 'KERNEL-SOURCE',
      source: text(`This archive does not include the kernel source tarball. Download it and check its SHA-256:\n\n  url     ${url}\n  sha256  ${provenance.kernel.tarball.sha256}\n`),
    });
  }

  const patches: string[] = [];
  for (const patch of provenance.patches) {
    const path = patchArchivePath(patch.name);
    if (patches.includes(path)) throw new KrunfwError(`Two patches of the build would both be stored as ${path}`, { hint: 'Rename one of them and build again.' });
    const file = recordedPath(patch.name);
    await checkRecordedFile(file, patch.sha256, 'Patch');
    patches.push(path);
    files.push({ path, source: { file } });
  }
  const config = configLayout(provenance);
  for (const fragment of config.files) {
    const file = recordedPath(fragment.name);
    await checkRecordedFile(file, fragment.sha256, 'Config fragment');
    files.push({ path: fragment.path, source: { file } });
  }
  const expanded = join(request.buildOutput, 'kernel.config');
  await checkRecordedFile(expanded, provenance.config.sha256, 'Kernel configuration');
  files.push(
    { path: 'kernel.config', source: { file: expanded } },
    { path: 'provenance.json', source: { file: join(request.buildOutput, 'provenance.json') } },
    ...licenseFiles(),
    { path: 'BUILDING', source: text(sourcesGuide(provenance, tarball, patches, config.buildArguments)) },
  );
  return writeArchive(request.archiveDirectory, sourcesDirectoryName(provenance), files, request.mtime);
}

/** Writes the prebuilt archive and, when asked, the GPL source archive, from a finished build. */
export async function writeDist(request: DistRequest): Promise<DistResult> {
  const provenance = await readProvenance(join(request.buildOutput, 'provenance.json'));
  const prebuilt = await writePrebuiltArchive(request, provenance);
  if (!request.sources) return { prebuilt };
  const sources = await writeSourcesArchive(request, provenance, request.sources);
  return { prebuilt, sources: { ...sources, mode: request.sources } };
}
