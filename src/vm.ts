// SPDX-License-Identifier: LGPL-2.1-only
import { mkdir, readFile, rm } from 'node:fs/promises';
import type { LoadedBuilder } from './builders/definition.js';
import { KrunfwError } from './errors.js';
import { GUEST_WORK_DIRECTORY } from './exec/guest-site.js';
import { KrunvmExecutor, krunvmFailure, runKrunvm } from './exec/krunvm.js';
import { writeFileAtomic } from './files.js';
import { sha256 } from './hash.js';

/** The builder VM of one build. */
export interface VmPlan {
  /** Path of the krunvm program. */
  krunvm: string;
  /** Unique to the work directory, so parallel builds elsewhere never collide. */
  name: string;
  builder: LoadedBuilder;
  cpus: number;
  memoryMiB: number;
  /** Keep the VM after the build and reuse it next time. */
  keep: boolean;
  /** Host file recording which builder definition provisioned the VM. */
  recordFile: string;
  logFile: string;
}

/** The record written after a VM is provisioned, read to decide whether a kept VM can be reused. */
interface VmRecord {
  name: string;
  image: string;
  builderSha256: string;
  /** The size given to krunvm create. A kept VM of another size is replaced, not resized. */
  cpus: number;
  memoryMiB: number;
}

/** Returns a VM name derived from the work directory's path. */
export function vmNameFor(workDirectory: string): string {
  return `krunfw-${sha256(workDirectory).slice(0, 12)}`;
}

/** Checks that krunvm can map the work directory: it splits -v on ':'. */
export function checkMappablePath(workDirectory: string): void {
  if (workDirectory.includes(':')) {
    throw new KrunfwError(`The work directory's path contains ':', which krunvm cannot map into a VM: ${workDirectory}`, {
      hint: 'krunvm splits HOST:GUEST volume arguments on ":". Build in a directory whose path has no ":" (pass --work-dir).',
    });
  }
}

/** Lists the names of krunvm's VMs. */
export async function listVms(krunvm: string, signal?: AbortSignal): Promise<string[]> {
  const result = await runKrunvm(krunvm, ['list'], { signal });
  if (result.exitCode !== 0) throw krunvmFailure(['list'], result, '(list)');
  // VM names start a line; their properties are indented below them.
  return result.output.split('\n').filter((line) => /^\S/.test(line) && line.trim() !== 'No microVMs found').map((line) => line.trim());
}

export async function deleteVm(vm: VmPlan, signal?: AbortSignal): Promise<void> {
  const result = await runKrunvm(vm.krunvm, ['delete', vm.name], { signal, logFile: vm.logFile });
  if (result.exitCode !== 0 && !/No VM found with that name/.test(result.output)) {
    throw krunvmFailure(['delete', vm.name], result, vm.name, vm.logFile);
  }
  await rm(vm.recordFile, { force: true });
}

async function readRecord(path: string): Promise<VmRecord | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as VmRecord;
  } catch {
    return undefined;
  }
}

/**
 * Creates and provisions the builder VM, or, with --keep-vm, reuses a kept
 * one that the same builder definition provisioned at the same size. A VM of
 * this name left by an earlier run (crashed, kept, or provisioned from another
 * definition or at another size) is deleted first.
 */
export async function prepareVm(
  vm: VmPlan,
  workDirectory: string,
  options: { signal?: AbortSignal; report: (message: string) => void },
): Promise<{ executor: KrunvmExecutor; reused: boolean }> {
  const executor = new KrunvmExecutor(vm.krunvm, vm.name, vm.builder.definition.env);
  const existing = (await listVms(vm.krunvm, options.signal)).includes(vm.name);
  const record = await readRecord(vm.recordFile);
  const sameDefinition = record?.builderSha256 === vm.builder.sha256 && record.image === vm.builder.definition.image;
  const sameSize = record?.cpus === vm.cpus && record.memoryMiB === vm.memoryMiB;
  if (existing && vm.keep && sameDefinition && sameSize) {
    options.report(`Reusing VM ${vm.name}, provisioned from ${vm.builder.path}`);
    return { executor, reused: true };
  }
  if (existing) {
    let reason = `Replacing VM ${vm.name}, left behind by an earlier run`;
    if (record && !sameDefinition) reason = `Builder definition changed; replacing VM ${vm.name}`;
    else if (record && !vm.keep) reason = `Replacing VM ${vm.name}, kept by an earlier build (pass --keep-vm to reuse it)`;
    else if (record && !sameSize) reason = `VM size changed to ${vm.cpus} CPUs and ${vm.memoryMiB} MiB; replacing VM ${vm.name}`;
    options.report(reason);
    await deleteVm(vm, options.signal);
  }
  await rm(vm.recordFile, { force: true });

  const createArgs = [
    'create',
    '--name', vm.name,
    '--cpus', String(vm.cpus),
    '--mem', String(vm.memoryMiB),
    '-v', `${workDirectory}:${GUEST_WORK_DIRECTORY}`,
    '-w', GUEST_WORK_DIRECTORY,
    vm.builder.definition.image,
  ];
  options.report(`Creating VM ${vm.name} from ${vm.builder.definition.image}`);
  // krunvm rejects a volume whose host path does not exist, and a download build has not written to the work directory yet.
  await mkdir(workDirectory, { recursive: true });
  const created = await runKrunvm(vm.krunvm, createArgs, { signal: options.signal, logFile: vm.logFile });
  if (created.exitCode !== 0) throw krunvmFailure(createArgs, created, vm.name, vm.logFile);

  for (const [index, argv] of vm.builder.definition.provision.entries()) {
    options.report(`Provisioning (${index + 1}/${vm.builder.definition.provision.length}): ${argv.join(' ').slice(0, 80)}`);
    await executor.run({ argv, cwd: '/' }, { logFile: vm.logFile, signal: options.signal });
  }
  await writeFileAtomic(
    vm.recordFile,
    JSON.stringify(
      { name: vm.name, image: vm.builder.definition.image, builderSha256: vm.builder.sha256, cpus: vm.cpus, memoryMiB: vm.memoryMiB } satisfies VmRecord,
      null,
      2,
    ) + '\n',
  );
  return { executor, reused: false };
}
