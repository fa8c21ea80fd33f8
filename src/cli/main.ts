// SPDX-License-Identifier: LGPL-2.1-only
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { toolVersion } from '../versions.js';
import { buildCommand } from './build.js';
import { buildersCommand } from './builders.js';
import { bundleCommand } from './bundle.js';
import { doctorCommand } from './doctor.js';
import { distCommand } from './dist.js';
import { formulaCommand } from './formula.js';
import { homebrewCommand } from './homebrew.js';
import { installCommand } from './install.js';
import { linkCommand } from './link.js';
import { uninstallCommand } from './uninstall.js';

/** Options (and positionals) that take several values; every other option keeps the last one given. */
const ARRAY_OPTIONS = new Set(['_', 'config', 'sources']);

function keepLastValues(argv: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(argv)) {
    if (Array.isArray(value) && !ARRAY_OPTIONS.has(key)) argv[key] = value[value.length - 1];
  }
}

export async function main(argv: string[]): Promise<void> {
  let cli: Argv = yargs(hideBin(argv))
    .scriptName('krunfw-mac')
    .usage('$0 <command> [options]\n\nBuilds libkrunfw, the Linux kernel packaged as a library for libkrun.')
    .option('verbose', { type: 'boolean', default: false, description: 'Stream all build output and show stack traces' })
    .option('json', { type: 'boolean', default: false, description: 'Print one machine-readable result on stdout' })
    .version(toolVersion())
    .strict()
    // A repeated single-value option keeps its last value, as in most command-line tools; array options still collect.
    .middleware(keepLastValues, true)
    .showHelpOnFail(false, 'Run the command with --help for its options.')
    .demandCommand(1, 'Name a command; see --help.')
    .recommendCommands()
    .wrap(Math.min(110, process.stdout.columns || 110))
    .help();
  const commands = [
    buildCommand, bundleCommand, linkCommand, installCommand, uninstallCommand,
    distCommand, homebrewCommand, formulaCommand, doctorCommand, buildersCommand,
  ];
  for (const register of commands) cli = register(cli);
  await cli.parseAsync();
}
