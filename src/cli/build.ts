// SPDX-License-Identifier: LGPL-2.1-only
import type { Argv } from 'yargs';
import { LocalExecutor } from '../exec/local.js';
import { detectHost } from '../host.js';
import { type BuildRequest, resolvePlan } from '../plan.js';
import { runBuild } from '../pipeline.js';
import { type GlobalOptions, printJson, runCommand } from './output.js';

interface BuildArguments extends GlobalOptions {
  arch?: string;
  workDir?: string;
  outputDir?: string;
  kernelVersion?: string;
  kernelTarball?: string;
  kernelSha256?: string;
  mirror?: string;
  patches?: string | false;
  config?: string[];
  allowDropped: boolean;
  maxCpus: number;
  jobs?: number;
  printPlan: boolean;
}

export function buildCommand(yargs: Argv): Argv {
  return yargs.command<BuildArguments>(
    'build',
    'Build the kernel and link libkrunfw (on Linux, natively)',
    (command) =>
      command
        .option('arch', { type: 'string', choices: ['x86_64', 'aarch64'], description: 'Guest architecture (default: the host\'s; aarch64 on x86_64 cross-compiles)' })
        .option('work-dir', { type: 'string', description: 'Directory for build state (.krunfw/) and outputs (out/) [default: current directory]' })
        .option('output-dir', { type: 'string', description: 'Where kernel.c, the library and provenance.json go [default: WORK_DIR/out/ARCH]' })
        .option('kernel-version', { type: 'string', description: 'Kernel release to download from kernel.org [default: the pinned 6.12 release]' })
        .option('kernel-tarball', { type: 'string', description: 'Use this local kernel source tarball instead of downloading' })
        .option('kernel-sha256', { type: 'string', description: 'Expected SHA-256 of the tarball, instead of the release\'s sha256sums.asc' })
        .option('mirror', { type: 'string', description: 'Base URL of a kernel.org mirror (the directory holding v6.x/) [env: KRUNFW_KERNEL_MIRROR]' })
        .option('patches', { type: 'string', description: 'Directory of *.patch files applied in sorted order [default: the shipped patches/]; --no-patches for none' })
        .option('config', { type: 'string', array: true, description: 'Extra config fragment, applied after the shipped ones (repeatable)' })
        .option('allow-dropped', { type: 'boolean', default: false, description: 'Warn instead of failing when the kernel drops a requested config option' })
        .option('max-cpus', { type: 'number', default: 16, description: 'Most vCPUs the guest kernel uses (NR_CPUS)' })
        .option('jobs', { alias: 'j', type: 'number', description: 'Parallel make jobs [default: the host\'s CPU count]' })
        .option('print-plan', { type: 'boolean', default: false, description: 'Print the resolved plan and exit without building' }),
    async (argv) => {
      await runCommand(argv, async (signal) => {
        const request: BuildRequest = {
          arch: argv.arch,
          workDirectory: argv.workDir,
          outputDirectory: argv.outputDir,
          kernelVersion: argv.kernelVersion,
          kernelTarball: argv.kernelTarball,
          kernelSha256: argv.kernelSha256,
          mirror: argv.mirror,
          patches: argv.patches,
          configFragments: argv.config,
          allowDropped: argv.allowDropped,
          maxCpus: argv.maxCpus,
          jobs: argv.jobs,
        };
        const plan = resolvePlan(request, detectHost());
        if (argv.printPlan) {
          printJson(plan);
          return;
        }
        const result = await runBuild(plan, { executor: new LocalExecutor(), signal, verbose: argv.verbose, quiet: argv.json });
        for (const warning of result.warnings) process.stderr.write(`warning: ${warning}\n`);
        if (argv.json) {
          const { plan: _plan, ...rest } = result;
          printJson({ arch: plan.guestArch, variant: plan.variant, ...rest });
        } else {
          process.stderr.write(`\nBuilt ${result.library.path} (Linux ${result.kernelVersion}, ${plan.guestArch})\n`);
        }
      });
    },
  );
}
