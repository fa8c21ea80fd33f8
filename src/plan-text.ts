// SPDX-License-Identifier: LGPL-2.1-only
import { formatLibraryVersion } from './library.js';
import type { Plan } from './plan.js';

/** Renders the plan for --print-plan: what the build would use, one fact a line. */
export function formatPlan(plan: Plan, patches: string[]): string {
  const source = plan.kernelSource;
  const lines = [
    `mode:            ${plan.mode === 'vm' ? 'krunvm builder VM' : 'native'} on ${plan.host.os}/${plan.host.cpu}`,
    `guest arch:      ${plan.guestArch}${plan.kernel.crossCompile ? ` (cross-compiled with ${plan.kernel.crossCompile})` : ''}`,
    `variant:         ${plan.variant}`,
    source.kind === 'download'
      ? `kernel:          ${source.version} from ${source.url}${source.expectedSha256 ? ` (SHA-256 ${source.expectedSha256})` : ' (checked against sha256sums.asc)'}`
      : `kernel:          local tarball ${source.path}`,
    ...(plan.sourceTree
      ? [`source tree:     ${plan.sourceTree.directory}${plan.sourceTree.revision ? ` at ${plan.sourceTree.revision.commit}${plan.sourceTree.revision.dirty ? ' with uncommitted changes' : ''}` : ''}`]
      : []),
    `patches:         ${patches.length === 0 ? 'none' : ''}`,
    ...patches.map((patch) => `  ${patch}`),
    plan.fullConfig ? `config:          ${plan.fullConfig} (full config, completed with olddefconfig)` : 'config:          fragments, expanded with allnoconfig',
    ...(plan.fullConfig ? [] : plan.configFragments.map((fragment) => `  ${fragment}`)),
    `NR_CPUS:         ${plan.maxCpus ?? 'from the config, else 16'}`,
    ...(plan.sev ? [`qboot:           ${plan.sev.qboot}`, `initrd:          ${plan.sev.initrd}`] : []),
    `ABI:             ${plan.library.version.abi} (library version ${formatLibraryVersion(plan.library.version)})`,
    `library:         ${plan.library.names.fileName} (soname ${plan.library.names.soname}; links ${plan.library.names.links.map(([link]) => link).join(', ')})`,
    `make:            ${plan.kernel.makeTarget}, ARCH=${plan.kernel.makeArch}, -j${plan.jobs}`,
    ...(plan.vm
      ? [
          `builder:         ${plan.vm.builder.definition.name} (${plan.vm.builder.definition.image}, from ${plan.vm.builder.path})`,
          `VM:              ${plan.vm.name}, ${plan.vm.cpus} CPUs, ${plan.vm.memoryMiB} MiB${plan.vm.keep ? ', kept after the build' : ''}`,
        ]
      : []),
    `work directory:  ${plan.paths.workDirectory}`,
    `outputs:         ${plan.paths.outputDirectory}`,
    `download cache:  ${plan.paths.cacheDirectory}`,
  ];
  return lines.join('\n') + '\n';
}
