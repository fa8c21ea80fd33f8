// SPDX-License-Identifier: LGPL-2.1-only
import type { Argv } from 'yargs';
import { discoverBuilders, userBuilderDirectory } from '../builders/registry.js';
import { type GlobalOptions, printJson, runCommand } from './output.js';

interface BuildersArguments extends GlobalOptions {
  workDir?: string;
  builderFile?: string;
}

export function buildersCommand(yargs: Argv): Argv {
  return yargs.command<BuildersArguments>(
    'builders',
    'List the builder VM definitions found, where each came from and its image',
    (command) =>
      command
        .option('work-dir', { type: 'string', description: 'Work directory whose builders/ is searched [default: current directory]' })
        .option('builder-file', { type: 'string', description: 'Also load this builder definition file' }),
    async (argv) => {
      await runCommand(argv, async () => {
        const builders = await discoverBuilders({ workDirectory: argv.workDir ?? process.cwd(), builderFile: argv.builderFile });
        if (argv.json) {
          printJson(builders.map((builder) => ({ name: builder.definition.name, origin: builder.origin, path: builder.path, image: builder.definition.image, description: builder.definition.description })));
          return;
        }
        for (const builder of builders) {
          process.stdout.write(`${builder.definition.name}\n  ${builder.definition.description}\n  image:  ${builder.definition.image}\n  from:   ${builder.origin} (${builder.path})\n`);
        }
        process.stdout.write(`\nAdd a builder as JSON in builders/ of the work directory or in ${userBuilderDirectory()}.\n`);
      });
    },
  );
}
