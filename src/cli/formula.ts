// SPDX-License-Identifier: LGPL-2.1-only
import type { Argv } from 'yargs';
import { DEFAULT_HOMEPAGE, archFromUrl, renderFormula } from '../formula.js';
import { type GlobalOptions, printJson, runCommand } from './output.js';

interface FormulaArguments extends GlobalOptions {
  url: string;
  sha256: string;
  version?: string;
  homepage?: string;
}

export function formulaCommand(yargs: Argv): Argv {
  return yargs.command<FormulaArguments>(
    'formula',
    'Print a Homebrew formula that installs libkrunfw from a prebuilt archive',
    (command) =>
      command
        // --version names the formula's version here, not krunfw-mac's.
        .version(false)
        .option('url', { type: 'string', demandOption: true, description: 'URL of libkrunfw-prebuilt-aarch64.tar.gz' })
        .option('sha256', { type: 'string', demandOption: true, description: 'SHA-256 of that archive' })
        .option('version', { type: 'string', description: 'Formula version [default: read from the URL]' })
        .option('homepage', { type: 'string', description: `Homepage shown by brew info [default: ${DEFAULT_HOMEPAGE}]` }),
    async (argv) => {
      await runCommand(argv, async () => {
        const arch = archFromUrl(argv.url);
        if (arch !== undefined && arch !== 'aarch64') {
          // Not an error: packagers try the formula's steps on other machines before publishing.
          process.stderr.write(`warning: the URL names a prebuilt archive for ${arch}, but the formula installs only on Apple Silicon (aarch64) Macs\n`);
        }
        const formula = renderFormula({ url: argv.url, sha256: argv.sha256.toLowerCase(), version: argv.version, homepage: argv.homepage });
        if (argv.json) printJson({ formula });
        else process.stdout.write(formula);
      });
    },
  );
}
