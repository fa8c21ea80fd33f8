// SPDX-License-Identifier: LGPL-2.1-only
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { KrunfwError } from '../errors.js';
import { LocalExecutor } from '../exec/local.js';
import { detectHost } from '../host.js';
import { type TargetOs, type Variant, libraryNames } from '../library.js';
import { linkLibrary } from '../link.js';
import { compilerCommand } from '../plan.js';
import { ABI_VERSION, LIBRARY_MINOR_VERSION, LIBRARY_PATCH_VERSION } from '../versions.js';
import { type GlobalOptions, printJson, runCommand } from './output.js';

interface LinkArguments extends GlobalOptions {
  sources: string[];
  outputDir: string;
  targetOs?: TargetOs;
  variant: Variant;
  installName?: string;
}

/** The clang target for a macOS dylib linked on another OS: Apple Silicon, macOS 11 or later. */
export const DARWIN_CROSS_TARGET = 'arm64-apple-macos11';

export function linkCommand(yargs: Argv): Argv {
  return yargs.command<LinkArguments>(
    'link <sources..>',
    'Compile kernel.c (and for SEV qboot.c and initrd.c) into libkrunfw',
    (command) =>
      command
        .positional('sources', { type: 'string', array: true, demandOption: true, description: 'C bundle files' })
        .option('output-dir', { alias: 'o', type: 'string', default: '.', description: 'Directory for the library and its symlinks' })
        .option('target-os', { choices: ['linux', 'darwin'] as const, description: 'Library format: linux (.so) or darwin (.dylib) [default: this host\'s]; darwin on Linux cross-links with clang and lld' })
        .option('variant', { choices: ['generic', 'sev'] as const, default: 'generic' as const, description: 'Library name: libkrunfw or libkrunfw-sev' })
        .option('install-name', { type: 'string', description: 'Install name of a darwin dylib [default: /usr/local/lib/libkrunfw.5.dylib]; e.g. @rpath/libkrunfw.5.dylib' }),
    async (argv) => {
      await runCommand(argv, async () => {
        const host = detectHost();
        const targetOs: TargetOs = argv.targetOs ?? (host.os === 'darwin' ? 'darwin' : 'linux');
        if (targetOs === 'darwin' && argv.variant === 'sev') {
          throw new KrunfwError('The SEV variant has no macOS library: libkrun supports AMD SEV guests only on Linux hosts.', {
            hint: 'Link the generic variant for darwin, or the SEV variant with --target-os linux.',
          });
        }
        const crossTarget = targetOs === 'darwin' && host.os !== 'darwin' ? DARWIN_CROSS_TARGET : undefined;
        const version = { abi: ABI_VERSION, minor: LIBRARY_MINOR_VERSION, patch: LIBRARY_PATCH_VERSION };
        const names = libraryNames(targetOs, argv.variant, version);
        const cc = crossTarget && !process.env.CC ? ['clang'] : compilerCommand(process.env);
        const executor = new LocalExecutor();
        const path = await linkLibrary(
          {
            sources: argv.sources.map((source) => resolve(source)),
            outputDirectory: resolve(argv.outputDir),
            targetOs,
            version,
            names,
            cc,
            installName: argv.installName,
            crossTarget,
          },
          (command) => executor.run(command),
        );
        if (argv.json) printJson({ library: path, targetOs, soname: names.soname, links: names.links.map(([link]) => link) });
        else process.stderr.write(`Linked ${path}\n`);
      });
    },
  );
}
