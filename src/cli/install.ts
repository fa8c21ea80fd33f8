// SPDX-License-Identifier: LGPL-2.1-only
import { join, resolve } from 'node:path';
import type { Argv } from 'yargs';
import { detectHost, isGuestArch } from '../host.js';
import { type InstallAction, type InstallPlan, applyInstall, defaultLibdir, findBuiltLibrary, libraryPathVariable, planInstall } from '../install.js';
import { KrunfwError } from '../errors.js';
import { type GlobalOptions, printJson, runCommand } from './output.js';

/** Options that name a finished build, shared by install and dist. */
export interface BuildOutputArguments {
  workDir?: string;
  arch?: string;
  outputDir?: string;
}

/** Adds the options that name a finished build, with the same meaning as in `krunfw-mac build`. */
export function withBuildOutputOptions<T>(command: Argv<T>): Argv<T> {
  return command
    .option('work-dir', { type: 'string', description: 'Work directory of the build [default: current directory]' })
    .option('arch', { type: 'string', choices: ['x86_64', 'aarch64'], description: 'Guest architecture of the build [default: the host\'s]' })
    .option('output-dir', { type: 'string', description: 'The build\'s output directory, with provenance.json [default: WORK_DIR/out/ARCH]' }) as Argv<T>;
}

/** Returns the output directory of the build that the options name. */
export function resolveBuildOutput(argv: BuildOutputArguments): string {
  if (argv.outputDir) return resolve(argv.outputDir);
  const arch = argv.arch ?? detectHost().cpu;
  if (!isGuestArch(arch)) {
    throw new KrunfwError(`No default build for this host's CPU (${arch})`, { hint: 'Pass --arch x86_64 or --arch aarch64, or --output-dir.' });
  }
  return join(resolve(argv.workDir ?? process.cwd()), 'out', arch);
}

/** Describes one change in a line, as `--dry-run` prints it. */
export function describeAction(action: InstallAction): string {
  if (action.kind === 'directory') return `create directory ${action.path}`;
  if (action.kind === 'file') return `install ${action.path} (from ${action.source})`;
  return `link ${action.path} -> ${action.target}`;
}

function describePlan(plan: InstallPlan): string {
  const lines = plan.actions.map((action) => `would ${describeAction(action)}`);
  if (plan.recordPath) lines.push(`would write the install record ${plan.recordPath}`);
  if (plan.unwritable) lines.push(`would fail: ${plan.unwritable.path} is not writable (${plan.unwritable.code})`);
  return lines.join('\n') + '\n';
}

interface InstallArguments extends GlobalOptions, BuildOutputArguments {
  prefix: string;
  destdir?: string;
  libdir?: string;
  dryRun: boolean;
}

export function installCommand(yargs: Argv): Argv {
  return yargs.command<InstallArguments>(
    'install',
    'Install the built library and its symlinks into a prefix',
    (command) =>
      withBuildOutputOptions(command)
        .option('prefix', { type: 'string', default: '/usr/local', description: 'Installation prefix' })
        .option('destdir', { type: 'string', description: 'Staging directory the prefix is placed under [env: DESTDIR]' })
        .option('libdir', { type: 'string', description: 'Library directory under the prefix [default: lib, or lib64 where the distribution uses it]' })
        .option('dry-run', { type: 'boolean', default: false, description: 'Print what would change and change nothing' }),
    async (argv) => {
      await runCommand(argv, async (signal) => {
        const built = await findBuiltLibrary(resolveBuildOutput(argv));
        const libdir = argv.libdir ?? (await defaultLibdir(built.os));
        const plan = await planInstall({
          libraryDirectory: built.directory,
          names: built.names,
          os: built.os,
          variant: built.provenance.variant === 'sev' ? 'sev' : 'generic',
          prefix: resolve(argv.prefix),
          destdir: argv.destdir ?? (process.env.DESTDIR || undefined),
          libdir,
        });
        const library = join(plan.root, libdir, built.names.fileName);
        if (argv.dryRun) {
          if (argv.json) printJson({ dryRun: true, library, actions: plan.actions, record: plan.recordPath, unwritable: plan.unwritable });
          else process.stdout.write(describePlan(plan));
          return;
        }
        await applyInstall(plan, {
          signal,
          onAction: (action) => {
            if (!argv.json && argv.verbose) process.stderr.write(`${describeAction(action)}\n`);
          },
        });
        if (argv.json) {
          printJson({ library, actions: plan.actions, record: plan.recordPath });
          return;
        }
        process.stderr.write(`Installed ${library} and ${built.names.links.map(([link]) => link).join(', ')}\n`);
        // glibc searches /usr/lib and /usr/lib64 and dyld falls back to /usr/local/lib, but whether
        // /usr/local/lib* is searched on Linux depends on the distribution's ld.so.conf.
        const prefix = resolve(argv.prefix);
        const searchedByDefault = prefix === '/usr' || (built.os === 'darwin' && prefix === '/usr/local');
        if (plan.root === prefix && !searchedByDefault) {
          process.stderr.write(`If libkrun cannot find it: export ${libraryPathVariable(built.os)}=${join(prefix, libdir)}\n`);
        }
      });
    },
  );
}
