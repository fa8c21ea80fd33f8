// SPDX-License-Identifier: LGPL-2.1-only
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { applyUninstall, planUninstall } from '../install.js';
import type { Variant } from '../library.js';
import { type GlobalOptions, printJson, runCommand } from './output.js';

interface UninstallArguments extends GlobalOptions {
  prefix: string;
  destdir?: string;
  variant: Variant;
  dryRun: boolean;
}

export function uninstallCommand(yargs: Argv): Argv {
  return yargs.command<UninstallArguments>(
    'uninstall',
    'Remove what krunfw-mac install put into a prefix',
    (command) =>
      command
        .option('prefix', { type: 'string', default: '/usr/local', description: 'Installation prefix' })
        .option('destdir', { type: 'string', description: 'Staging directory the prefix is placed under [env: DESTDIR]' })
        .option('variant', { choices: ['generic', 'sev'] as const, default: 'generic' as const, description: 'Which library to remove: libkrunfw or libkrunfw-sev' })
        .option('dry-run', { type: 'boolean', default: false, description: 'Print what would be removed and remove nothing' }),
    async (argv) => {
      await runCommand(argv, async () => {
        const plan = await planUninstall({
          prefix: resolve(argv.prefix),
          destdir: argv.destdir ?? (process.env.DESTDIR || undefined),
          variant: argv.variant,
        });
        if (argv.dryRun) {
          if (argv.json) {
            printJson({ dryRun: true, remove: plan.remove.map((entry) => entry.path), skip: plan.skip, record: plan.recordPath, directories: plan.directories });
            return;
          }
          const lines = [
            ...plan.remove.map((entry) => `would remove ${entry.path}`),
            `would remove the install record ${plan.recordPath}`,
            ...plan.directories.map((directory) => `would remove directory ${directory} if it is empty`),
            ...plan.skip.map((entry) => `would leave ${entry.path}: ${entry.reason}`),
          ];
          process.stdout.write(lines.join('\n') + '\n');
          return;
        }
        const directories = await applyUninstall(plan);
        if (argv.json) {
          printJson({ removed: plan.remove.map((entry) => entry.path), skipped: plan.skip, record: plan.recordPath, directories });
          return;
        }
        for (const entry of plan.skip) process.stderr.write(`warning: left ${entry.path}: ${entry.reason}\n`);
        process.stderr.write(`Removed ${plan.remove.length} file(s) and symlink(s) from ${plan.root}\n`);
      });
    },
  );
}
