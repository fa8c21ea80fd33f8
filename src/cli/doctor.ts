// SPDX-License-Identifier: LGPL-2.1-only
import chalk from 'chalk';
import type { Argv } from 'yargs';
import { runDoctor } from '../doctor.js';
import { detectHost } from '../host.js';
import { compilerCommand, defaultVmSize } from '../plan.js';
import { type GlobalOptions, printJson, runCommand } from './output.js';

interface DoctorArguments extends GlobalOptions {
  vm: boolean;
  workDir?: string;
  mem?: number;
}

export function doctorCommand(yargs: Argv): Argv {
  return yargs.command<DoctorArguments>(
    'doctor',
    'Check this host for what a build needs, and print every check',
    (command) =>
      command
        .option('vm', { type: 'boolean', default: false, description: 'On Linux, check the krunvm builder VM path instead of the native build' })
        .option('work-dir', { type: 'string', description: 'Work directory whose free space is checked [default: current directory]' })
        .option('mem', { type: 'number', description: 'Builder VM memory in MiB to check for [default: half the host\'s, 2048 to 16384]' }),
    async (argv) => {
      await runCommand(argv, async () => {
        const host = detectHost();
        const results = await runDoctor({
          host,
          vm: argv.vm,
          workDirectory: argv.workDir ?? process.cwd(),
          memoryMiB: argv.mem ?? defaultVmSize(host).memoryMiB,
          cc: compilerCommand(process.env),
        });
        if (argv.json) {
          printJson({ ok: results.every((result) => result.ok), checks: results });
        } else {
          for (const result of results) {
            const mark = result.ok ? chalk.green('ok  ') : chalk.red('FAIL');
            process.stdout.write(`${mark} ${result.name}: ${result.detail}\n`);
            if (!result.ok && result.hint) process.stdout.write(`     fix: ${result.hint}\n`);
          }
        }
        if (!results.every((result) => result.ok)) process.exitCode = 1;
      });
    },
  );
}
