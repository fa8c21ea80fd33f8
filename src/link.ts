// SPDX-License-Identifier: LGPL-2.1-only
import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from './exec/executor.js';
import { temporaryPathBeside, symlinkAtomic } from './files.js';
import { type LibraryNames, type LibraryVersion, type TargetOs, formatLibraryVersion } from './library.js';

/** The sources, target and names of one link. */
export interface LinkRequest {
  /** C sources: kernel.c, plus qboot.c and initrd.c for the SEV variant. */
  sources: string[];
  outputDirectory: string;
  targetOs: TargetOs;
  version: LibraryVersion;
  names: LibraryNames;
  /** The C compiler and its leading arguments (from CC). */
  cc: string[];
  /** Mach-O install name; defaults to the leaf name under /usr/local/lib. */
  installName?: string;
  /** Set when linking for another OS than this host's (a darwin dylib on Linux uses clang and lld). */
  crossTarget?: string;
}

/** Returns a dylib's default install name: where `krunfw-mac install` puts it. */
export function defaultInstallName(names: LibraryNames): string {
  return `/usr/local/lib/${names.fileName}`;
}

/**
 * Returns the compiler call that links the bundle sources into the library.
 * The bundle is data, so optimisation buys nothing; `-s` / `-Wl,-x` strip
 * symbols that libkrun never looks up.
 */
export function linkCommand(request: LinkRequest, outputPath: string): Command {
  const common = [`-DABI_VERSION=${request.version.abi}`, '-O0', '-o', outputPath, ...request.sources];
  if (request.targetOs === 'linux') {
    return {
      argv: [...request.cc, '-fPIC', '-shared', '-s', `-Wl,-soname,${request.names.soname}`, ...common],
      cwd: request.outputDirectory,
    };
  }
  const cross = request.crossTarget ? [`--target=${request.crossTarget}`, '-fuse-ld=lld', '-nostdlib'] : [];
  return {
    argv: [
      ...request.cc,
      ...cross,
      '-dynamiclib',
      '-install_name',
      request.installName ?? defaultInstallName(request.names),
      '-compatibility_version',
      `${request.version.abi}`,
      '-current_version',
      formatLibraryVersion(request.version),
      '-Wl,-x',
      ...common,
    ],
    cwd: request.outputDirectory,
  };
}

/**
 * Links into a temporary file, then renames it and the symlinks into place,
 * so an interrupted link never leaves a truncated library under the real name.
 */
export async function linkLibrary(request: LinkRequest, run: (command: Command) => Promise<void>): Promise<string> {
  await mkdir(request.outputDirectory, { recursive: true });
  const finalPath = join(request.outputDirectory, request.names.fileName);
  const temporary = temporaryPathBeside(finalPath);
  try {
    await run(linkCommand(request, temporary));
    await rename(temporary, finalPath);
  } finally {
    await rm(temporary, { force: true });
  }
  for (const [link, target] of request.names.links) {
    await symlinkAtomic(target, join(request.outputDirectory, link));
  }
  return finalPath;
}
