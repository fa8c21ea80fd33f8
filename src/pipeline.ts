// SPDX-License-Identifier: LGPL-2.1-only
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { basename, join, sep } from 'node:path';
import { type ListrTask, type ListrTaskWrapper, Listr, ListrLogger, PRESET_TIMER, ProcessOutput } from 'listr2';
import { bundleElfKernel, bundleRaw } from './bundle/layout.js';
import { renderBlobSource, renderKernelSource } from './bundle/c-source.js';
import { KrunfwError } from './errors.js';
import type { Executor } from './exec/executor.js';
import { GuestSite, inputDirectory } from './exec/guest-site.js';
import { KrunvmExecutor } from './exec/krunvm.js';
import type { BuildSite } from './exec/site.js';
import { deleteVm, prepareVm } from './vm.js';
import { symlinkAtomic, writeFileAtomic } from './files.js';
import { sha256, sha256File } from './hash.js';
import { linkLibrary } from './link.js';
import type { Plan } from './plan.js';
import { checkBuildHost, checkHostCompiler } from './preflight.js';
import { checkInitrd, checkQboot } from './sev.js';
import { type Provenance, writeProvenance } from './provenance.js';
import { runSelfTest } from './selftest/selftest.js';
import { hashInputs, runStamped } from './stamps.js';
import { auditConfig, expandConfigCommand, formatDropped, oldConfigCommand, parseConfig, readFragments, renderFragment } from './stages/config.js';
import { fetchKernelTarball } from './stages/download.js';
import { buildKernelCommand, kernelVersionCommand } from './stages/kernel.js';
import { type PatchFile, applyPatchCommand, listPatches } from './stages/patches.js';
import { KERNEL_TREE_MARKERS, extractCommand } from './stages/source.js';
import { packageRoot } from './versions.js';

/** NR_CPUS when neither --max-cpus nor a fragment sets it; the reference configs' 8 is too few for many users. */
export const DEFAULT_MAX_CPUS = 16;

/** SHA-256 of zero bytes: an empty artifact is no artifact. */
const EMPTY_FILE_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

/** Bump when the bundle layout or C encoding changes, so stamped kernel.c files are rewritten. */
const BUNDLE_FORMAT = 1;

/** The tarball the build uses, verified. */
export interface VerifiedTarball {
  path: string;
  sha256: string;
  url?: string;
}

/** Everything a finished build produced. */
export interface BuildResult {
  plan: Plan;
  kernelVersion: string;
  tarball: VerifiedTarball;
  patches: PatchFile[];
  kernelArtifact: { path: string; sha256: string };
  kernelConfig: { path: string; sha256: string };
  kernelSource: { path: string; sha256: string; bundleSha256: string };
  library: { path: string; sha256: string; links: string[] };
  provenance: string;
  /** Each stage's outcome: run, or skipped as up to date. */
  stages: Record<string, 'ran' | 'skipped'>;
  warnings: string[];
}

interface BuildContext {
  tarball?: VerifiedTarball;
  patches?: PatchFile[];
  kernelVersion?: string;
  treeStamp?: string;
  config?: { path: string; sha256: string; maxCpus: number; fragments: Array<{ name: string; sha256: string }> };
  artifact?: { path: string; sha256: string };
  bundle?: BundleFacts;
  kernelSource?: { path: string; sha256: string };
  /** SEV: qboot.c and initrd.c, and the SHA-256 of the files they carry. */
  blobSources?: Array<{ path: string; sha256: string }>;
  sevInputs?: { qboot: string; initrd: string };
  library?: { path: string; sha256: string };
  stages: Record<string, 'ran' | 'skipped'>;
  warnings: string[];
}

/** Facts the bundle stage records for the self-test and the provenance file. */
interface BundleFacts {
  bundleSha256: string;
  loadAddress: string;
  entryAddress: string;
  artifactOffset: number;
  artifactLength: number;
}

export interface PipelineOptions {
  /** Runs the host stages: link and self-test. */
  executor: Executor;
  /** The build site of the kernel stages; for a VM build it is set once the VM is ready. */
  site?: BuildSite;
  signal?: AbortSignal;
  /** Stream every subprocess line instead of a progress display. */
  verbose?: boolean;
  /** Print nothing but errors (for --json). */
  quiet?: boolean;
}

type Task = ListrTaskWrapper<BuildContext, any, any>;

function stampFile(plan: Plan, stage: string): string {
  return join(plan.paths.stateDirectory, 'stamps', `${stage}.json`);
}

function logFile(plan: Plan, stage: string): string {
  return join(plan.paths.logs, `${stage}.log`);
}

/** Returns a shipped file's path relative to the package, so provenance does not depend on where it is installed. */
function displayPath(path: string): string {
  const root = packageRoot() + sep;
  return path.startsWith(root) ? path.slice(root.length) : path;
}

function formatBytes(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

function progressBar(received: number, total: number | undefined): string {
  if (!total) return `${formatBytes(received)} received`;
  const width = 30;
  const filled = Math.min(width, Math.round((received / total) * width));
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${formatBytes(received)} of ${formatBytes(total)}`;
}

function formatElapsed(milliseconds: number): string {
  const seconds = Math.floor(milliseconds / 1000);
  return `${Math.floor(seconds / 60)}m${String(seconds % 60).padStart(2, '0')}s`;
}

/** Shows elapsed time and the latest output line while a long command runs. */
function elapsedReporter(task: Task, label: string): { onLine: (line: string) => void; stop: () => void } {
  const started = Date.now();
  let latest = '';
  const show = () => {
    task.output = `${label} ${formatElapsed(Date.now() - started)}${latest ? `  ${latest.trim().slice(0, 100)}` : ''}`;
  };
  show();
  // Without a terminal every update becomes a line of its own, so update rarely.
  const timer = setInterval(show, process.stderr.isTTY ? 1000 : 30_000);
  return { onLine: (line) => (latest = line), stop: () => clearInterval(timer) };
}

/**
 * Resolves the kernel tarball: a local file (hashed, with the hash cached by
 * size and modification time) or a verified download into the cache.
 */
async function obtainTarball(plan: Plan, task: Task, signal?: AbortSignal): Promise<VerifiedTarball> {
  const source = plan.kernelSource;
  if (source.kind === 'download') {
    let lastUpdate = 0;
    const result = await fetchKernelTarball({
      version: source.version,
      baseUrl: source.baseUrl,
      cacheDirectory: join(plan.paths.cacheDirectory, 'kernels'),
      expectedSha256: source.expectedSha256,
      signal,
      onProgress: (received, total) => {
        const now = Date.now();
        if (now - lastUpdate < 200 && received !== total) return;
        lastUpdate = now;
        task.output = progressBar(received, total);
      },
      onRetry: (attempt, error) => {
        task.output = `Retrying (attempt ${attempt}) after: ${error.message}`;
      },
    });
    task.title = `Kernel source: ${result.fromCache ? 'cached' : 'downloaded'} ${result.url}`;
    return { path: result.path, sha256: result.sha256, url: result.url };
  }

  let info;
  try {
    info = await stat(source.path);
  } catch (error) {
    throw new KrunfwError(`Kernel tarball not found: ${source.path}`, { hint: 'Check the --kernel-tarball path.', cause: error });
  }
  const cacheFile = join(plan.paths.stateDirectory, 'tarball-hash.json');
  const key = { path: source.path, size: info.size, mtimeMs: info.mtimeMs };
  let digest: string | undefined;
  try {
    const cached = JSON.parse(await readFile(cacheFile, 'utf8')) as typeof key & { sha256: string };
    if (cached.path === key.path && cached.size === key.size && cached.mtimeMs === key.mtimeMs) digest = cached.sha256;
  } catch {
    // No cached hash yet.
  }
  if (digest === undefined) {
    task.output = `Hashing ${source.path}`;
    digest = await sha256File(source.path);
    await writeFileAtomic(cacheFile, JSON.stringify({ ...key, sha256: digest }) + '\n');
  }
  if (source.expectedSha256 && source.expectedSha256 !== digest) {
    throw new KrunfwError(`SHA-256 mismatch for ${source.path}`, {
      details: `  expected ${source.expectedSha256}\n  actual   ${digest}`,
      hint: 'Use the tarball the hash was published for, or correct --kernel-sha256.',
    });
  }
  task.title = `Kernel source: ${source.path}`;
  return { path: source.path, sha256: digest };
}

/** Removes temporary trees left by a run that was killed before it could clean up. */
async function removeStaleTrees(site: BuildSite): Promise<void> {
  for (const name of await site.list(site.buildDirectory)) {
    if (name.startsWith('tree.tmp-')) await site.remove(`${site.buildDirectory}/${name}`);
  }
}

/** Describes the rejected hunks of a failed patch, if patch wrote any. */
async function rejectedHunks(rejectFile: string): Promise<string | undefined> {
  try {
    const text = await readFile(rejectFile, 'utf8');
    return text.trim() === '' ? undefined : text;
  } catch {
    return undefined;
  }
}

function treeDirectory(site: BuildSite): string {
  return `${site.buildDirectory}/tree`;
}

/**
 * Extracts the tarball and applies the patch series in a temporary directory,
 * then renames it to the tree. A tree whose extraction or patching failed is
 * deleted, never reused.
 */
async function prepareTree(plan: Plan, context: BuildContext, task: Task, options: PipelineOptions): Promise<void> {
  const site = options.site!;
  const tarball = context.tarball!;
  const patches = context.patches!;
  const tree = treeDirectory(site);
  const inputs = { tarball: tarball.sha256, patches: patches.map((patch) => [patch.name, patch.sha256]) };
  const outcome = await runStamped({
    stampFile: stampFile(plan, 'tree'),
    inputs,
    outputFiles: [],
    outputDirectories: [tree],
    probe: site,
    run: async () => {
      await rm(stampFile(plan, 'config'), { force: true });
      await site.makeDirectory(site.buildDirectory);
      await removeStaleTrees(site);
      await site.remove(tree);
      const temporary = `${site.buildDirectory}/tree.tmp-${process.pid}`;
      await site.makeDirectory(temporary);
      try {
        task.output = `Extracting ${tarball.path}`;
        await rm(logFile(plan, 'extract'), { force: true });
        const siteTarball = await site.stageInput(tarball.path);
        await site.executor.run(extractCommand(siteTarball, temporary), { logFile: logFile(plan, 'extract'), signal: options.signal });
        for (const marker of KERNEL_TREE_MARKERS) {
          if ((await site.kind(`${temporary}/${marker}`)) === undefined) {
            throw new KrunfwError(`${tarball.path} does not look like a Linux kernel source tarball: ${marker} is missing`, {
              hint: 'Pass a linux-<version>.tar.xz from kernel.org or a distribution kernel source tarball.',
            });
          }
        }
        await rm(logFile(plan, 'patch'), { force: true });
        for (const patch of patches) {
          task.output = `Applying ${patch.name}`;
          const rejectFile = join(plan.paths.logs, `${patch.name.replaceAll('/', '-')}.rej`);
          await mkdir(plan.paths.logs, { recursive: true });
          await rm(rejectFile, { force: true });
          try {
            await site.executor.run(applyPatchCommand(await site.stageInput(patch.path), temporary, site.toSite(rejectFile)), {
              logFile: logFile(plan, 'patch'),
              signal: options.signal,
            });
          } catch (error) {
            if (options.signal?.aborted || !(error instanceof KrunfwError)) throw error;
            const rejects = await rejectedHunks(rejectFile);
            throw new KrunfwError(`Patch ${patch.name} does not apply to this kernel source`, {
              details: [error.details, rejects ? `Rejected hunks (${rejectFile}):\n${rejects}` : undefined].filter(Boolean).join('\n\n'),
              hint: `Update ${patch.path} for this kernel version, or leave it out of the series. Full output: ${logFile(plan, 'patch')}`,
              cause: error,
            });
          }
        }
        const kernelVersion = await site.executor.capture(kernelVersionCommand(temporary), { signal: options.signal });
        if (!/^\d+\.\d+/.test(kernelVersion)) {
          throw new KrunfwError(`Could not read the kernel version of ${tarball.path}: make kernelversion printed "${kernelVersion}"`);
        }
        await site.rename(temporary, tree);
        return { kernelVersion };
      } catch (error) {
        await site.remove(temporary);
        throw error;
      }
    },
  });
  context.kernelVersion = outcome.data.kernelVersion;
  context.treeStamp = hashInputs(inputs);
  context.stages.tree = outcome.skipped ? 'skipped' : 'ran';
  task.title = outcome.skipped
    ? `Kernel tree: Linux ${context.kernelVersion} up to date`
    : `Kernel tree: Linux ${context.kernelVersion} extracted, ${patches.length} patch(es) applied`;
}

async function configureKernel(plan: Plan, context: BuildContext, task: Task, options: PipelineOptions): Promise<void> {
  const site = options.site!;
  // A full config (from a libkrunfw tree) is completed with olddefconfig, and what it changes is only reported.
  // Fragments are expanded with allnoconfig, and every value they set must survive.
  const full = plan.fullConfig;
  const requested = await readFragments(full ? [full] : plan.configFragments);
  if (plan.maxCpus !== undefined) {
    requested.set('NR_CPUS', { value: String(plan.maxCpus), source: '--max-cpus', line: 0 });
  } else if (!full && !requested.has('NR_CPUS')) {
    requested.set('NR_CPUS', { value: String(DEFAULT_MAX_CPUS), source: 'default NR_CPUS', line: 0 });
  }
  let input = full ? await readFile(full, 'utf8') : renderFragment(requested);
  if (full && plan.maxCpus !== undefined) input += `\nCONFIG_NR_CPUS=${plan.maxCpus}\n`;
  const inputPath = join(plan.paths.stateDirectory, full ? 'full.config' : 'merged.config');
  const tree = treeDirectory(site);
  const configPath = `${tree}/.config`;
  const hostConfigPath = join(plan.paths.stateDirectory, 'kernel.config');
  const target = { makeArch: plan.kernel.makeArch, crossCompile: plan.kernel.crossCompile };
  const inputs = { tree: context.treeStamp, input, full: Boolean(full), target };

  const outcome = await runStamped({
    stampFile: stampFile(plan, 'config'),
    inputs,
    outputFiles: [configPath],
    probe: site,
    run: async () => {
      await writeFileAtomic(inputPath, input);
      await rm(logFile(plan, 'configure'), { force: true });
      const logOptions = { logFile: logFile(plan, 'configure'), signal: options.signal };
      if (full) {
        task.output = `make olddefconfig from ${full}`;
        await site.executor.run({ argv: ['cp', '--', site.toSite(inputPath), configPath], cwd: tree }, logOptions);
        await site.executor.run(oldConfigCommand(tree, target), logOptions);
      } else {
        task.output = 'make allnoconfig with the merged fragments';
        await site.executor.run(expandConfigCommand(tree, site.toSite(inputPath), target), logOptions);
      }
      const dropped = auditConfig(requested, parseConfig(await site.readText(configPath), '.config'));
      const warnings: string[] = [];
      if (dropped.length > 0 && full) {
        warnings.push(`olddefconfig changed ${dropped.length} option(s) of ${full}:\n${formatDropped(dropped)}`);
      } else if (dropped.length > 0) {
        const message = `The kernel dropped ${dropped.length} requested config option(s):\n${formatDropped(dropped)}`;
        if (!plan.allowDropped) {
          // Without a stamp the next run configures again; remove .config too so make cannot use it.
          await site.remove(configPath);
          throw new KrunfwError(`The kernel dropped ${dropped.length} requested config option(s)`, {
            details: formatDropped(dropped),
            hint: 'An option is dropped when its dependencies are not met or the kernel has no such symbol. Fix the fragment, or pass --allow-dropped to build anyway.',
          });
        }
        warnings.push(message);
      }
      return { warnings };
    },
  });
  context.warnings.push(...outcome.data.warnings);
  for (const warning of outcome.data.warnings) task.output = warning;
  const fragments = await Promise.all(
    (full ? [full] : plan.configFragments).map(async (path) => ({ name: displayPath(path), sha256: await sha256File(path) })),
  );
  const hostConfig = await site.bringBack(configPath, hostConfigPath);
  context.config = {
    path: hostConfig,
    sha256: outcome.outputs[configPath]!,
    maxCpus: Number(requested.get('NR_CPUS')!.value),
    fragments,
  };
  context.stages.config = outcome.skipped ? 'skipped' : 'ran';
  task.title = `Configure: ${outcome.skipped ? 'up to date' : `.config written${outcome.data.warnings.length ? ' (with dropped options)' : ''}`}`;
}

async function buildKernel(plan: Plan, context: BuildContext, task: Task, options: PipelineOptions): Promise<void> {
  const site = options.site!;
  const tree = treeDirectory(site);
  const artifactPath = `${tree}/${plan.kernel.artifact}`;
  const command = buildKernelCommand(tree, plan.kernel, plan.jobs);
  // -j does not change the result, so it is no input.
  // The .config content, not the config stamp: reconfiguring to the same .config needs no make.
  const inputs = { tree: context.treeStamp, configSha256: context.config!.sha256, env: command.env, target: plan.kernel };
  const outcome = await runStamped({
    stampFile: stampFile(plan, 'kernel'),
    inputs,
    outputFiles: [artifactPath],
    probe: site,
    run: async () => {
      await rm(logFile(plan, 'build'), { force: true });
      const reporter = options.verbose ? undefined : elapsedReporter(task, `make ${plan.kernel.makeTarget}`);
      try {
        await site.executor.run(command, {
          logFile: logFile(plan, 'build'),
          signal: options.signal,
          onLine: reporter?.onLine ?? ((line) => (task.output = line)),
        });
      } finally {
        reporter?.stop();
      }
      // Old krunvm and libkrun report success for every command, so the artifact is the proof.
      const digest = (await site.kind(artifactPath)) === 'file' ? await site.sha256(artifactPath) : undefined;
      if (digest === undefined || digest === EMPTY_FILE_SHA256) {
        throw new KrunfwError(`make finished but ${artifactPath} was not produced`, { hint: `See ${logFile(plan, 'build')}` });
      }
      return {};
    },
  });
  const sha = outcome.outputs[artifactPath]!;
  const hostArtifact = await site.bringBack(artifactPath, join(plan.paths.stateDirectory, 'artifact', plan.kernel.artifact.split('/').pop()!));
  context.artifact = { path: hostArtifact, sha256: sha };
  context.stages.kernel = outcome.skipped ? 'skipped' : 'ran';
  task.title = `Build ${plan.kernel.makeTarget}: ${outcome.skipped ? 'up to date' : 'done'}`;
}

/** SEV: qboot.c and initrd.c, raw bundles written beside kernel.c. */
async function bundleSevBlobs(plan: Plan, context: BuildContext): Promise<Array<{ name: 'qboot' | 'initrd'; file: string; source: string }>> {
  const blobs: Array<{ name: 'qboot' | 'initrd'; file: string; source: string }> = [
    { name: 'qboot', file: plan.sev!.qboot, source: join(plan.paths.outputDirectory, 'qboot.c') },
    { name: 'initrd', file: plan.sev!.initrd, source: join(plan.paths.outputDirectory, 'initrd.c') },
  ];
  for (const blob of blobs) {
    // Load and entry addresses mean nothing for these blobs; bundleRaw is used for its 64 KiB padding.
    const bundle = bundleRaw(await readFile(blob.file), { loadAddress: 0n, entryAddress: 0n });
    await writeFileAtomic(blob.source, renderBlobSource(blob.name, bundle.bytes, { kernelVersion: context.kernelVersion! }));
  }
  return blobs;
}

async function bundleKernel(plan: Plan, context: BuildContext, task: Task): Promise<void> {
  const sourcePath = join(plan.paths.outputDirectory, 'kernel.c');
  const blobSources = plan.sev ? [join(plan.paths.outputDirectory, 'qboot.c'), join(plan.paths.outputDirectory, 'initrd.c')] : [];
  const artifact = context.artifact!;
  const sevInputs = plan.sev ? { qboot: await sha256File(plan.sev.qboot), initrd: await sha256File(plan.sev.initrd) } : undefined;
  const outcome = await runStamped<BundleFacts>({
    stampFile: stampFile(plan, 'bundle'),
    inputs: { artifact: artifact.sha256, kernelVersion: context.kernelVersion, format: BUNDLE_FORMAT, kind: plan.kernel.artifactFormat, sev: sevInputs },
    outputFiles: [sourcePath, ...blobSources],
    run: async () => {
      const data = await readFile(artifact.path);
      const bundle = plan.kernel.artifactFormat === 'elf'
        ? bundleElfKernel(data, artifact.path)
        : bundleRaw(data, { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
      await writeFileAtomic(sourcePath, renderKernelSource(bundle, { kernelVersion: context.kernelVersion! }));
      if (plan.sev) await bundleSevBlobs(plan, context);
      return {
        bundleSha256: sha256(bundle.bytes),
        loadAddress: `0x${bundle.loadAddress.toString(16)}`,
        entryAddress: `0x${bundle.entryAddress.toString(16)}`,
        artifactOffset: bundle.firstSegment.fileOffset,
        artifactLength: bundle.firstSegment.size,
      };
    },
  });
  context.bundle = outcome.data;
  context.kernelSource = { path: sourcePath, sha256: outcome.outputs[sourcePath]! };
  context.blobSources = blobSources.map((path) => ({ path, sha256: outcome.outputs[path]! }));
  context.sevInputs = sevInputs;
  context.stages.bundle = outcome.skipped ? 'skipped' : 'ran';
  task.title = `Bundle kernel.c${plan.sev ? ', qboot.c, initrd.c' : ''}: ${outcome.skipped ? 'up to date' : 'written'} (load ${outcome.data.loadAddress}, entry ${outcome.data.entryAddress})`;
}

async function linkStage(plan: Plan, context: BuildContext, task: Task, options: PipelineOptions): Promise<void> {
  const libraryPath = join(plan.paths.outputDirectory, plan.library.names.fileName);
  const outcome = await runStamped({
    stampFile: stampFile(plan, 'link'),
    inputs: { source: context.kernelSource!.sha256, blobs: context.blobSources!.map((blob) => blob.sha256), cc: plan.cc, names: plan.library.names, version: plan.library.version, installName: plan.installName },
    outputFiles: [libraryPath],
    run: async () => {
      await rm(logFile(plan, 'link'), { force: true });
      await linkLibrary(
        {
          sources: [context.kernelSource!.path, ...context.blobSources!.map((blob) => blob.path)],
          outputDirectory: plan.paths.outputDirectory,
          targetOs: plan.targetOs,
          version: plan.library.version,
          names: plan.library.names,
          cc: plan.cc,
          installName: plan.installName,
        },
        (command) => options.executor.run(command, { logFile: logFile(plan, 'link'), signal: options.signal }),
      );
      return {};
    },
  });
  // Symlinks are not hashed by the stamp; recreate any that went missing.
  if (outcome.skipped) {
    for (const [link, target] of plan.library.names.links) await symlinkAtomic(target, join(plan.paths.outputDirectory, link));
  }
  context.library = { path: libraryPath, sha256: outcome.outputs[libraryPath]! };
  context.stages.link = outcome.skipped ? 'skipped' : 'ran';
  task.title = `Link ${plan.library.names.fileName}: ${outcome.skipped ? 'up to date' : 'done'}`;
}

async function selfTestStage(plan: Plan, context: BuildContext, options: PipelineOptions): Promise<void> {
  const bundle = context.bundle!;
  await runSelfTest(
    {
      library: context.library!.path,
      abi: plan.library.version.abi,
      loadAddress: BigInt(bundle.loadAddress),
      entryAddress: BigInt(bundle.entryAddress),
      artifact: context.artifact!.path,
      artifactOffset: bundle.artifactOffset,
      artifactLength: bundle.artifactLength,
      blobs: plan.sev ? [{ name: 'qboot', file: plan.sev.qboot }, { name: 'initrd', file: plan.sev.initrd }] : [],
      workDirectory: join(plan.paths.stateDirectory, 'selftest'),
      cc: plan.cc,
    },
    options.executor,
  );
}

function provenanceOf(plan: Plan, context: BuildContext): Provenance {
  return {
    tool: { name: 'krunfw-mac', version: plan.toolVersion },
    variant: plan.variant,
    arch: plan.guestArch,
    abi: plan.library.version.abi,
    kernel: {
      version: context.kernelVersion!,
      tarball: { name: plan.kernelSource.kind === 'download' ? plan.kernelSource.url : plan.kernelSource.path, sha256: context.tarball!.sha256 },
      artifact: { name: plan.kernel.artifact, sha256: context.artifact!.sha256 },
    },
    patches: context.patches!.map((patch) => ({ name: displayPath(patch.path), sha256: patch.sha256 })),
    config: { sha256: context.config!.sha256, maxCpus: context.config!.maxCpus, fragments: context.config!.fragments },
    bundle: {
      file: 'kernel.c',
      sha256: context.bundle!.bundleSha256,
      sourceSha256: context.kernelSource!.sha256,
      loadAddress: context.bundle!.loadAddress,
      entryAddress: context.bundle!.entryAddress,
    },
    library: { file: plan.library.names.fileName, soname: plan.library.names.soname, sha256: context.library!.sha256 },
    ...(plan.sourceTree
      ? { source: { directory: plan.sourceTree.directory, gitCommit: plan.sourceTree.revision?.commit, gitDirty: plan.sourceTree.revision?.dirty } }
      : {}),
    ...(plan.sev && context.sevInputs
      ? {
          sev: {
            qboot: { name: basename(plan.sev.qboot), sha256: context.sevInputs.qboot, source: 'qboot.c', sourceSha256: context.blobSources![0]!.sha256 },
            initrd: { name: basename(plan.sev.initrd), sha256: context.sevInputs.initrd, source: 'initrd.c', sourceSha256: context.blobSources![1]!.sha256 },
          },
        }
      : {}),
  };
}

/** Boots the builder VM with the new library first on the library path and checks the guest runs the kernel just built. */
async function smokeTest(plan: Plan, context: BuildContext, task: Task, signal?: AbortSignal): Promise<void> {
  const vm = plan.vm!;
  const variable = plan.host.os === 'darwin' ? 'DYLD_LIBRARY_PATH' : 'LD_LIBRARY_PATH';
  const inherited = process.env[variable];
  const env = { [variable]: inherited ? `${plan.paths.outputDirectory}:${inherited}` : plan.paths.outputDirectory };
  const executor = new KrunvmExecutor(vm.krunvm, vm.name, {}, env);
  const release = (await executor.capture({ argv: ['uname', '-r'], cwd: '/' }, { signal, logFile: vm.logFile })).trim().split('\n').pop() ?? '';
  if (!release.startsWith(context.kernelVersion!)) {
    throw new KrunfwError(`Smoke test failed: the builder VM runs kernel ${release || '(nothing printed)'}, not the ${context.kernelVersion} just built`, {
      hint: `krunvm did not load ${context.library!.path}. Check that ${variable} reaches krunvm and that libkrun loads ${plan.library.names.soname}.`,
    });
  }
  task.title = `Smoke test: the builder VM booted Linux ${release}`;
}

/** Runs the build's stages in order, with progress on stderr, and returns what they produced. */
export async function runBuild(plan: Plan, options: PipelineOptions): Promise<BuildResult> {
  const context: BuildContext = { stages: {}, warnings: [] };
  // The kernel stages run on the host, or in the builder VM once it is ready.
  const stageOptions: PipelineOptions = { ...options };
  let vmCreated = false;
  const vm = plan.vm;

  const tasks: ListrTask<BuildContext>[] = [
    {
      title: plan.sev ? 'Check SEV firmware, initrd and host tools' : 'Check host tools',
      task: async () => {
        if (plan.sev) {
          await checkQboot(plan.sev.qboot);
          await checkInitrd(plan.sev.initrd);
        }
        await (plan.mode === 'vm' ? checkHostCompiler(plan) : checkBuildHost(plan));
      },
    },
    {
      title: 'Kernel source',
      task: async (ctx, task) => {
        ctx.tarball = await obtainTarball(plan, task, options.signal);
        ctx.patches = [];
        for (const directory of plan.patchDirectories) {
          for (const patch of await listPatches(directory.path)) ctx.patches.push({ ...patch, name: directory.label + patch.name });
        }
      },
    },
  ];
  if (vm) {
    tasks.push({
      title: `Builder VM (${vm.builder.definition.name})`,
      task: async (_ctx, task) => {
        vmCreated = true;
        const { executor, reused } = await prepareVm(vm, plan.paths.workDirectory, {
          signal: options.signal,
          report: (message) => (task.output = message),
        });
        stageOptions.site = new GuestSite(executor, plan.paths.workDirectory, `/var/tmp/krunfw-build/${plan.guestArch}-${plan.variant}`, inputDirectory(plan.paths.workDirectory));
        task.title = `Builder VM ${vm.name}: ${reused ? 'reused' : 'created and provisioned'} (${vm.builder.definition.name}, ${vm.cpus} CPUs, ${vm.memoryMiB} MiB)`;
      },
    });
  }
  tasks.push(
    { title: 'Kernel tree: extract and patch', task: (ctx, task) => prepareTree(plan, ctx, task, stageOptions) },
    { title: 'Configure', task: (ctx, task) => configureKernel(plan, ctx, task, stageOptions) },
    { title: `Build ${plan.kernel.makeTarget}`, task: (ctx, task) => buildKernel(plan, ctx, task, stageOptions) },
    { title: 'Bundle kernel.c', task: (ctx, task) => bundleKernel(plan, ctx, task) },
    { title: `Link ${plan.library.names.fileName}`, task: (ctx, task) => linkStage(plan, ctx, task, options) },
  );
  if (plan.host.os === plan.targetOs) {
    tasks.push({ title: 'Self-test', task: (ctx) => selfTestStage(plan, ctx, options) });
  }
  if (vm && plan.smoke) {
    tasks.push({ title: 'Smoke test in the builder VM', task: (ctx, task) => smokeTest(plan, ctx, task, options.signal) });
  }
  tasks.push({
    title: 'Write provenance.json',
    task: async (ctx) => {
      await writeProvenance(join(plan.paths.outputDirectory, 'provenance.json'), provenanceOf(plan, ctx));
      await writeFileAtomic(join(plan.paths.outputDirectory, 'kernel.config'), await readFile(ctx.config!.path));
    },
  });

  // Progress goes to stderr, so that stdout carries only results (the --json document).
  const processOutput = new ProcessOutput(process.stderr, process.stderr);
  const listr = new Listr<BuildContext>(tasks, {
    ctx: context,
    exitOnError: true,
    registerSignalListeners: false,
    renderer: 'default',
    rendererOptions: { timer: PRESET_TIMER, logger: new ListrLogger({ useIcons: true, processOutput }) },
    // Without a terminal, or with --verbose, print lines instead of redrawing.
    fallbackRenderer: options.verbose ? 'verbose' : 'simple',
    fallbackRendererOptions: { timer: PRESET_TIMER, logger: new ListrLogger({ useIcons: true, processOutput }) },
    fallbackRendererCondition: options.verbose || !process.stderr.isTTY,
    silentRendererCondition: options.quiet,
  } as ConstructorParameters<typeof Listr<BuildContext>>[1]);
  try {
    await listr.run(context);
  } finally {
    if (vm && vmCreated && !vm.keep) {
      if (!options.quiet) process.stderr.write(`Deleting VM ${vm.name}...\n`);
      // Not tied to the abort signal: the VM is deleted after Ctrl-C too.
      await deleteVm(vm).catch((error: unknown) => {
        context.warnings.push(`Could not delete VM ${vm.name}: ${error instanceof Error ? error.message : String(error)}`);
      });
    }
  }

  const outputDirectory = plan.paths.outputDirectory;
  return {
    plan,
    kernelVersion: context.kernelVersion!,
    tarball: context.tarball!,
    patches: context.patches!,
    kernelArtifact: context.artifact!,
    kernelConfig: { path: join(outputDirectory, 'kernel.config'), sha256: context.config!.sha256 },
    kernelSource: { ...context.kernelSource!, bundleSha256: context.bundle!.bundleSha256 },
    library: { ...context.library!, links: plan.library.names.links.map(([link]) => join(outputDirectory, link)) },
    provenance: join(outputDirectory, 'provenance.json'),
    stages: context.stages,
    warnings: context.warnings,
  };
}
