// SPDX-License-Identifier: LGPL-2.1-only
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { type SourcesMode, writeDist } from '../dist.js';
import { KrunfwError } from '../errors.js';
import { detectHost } from '../host.js';
import { defaultCacheDirectory } from '../plan.js';
import { type BuildOutputArguments, resolveBuildOutput, withBuildOutputOptions } from './install.js';
import { type GlobalOptions, printJson, runCommand } from './output.js';

interface DistArguments extends GlobalOptions, BuildOutputArguments {
  archiveDir: string;
  sources?: string;
  kernelTarball?: string;
  kernelUrl?: string;
}

function sourcesMode(value: string | undefined): SourcesMode | undefined {
  if (value === undefined) return undefined;
  if (value === '' || value === 'full') return 'full';
  if (value === 'reference') return 'reference';
  throw new KrunfwError(`Invalid --sources value: ${value}`, { hint: 'Pass --sources to include the kernel tarball, or --sources=reference for its URL and SHA-256 only.' });
}

/** Returns the archives' timestamp: SOURCE_DATE_EPOCH when set, as reproducible builds define it, else 0. */
function archiveTime(env: NodeJS.ProcessEnv): number {
  const value = env.SOURCE_DATE_EPOCH;
  if (value === undefined || value === '') return 0;
  if (!/^\d+$/.test(value)) throw new KrunfwError(`Invalid SOURCE_DATE_EPOCH value: ${value}`, { hint: 'Set it to a whole number of seconds since 1970, or unset it.' });
  return Number(value);
}

export function distCommand(yargs: Argv): Argv {
  return yargs.command<DistArguments>(
    'dist',
    'Pack a build as libkrunfw-prebuilt-ARCH.tar.gz (with --sources, its GPL source too)',
    (command) =>
      withBuildOutputOptions(command)
        .option('archive-dir', { type: 'string', default: '.', description: 'Directory the archives are written to' })
        .option('sources', { type: 'string', description: 'Also write libkrunfw-sources-ARCH.tar.gz with the kernel tarball, patches and config; --sources=reference names the tarball\'s URL and SHA-256 instead of including it' })
        .option('kernel-tarball', { type: 'string', description: 'The build\'s kernel tarball, if it is no longer where the build found it' })
        .option('kernel-url', { type: 'string', description: 'Where the kernel tarball is published, for --sources=reference after a build from a local tarball' }),
    async (argv) => {
      await runCommand(argv, async () => {
        const archiveDirectory = resolve(argv.archiveDir);
        await mkdir(archiveDirectory, { recursive: true });
        const result = await writeDist({
          buildOutput: resolveBuildOutput(argv),
          archiveDirectory,
          sources: sourcesMode(argv.sources),
          kernelTarball: argv.kernelTarball && resolve(argv.kernelTarball),
          kernelUrl: argv.kernelUrl,
          cacheDirectory: defaultCacheDirectory(detectHost(), process.env),
          mtime: archiveTime(process.env),
        });
        if (argv.json) {
          printJson(result);
          return;
        }
        process.stderr.write(`Wrote ${result.prebuilt.path}\n  sha256 ${result.prebuilt.sha256}\n`);
        if (result.sources) process.stderr.write(`Wrote ${result.sources.path}\n  sha256 ${result.sources.sha256}\n`);
      });
    },
  );
}
