// SPDX-License-Identifier: LGPL-2.1-only
import type { Argv } from 'yargs';
import { LocalExecutor } from '../exec/local.js';
import { type GuestArch, isGuestArch } from '../host.js';
import { readSourceRevision, readSourceTree } from '../source-tree.js';
import { listPatches } from '../stages/patches.js';
import { formatPlan } from '../plan-text.js';
import { LocalSite } from '../exec/site.js';
import { detectHost } from '../host.js';
import { resolve } from 'node:path';
import which from 'which';
import { discoverBuilders, selectBuilder } from '../builders/registry.js';
import { failedChecksError, runDoctor } from '../doctor.js';
import { type BuildRequest, buildMode, checkVariantSupported, compilerCommand, defaultVmSize, resolvePlan } from '../plan.js';
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
  patchesSev?: string;
  variant?: 'generic' | 'sev';
  qboot?: string;
  initrd?: string;
  config?: string[];
  configDir?: string;
  allowDropped: boolean;
  maxCpus?: number;
  jobs?: number;
  printPlan: boolean;
  sourceDir?: string;
  vm: boolean;
  builder?: string;
  builderFile?: string;
  cpus?: number;
  mem?: number;
  keepVm: boolean;
  installName?: string;
  smoke: boolean;
}

export function buildCommand(yargs: Argv): Argv {
  return yargs.command<BuildArguments>(
    'build',
    'Build the kernel and link libkrunfw: natively on Linux, in a krunvm builder VM on macOS (or with --vm)',
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
        .option('config-dir', { type: 'string', description: 'Directory holding common.config and ARCH.config, used instead of the shipped config-generic/' })
        .option('config', { type: 'string', array: true, description: 'Extra config fragment, applied after the shipped ones (repeatable)' })
        .option('allow-dropped', { type: 'boolean', default: false, description: 'Warn instead of failing when the kernel drops a requested config option' })
        .option('max-cpus', { type: 'number', description: 'Most vCPUs the guest kernel uses (NR_CPUS) [default: 16, or what the fragments set]' })
        .option('variant', { choices: ['generic', 'sev'] as const, description: 'generic, or sev for AMD SEV guests (x86_64 on Linux; libkrunfw-sev.so.5) [default: generic, or sev when SEV=1]' })
        .option('qboot', { type: 'string', description: 'SEV: the qboot firmware image, exactly 65536 bytes [env: KRUNFW_QBOOT]' })
        .option('initrd', { type: 'string', description: 'SEV: the initrd, a gzip-compressed cpio archive [env: KRUNFW_INITRD]' })
        .option('patches-sev', { type: 'string', description: 'SEV: directory of *.patch files applied after the generic series [default: the shipped patches/sev/]' })
        .option('jobs', { alias: 'j', type: 'number', description: 'Parallel make jobs [default: the host\'s CPU count]' })
        .option('print-plan', { type: 'boolean', default: false, description: 'Print the resolved plan (with --json as data) and exit without building' })
        .option('source-dir', { type: 'string', description: 'Build a libkrunfw checkout or fork: its Makefile\'s KERNEL_VERSION, ABI_VERSION and FULL_VERSION, its config-libkrunfw_ARCH, patches/ and, for SEV, patches-tee/, qboot/sev/bios.bin and initrd/initrd.gz' })
        .option('vm', { type: 'boolean', default: false, description: 'On Linux, build in a krunvm builder VM as on a Mac (always on on macOS)' })
        .option('builder', { type: 'string', description: 'Builder VM definition to use [env: BUILDER; default: fedora]; see krunfw-mac builders' })
        .option('builder-file', { type: 'string', description: 'Load a builder definition from this JSON file (and use it unless --builder names another)' })
        .option('cpus', { type: 'number', description: 'vCPUs of the builder VM [default: the host\'s CPU count]' })
        .option('mem', { type: 'number', description: 'Memory of the builder VM in MiB [default: half the host\'s, 2048 to 16384]' })
        .option('keep-vm', { type: 'boolean', default: false, description: 'Keep the builder VM after the build and reuse it, already provisioned, next time' })
        .option('install-name', { type: 'string', description: 'Install name of the macOS dylib [default: /usr/local/lib/libkrunfw.5.dylib]; e.g. @rpath/libkrunfw.5.dylib' })
        .option('smoke', { type: 'boolean', default: false, description: 'After linking, boot the builder VM with the new library and check that it runs the kernel just built' }),
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
          sevPatches: argv.patchesSev,
          variant: argv.variant ?? (process.env.SEV === '1' ? 'sev' : undefined),
          qboot: argv.qboot ?? (process.env.KRUNFW_QBOOT || undefined),
          initrd: argv.initrd ?? (process.env.KRUNFW_INITRD || undefined),
          configDirectory: argv.configDir,
          configFragments: argv.config,
          allowDropped: argv.allowDropped,
          maxCpus: argv.maxCpus,
          jobs: argv.jobs,
          cpus: argv.cpus,
          memoryMiB: argv.mem,
          keepVm: argv.keepVm,
          installName: argv.installName,
          smoke: argv.smoke,
        };
        const host = detectHost();
        checkVariantSupported(request.variant ?? 'generic', host, request.arch);
        const workDirectory = resolve(argv.workDir ?? process.cwd());
        if (buildMode(host, argv.vm) === 'vm') {
          const builders = await discoverBuilders({ workDirectory, builderFile: argv.builderFile });
          request.builder = selectBuilder(builders, argv.builder ?? (process.env.BUILDER || undefined), argv.builderFile);
          request.vm = true;
          if (!argv.printPlan) {
            const failure = failedChecksError(
              await runDoctor({
                host,
                vm: true,
                workDirectory,
                memoryMiB: argv.mem ?? defaultVmSize(host).memoryMiB,
                cc: compilerCommand(process.env),
              }),
            );
            if (failure) throw failure;
          }
          request.krunvm = (await which('krunvm', { nothrow: true })) ?? 'krunvm';
        }
        if (argv.sourceDir) {
          const directory = resolve(argv.sourceDir);
          const arch = request.arch ?? (isGuestArch(host.cpu) ? host.cpu : 'x86_64');
          request.sourceTree = {
            ...(await readSourceTree(directory, arch as GuestArch, request.variant ?? 'generic', { qboot: request.qboot, initrd: request.initrd })),
            revision: await readSourceRevision(directory),
          };
        }
        const plan = resolvePlan(request, host);
        if (argv.printPlan) {
          const patches = [];
          for (const directory of plan.patchDirectories) patches.push(...(await listPatches(directory.path)).map((patch) => patch.path));
          if (argv.json) {
            printJson({ ...plan, patches, vm: plan.vm && { ...plan.vm, builder: { name: plan.vm.builder.definition.name, path: plan.vm.builder.path, image: plan.vm.builder.definition.image } } });
          } else {
            process.stdout.write(formatPlan(plan, patches));
          }
          return;
        }
        const site = plan.mode === 'native' ? new LocalSite(plan.paths.stateDirectory) : undefined;
        const result = await runBuild(plan, { executor: new LocalExecutor(), site, signal, verbose: argv.verbose, quiet: argv.json });
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
