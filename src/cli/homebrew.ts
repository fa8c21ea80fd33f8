// SPDX-License-Identifier: LGPL-2.1-only
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { LocalExecutor } from '../exec/local.js';
import { runHomebrewHook } from '../homebrew.js';
import { detectHost } from '../host.js';
import type { TargetOs } from '../library.js';
import { compilerCommand } from '../plan.js';
import { DARWIN_CROSS_TARGET } from './link.js';
import { type GlobalOptions, printJson, runCommand } from './output.js';

interface HomebrewArguments extends GlobalOptions {
  prefix: string;
  optPrefix?: string;
  directory: string;
  targetOs?: TargetOs;
}

export function homebrewCommand(yargs: Argv): Argv {
  return yargs.command<HomebrewArguments>(
    'homebrew',
    'Check, compile with CC, self-test and install an unpacked prebuilt archive',
    (command) =>
      command
        .option('prefix', { type: 'string', demandOption: true, description: 'Where to install: the formula\'s prefix' })
        .option('opt-prefix', { type: 'string', description: 'Prefix the macOS install name points into: the formula\'s opt prefix [default: --prefix]' })
        .option('directory', { type: 'string', default: '.', description: 'The unpacked prebuilt directory' })
        .option('target-os', { choices: ['linux', 'darwin'] as const, description: 'Library format [default: this host\'s]; darwin on Linux cross-links with clang and lld and skips the self-test' }),
    async (argv) => {
      await runCommand(argv, async (signal) => {
        const host = detectHost();
        const targetOs: TargetOs = argv.targetOs ?? (host.os === 'darwin' ? 'darwin' : 'linux');
        const crossTarget = targetOs === 'darwin' && host.os !== 'darwin' ? DARWIN_CROSS_TARGET : undefined;
        const prefix = resolve(argv.prefix);
        const result = await runHomebrewHook({
          directory: resolve(argv.directory),
          prefix,
          optPrefix: resolve(argv.optPrefix ?? prefix),
          targetOs,
          host,
          cc: crossTarget && !process.env.CC ? ['clang'] : compilerCommand(process.env),
          crossTarget,
          executor: new LocalExecutor(),
          signal,
          report: argv.json ? undefined : (message) => process.stderr.write(`${message}\n`),
        });
        if (argv.json) printJson(result);
      });
    },
  );
}
