// SPDX-License-Identifier: LGPL-2.1-only
import { access, mkdir, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { type ListrTask, type ListrTaskWrapper, Listr, ProcessOutput } from 'listr2';
import { bundleElfKernel, bundleRaw } from './bundle/layout.js';
import { renderKernelSource } from './bundle/c-source.js';
import { KrunfwError } from './errors.js';
import type { Executor } from './exec/executor.js';
import { symlinkAtomic, writeFileAtomic } from './files.js';
import { sha256, sha256File } from './hash.js';
import { linkLibrary } from './link.js';
import type { Plan } from './plan.js';
import { checkBuildHost } from './preflight.js';
import { type Provenance, writeProvenance } from './provenance.js';
import { runSelfTest } from './selftest/selftest.js';
import { hashInputs, runStamped } from './stamps.js';
import { auditConfig, expandConfigCommand, formatDropped, parseConfig, readFragments, renderFragment } from './stages/config.js';
import { fetchKernelTarball } from './stages/download.js';
import { buildKernelCommand, kernelVersionCommand } from './stages/kernel.js';
import { type PatchFile, applyPatchCommand, listPatches } from './stages/patches.js';
import { KERNEL_TREE_MARKERS, extractCommand } from './stages/source.js';
import { packageRoot } from './versions.js';

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
  /** Which stages ran and which were skipped as up to date. */
  stages: Record<string, 'ran' | 'skipped'>;
  warnings: string[];
}

interface BuildContext {
  tarball?: VerifiedTarball;
  patches?: PatchFile[];
  kernelVersion?: string;
  treeStamp?: string;
  config?: { path: string; sha256: string; stamp: string; fragments: Array<{ name: string; sha256: string }> };
  artifact?: { path: string; sha256: string };
  bundle?: BundleFacts;
  kernelSource?: { path: string; sha256: string };
  library?: { path: string; sha256: string };
  stages: Record<string, 'ran' | 'skipped'>;
  warnings: string[];
}

/** What the bundle stage records for the self-test and the provenance file. */
interface BundleFacts {
  bundleSha256: string;
  loadAddress: string;
  entryAddress: string;
  artifactOffset: number;
  artifactLength: number;
}

export interface PipelineOptions {
  executor: Executor;
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

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** A shipped file's path relative to the package, so provenance does not depend on where it is installed. */
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
async function removeStaleTrees(stateDirectory: string): Promise<void> {
  let names: string[] = [];
  try {
    names = await readdir(stateDirectory);
  } catch {
    return;
  }
  await Promise.all(
    names.filter((name) => name.startsWith('tree.tmp-')).map((name) => rm(join(stateDirectory, name), { recursive: true, force: true })),
  );
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

/**
 * Extracts the tarball and applies the patch series in a temporary directory,
 * then renames it to the tree. A tree whose extraction or patching failed is
 * deleted, never reused.
 */
async function prepareTree(plan: Plan, context: BuildContext, task: Task, options: PipelineOptions): Promise<void> {
  const tarball = context.tarball!;
  const patches = context.patches!;
  const inputs = { tarball: tarball.sha256, patches: patches.map((patch) => [patch.name, patch.sha256]) };
  const versionFile = join(plan.paths.stateDirectory, 'kernelversion');
  const outcome = await runStamped({
    stampFile: stampFile(plan, 'tree'),
    inputs,
    outputFiles: [versionFile],
    outputDirectories: [plan.paths.tree],
    run: async () => {
      await rm(stampFile(plan, 'config'), { force: true });
      await removeStaleTrees(plan.paths.stateDirectory);
      await rm(plan.paths.tree, { recursive: true, force: true });
      const temporary = join(plan.paths.stateDirectory, `tree.tmp-${process.pid}`);
      await mkdir(temporary, { recursive: true });
      let version: string;
      try {
        task.output = `Extracting ${tarball.path}`;
        await rm(logFile(plan, 'extract'), { force: true });
        await options.executor.run(extractCommand(tarball.path, temporary), { logFile: logFile(plan, 'extract'), signal: options.signal });
        for (const marker of KERNEL_TREE_MARKERS) {
          if (!(await exists(join(temporary, marker)))) {
            throw new KrunfwError(`${tarball.path} does not look like a Linux kernel source tarball: ${marker} is missing`, {
              hint: 'Pass a linux-<version>.tar.xz from kernel.org or a distribution kernel source tarball.',
            });
          }
        }
        await rm(logFile(plan, 'patch'), { force: true });
        for (const patch of patches) {
          task.output = `Applying ${patch.name}`;
          const rejectFile = join(plan.paths.logs, `${patch.name}.rej`);
          await rm(rejectFile, { force: true });
          try {
            await options.executor.run(applyPatchCommand(patch.path, temporary, rejectFile), {
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
        version = await options.executor.capture(kernelVersionCommand(temporary), { signal: options.signal });
        await writeFileAtomic(versionFile, version + '\n');
        await rename(temporary, plan.paths.tree);
      } catch (error) {
        await rm(temporary, { recursive: true, force: true });
        throw error;
      }
      return { kernelVersion: version };
    },
  });
  context.kernelVersion = (await readFile(versionFile, 'utf8')).trim();
  context.treeStamp = hashInputs(inputs);
  context.stages.tree = outcome.skipped ? 'skipped' : 'ran';
  task.title = outcome.skipped
    ? `Kernel tree: Linux ${context.kernelVersion} up to date`
    : `Kernel tree: Linux ${context.kernelVersion} extracted, ${patches.length} patch(es) applied`;
}

async function configureKernel(plan: Plan, context: BuildContext, task: Task, options: PipelineOptions): Promise<void> {
  const requested = await readFragments(plan.configFragments);
  requested.set('NR_CPUS', { value: String(plan.maxCpus), source: '--max-cpus', line: 0 });
  const merged = renderFragment(requested);
  const mergedPath = join(plan.paths.stateDirectory, 'merged.config');
  const configPath = join(plan.paths.tree, '.config');
  const target = { makeArch: plan.kernel.makeArch, crossCompile: plan.kernel.crossCompile };
  const inputs = { tree: context.treeStamp, merged, target };

  const outcome = await runStamped({
    stampFile: stampFile(plan, 'config'),
    inputs,
    outputFiles: [configPath],
    run: async () => {
      await writeFileAtomic(mergedPath, merged);
      await rm(logFile(plan, 'configure'), { force: true });
      task.output = 'make allnoconfig with the merged fragments';
      await options.executor.run(expandConfigCommand(plan.paths.tree, mergedPath, target), {
        logFile: logFile(plan, 'configure'),
        signal: options.signal,
      });
      const dropped = auditConfig(requested, parseConfig(await readFile(configPath, 'utf8'), '.config'));
      const warnings: string[] = [];
      if (dropped.length > 0) {
        const message = `The kernel dropped ${dropped.length} requested config option(s):\n${formatDropped(dropped)}`;
        if (!plan.allowDropped) {
          // Without a stamp the next run configures again; remove .config too so make cannot use it.
          await rm(configPath, { force: true });
          throw new KrunfwError(message.split('\n')[0]!, {
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
    plan.configFragments.map(async (path) => ({ name: displayPath(path), sha256: await sha256File(path) })),
  );
  context.config = { path: configPath, sha256: outcome.outputs[configPath]!, stamp: hashInputs(inputs), fragments };
  context.stages.config = outcome.skipped ? 'skipped' : 'ran';
  task.title = `Configure: ${outcome.skipped ? 'up to date' : `.config written${outcome.data.warnings.length ? ' (with dropped options)' : ''}`}`;
}

async function buildKernel(plan: Plan, context: BuildContext, task: Task, options: PipelineOptions): Promise<void> {
  const artifactPath = join(plan.paths.tree, plan.kernel.artifact);
  const command = buildKernelCommand(plan.paths.tree, plan.kernel, plan.jobs);
  // -j does not change the result, so it is no input.
  const inputs = { config: context.config!.stamp, configSha256: context.config!.sha256, env: command.env, target: plan.kernel };
  const outcome = await runStamped({
    stampFile: stampFile(plan, 'kernel'),
    inputs,
    outputFiles: [artifactPath],
    run: async () => {
      await rm(logFile(plan, 'build'), { force: true });
      const reporter = options.verbose ? undefined : elapsedReporter(task, `make ${plan.kernel.makeTarget}`);
      try {
        await options.executor.run(command, {
          logFile: logFile(plan, 'build'),
          signal: options.signal,
          onLine: reporter?.onLine ?? ((line) => (task.output = line)),
        });
      } finally {
        reporter?.stop();
      }
      if (!(await exists(artifactPath))) {
        throw new KrunfwError(`make finished but ${artifactPath} was not produced`, { hint: `See ${logFile(plan, 'build')}` });
      }
      return {};
    },
  });
  context.artifact = { path: artifactPath, sha256: outcome.outputs[artifactPath]! };
  context.stages.kernel = outcome.skipped ? 'skipped' : 'ran';
  task.title = `Build ${plan.kernel.makeTarget}: ${outcome.skipped ? 'up to date' : 'done'}`;
}

async function bundleKernel(plan: Plan, context: BuildContext, task: Task): Promise<void> {
  const sourcePath = join(plan.paths.outputDirectory, 'kernel.c');
  const artifact = context.artifact!;
  const outcome = await runStamped<BundleFacts>({
    stampFile: stampFile(plan, 'bundle'),
    inputs: { artifact: artifact.sha256, kernelVersion: context.kernelVersion, format: BUNDLE_FORMAT, kind: plan.kernel.artifactFormat },
    outputFiles: [sourcePath],
    run: async () => {
      const data = await readFile(artifact.path);
      const bundle = plan.kernel.artifactFormat === 'elf'
        ? bundleElfKernel(data, artifact.path)
        : bundleRaw(data, { loadAddress: 0x80000000n, entryAddress: 0x80000000n });
      await writeFileAtomic(sourcePath, renderKernelSource(bundle, { kernelVersion: context.kernelVersion! }));
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
  context.stages.bundle = outcome.skipped ? 'skipped' : 'ran';
  task.title = `Bundle kernel.c: ${outcome.skipped ? 'up to date' : 'written'} (load ${outcome.data.loadAddress}, entry ${outcome.data.entryAddress})`;
}

async function linkStage(plan: Plan, context: BuildContext, task: Task, options: PipelineOptions): Promise<void> {
  const libraryPath = join(plan.paths.outputDirectory, plan.library.names.fileName);
  const outcome = await runStamped({
    stampFile: stampFile(plan, 'link'),
    inputs: { source: context.kernelSource!.sha256, cc: plan.cc, names: plan.library.names, version: plan.library.version },
    outputFiles: [libraryPath],
    run: async () => {
      await rm(logFile(plan, 'link'), { force: true });
      await linkLibrary(
        {
          sources: [context.kernelSource!.path],
          outputDirectory: plan.paths.outputDirectory,
          targetOs: plan.targetOs,
          version: plan.library.version,
          names: plan.library.names,
          cc: plan.cc,
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
    config: { sha256: context.config!.sha256, maxCpus: plan.maxCpus, fragments: context.config!.fragments },
    bundle: {
      file: 'kernel.c',
      sha256: context.bundle!.bundleSha256,
      sourceSha256: context.kernelSource!.sha256,
      loadAddress: context.bundle!.loadAddress,
      entryAddress: context.bundle!.entryAddress,
    },
    library: { file: plan.library.names.fileName, soname: plan.library.names.soname, sha256: context.library!.sha256 },
  };
}

/** The build as a list of stages, run in order with progress on stderr. */
export async function runBuild(plan: Plan, options: PipelineOptions): Promise<BuildResult> {
  const context: BuildContext = { stages: {}, warnings: [] };
  const tasks: ListrTask<BuildContext>[] = [
    {
      title: 'Check host tools',
      task: async () => checkBuildHost(plan),
    },
    {
      title: 'Kernel source',
      task: async (ctx, task) => {
        ctx.tarball = await obtainTarball(plan, task, options.signal);
        ctx.patches = plan.patchDirectory ? await listPatches(plan.patchDirectory) : [];
      },
    },
    { title: 'Kernel tree: extract and patch', task: (ctx, task) => prepareTree(plan, ctx, task, options) },
    { title: 'Configure', task: (ctx, task) => configureKernel(plan, ctx, task, options) },
    { title: `Build ${plan.kernel.makeTarget}`, task: (ctx, task) => buildKernel(plan, ctx, task, options) },
    { title: 'Bundle kernel.c', task: (ctx, task) => bundleKernel(plan, ctx, task) },
    { title: `Link ${plan.library.names.fileName}`, task: (ctx, task) => linkStage(plan, ctx, task, options) },
    { title: 'Self-test', task: (ctx) => selfTestStage(plan, ctx, options) },
    {
      title: 'Write provenance.json',
      task: async (ctx) => {
        await writeProvenance(join(plan.paths.outputDirectory, 'provenance.json'), provenanceOf(plan, ctx));
        await writeFileAtomic(join(plan.paths.outputDirectory, 'kernel.config'), await readFile(ctx.config!.path));
      },
    },
  ];

  const listr = new Listr<BuildContext>(tasks, {
    ctx: context,
    exitOnError: true,
    registerSignalListeners: false,
    renderer: options.quiet ? 'silent' : options.verbose ? 'verbose' : 'default',
    fallbackRenderer: 'simple',
    rendererOptions: { collapseSubtasks: false, outputBar: 1, persistentOutput: false, timer: { condition: true, field: (ms: number) => `[${formatElapsed(ms)}]`, format: () => (text: string) => text } } as never,
    processOutput: new ProcessOutput(process.stderr, process.stderr),
  } as never);
  await listr.run(context);

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
