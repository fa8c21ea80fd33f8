// SPDX-License-Identifier: LGPL-2.1-only
// Benchmark of the kernel bundle: reading + bundling + rendering kernel.c, and compiling the
// result with the C compiler, compared with the reference encoding (every byte as \xNN,
// 16 bytes a line).
//
//   npx tsc -p tsconfig.json
//   node dist/bench/bundle.js [VMLINUX] [--runs N] [--compile-runs N] [--bytes-per-line 16,1024,...]
//                               [--synthetic] [--keep]
//
// Without VMLINUX it uses KRUNFW_BENCH_VMLINUX, then the vmlinux that `npm test` leaves in the
// test cache, then the first x86_64 vmlinux under /work/kernel-scratch (a development machine's),
// and otherwise synthesizes a 25 MiB ELF file (always with --synthetic). --keep leaves the
// generated C files and libraries in the temporary directory it prints.
import { execa } from 'execa';
import { mkdtemp, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { homedir, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { DEFAULT_BYTES_PER_LINE, renderKernelSource } from '../src/bundle/c-source.js';
import { bundleElfKernel, type KernelBundle } from '../src/bundle/layout.js';
import { buildElf } from '../test/support/elf-fixture.js';

const SCRATCH_DIRECTORY = '/work/kernel-scratch';
const SYNTHETIC_SIZE = 25 * 1024 * 1024;
const HEADER = { kernelVersion: 'benchmark' };

interface Input {
  path: string;
  description: string;
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      runs: { type: 'string', default: '7' },
      'compile-runs': { type: 'string', default: '3' },
      'bytes-per-line': { type: 'string' },
      keep: { type: 'boolean', default: false },
      synthetic: { type: 'boolean', default: false },
    },
  });
  const runs = positiveInteger(values.runs, '--runs');
  const compileRuns = positiveInteger(values['compile-runs'], '--compile-runs');
  const lineSizes = values['bytes-per-line']?.split(',').map((text) => positiveInteger(text, '--bytes-per-line'));
  const cc = process.env.CC ?? 'cc';

  const workDirectory = await mkdtemp(join(tmpdir(), 'krunfw-bench-'));
  try {
    const input = await findInput(positionals[0], values.synthetic, workDirectory);
    console.log(`input: ${input.description}`);
    console.log(`machine: ${await describeMachine(cc)}`);
    console.log('');

    const bundle = await timeGeneration(input.path, runs);
    const files = await writeSources(bundle, workDirectory);
    await compareCompiles(files, bundle.bytes.byteLength, cc, compileRuns);
    if (lineSizes !== undefined) {
      await compareLineSizes(bundle, lineSizes, cc, compileRuns, workDirectory);
    }
    console.log(`\nload average at the end: ${loadavg().map((value) => value.toFixed(2)).join(' ')}`);
    if (values.keep) {
      console.log(`files kept in ${workDirectory}`);
    }
  } finally {
    if (!values.keep) {
      await rm(workDirectory, { recursive: true, force: true });
    }
  }
}

interface StepTime {
  wallMs: number;
  /** User + system CPU time of this process, which other processes on the machine disturb less. */
  cpuMs: number;
}

/** Runs `step` and returns its result with its wall-clock and CPU time. */
async function measure<T>(step: () => T | Promise<T>): Promise<[T, StepTime]> {
  const cpuStart = process.cpuUsage();
  const wallStart = performance.now();
  const result = await step();
  const wallMs = performance.now() - wallStart;
  const cpu = process.cpuUsage(cpuStart);
  return [result, { wallMs, cpuMs: (cpu.user + cpu.system) / 1000 }];
}

/**
 * Times reading, bundling and rendering `runs` times, prints the first run and the median of
 * the rest, and returns the bundle.
 */
async function timeGeneration(path: string, runs: number): Promise<KernelBundle> {
  const samples: Record<'read' | 'bundle' | 'render' | 'total', StepTime[]> = { read: [], bundle: [], render: [], total: [] };
  let bundle: KernelBundle | undefined;
  let sourceSize = 0;

  for (let run = 0; run < runs; run++) {
    const [data, read] = await measure(() => readFile(path));
    const [runBundle, layout] = await measure(() => bundleElfKernel(data, path));
    const [source, render] = await measure(() => renderKernelSource(runBundle, HEADER));
    bundle = runBundle;
    sourceSize = source.byteLength;

    samples.read.push(read);
    samples.bundle.push(layout);
    samples.render.push(render);
    samples.total.push({ wallMs: read.wallMs + layout.wallMs + render.wallMs, cpuMs: read.cpuMs + layout.cpuMs + render.cpuMs });
  }
  if (bundle === undefined) {
    throw new Error('--runs must be at least 1');
  }

  // A build renders once per process, so the first run, with V8 still compiling, is what a user
  // waits for. The later runs show the steady state.
  const rows = [['step', 'first run wall', 'first run CPU', `next ${runs - 1}: median wall`, 'median CPU']];
  for (const [step, values] of Object.entries(samples)) {
    const rest = values.slice(1);
    rows.push([
      step,
      formatMs(values[0].wallMs),
      formatMs(values[0].cpuMs),
      rest.length > 0 ? formatMs(median(rest.map((value) => value.wallMs))) : 'n/a',
      rest.length > 0 ? formatMs(median(rest.map((value) => value.cpuMs))) : 'n/a',
    ]);
  }
  console.log(`kernel.c generation: ${formatMiB(bundle.bytes.byteLength)} bundle, ${formatMiB(sourceSize)} kernel.c`);
  printTable(rows);
  console.log('');
  return bundle;
}

interface SourceFile {
  label: string;
  path: string;
  size: number;
  generationMs: number;
}

/** Writes kernel.c in the new encoding and in the reference encoding, timing one run of each. */
async function writeSources(bundle: KernelBundle, directory: string): Promise<SourceFile[]> {
  let start = performance.now();
  const newSource = renderKernelSource(bundle, HEADER);
  const newMs = performance.now() - start;

  start = performance.now();
  const referenceSource = renderReferenceSource(bundle, newSource);
  const referenceMs = performance.now() - start;

  const files = [
    { label: 'reference (\\xNN, 16 bytes a line)', path: join(directory, 'kernel-reference.c'), source: referenceSource, ms: referenceMs },
    { label: `new (octal, ${DEFAULT_BYTES_PER_LINE} bytes a line)`, path: join(directory, 'kernel-new.c'), source: newSource, ms: newMs },
  ];
  for (const file of files) {
    await writeFile(file.path, file.source);
  }
  return files.map((file) => ({ label: file.label, path: file.path, size: file.source.byteLength, generationMs: file.ms }));
}

/** One C file to compile: a label for the table and its path. */
interface CompileJob {
  label: string;
  path: string;
  optimization: '-O0' | '-O2';
}

interface CompileResult {
  /** Median wall-clock time in seconds. */
  wallSeconds: number;
  /** Median user + system CPU time in seconds, which other processes on the machine disturb less. */
  cpuSeconds?: number;
  /** Median maximum resident set size in KiB. */
  maxRssKiB?: number;
  librarySize: number;
}

/**
 * Compiles every job `runs` times, taking the jobs in turn within each run so that a change
 * in the machine's load affects all of them alike, and returns the medians per job.
 */
async function compileAll(jobs: CompileJob[], cc: string, runs: number): Promise<CompileResult[]> {
  const samples = jobs.map(() => ({ wall: [] as number[], cpu: [] as number[], rss: [] as number[] }));
  const timer = await findGnuTime();
  for (let run = 0; run < runs; run++) {
    for (const [index, job] of jobs.entries()) {
      const args = [job.optimization, '-fPIC', '-shared', '-DABI_VERSION=5', '-o', libraryPath(job), job.path];
      const start = performance.now();
      const result = timer === undefined ? await execa(cc, args) : await execa(timer, ['-f', '%U %S %M', cc, ...args]);
      samples[index].wall.push((performance.now() - start) / 1000);
      if (timer !== undefined) {
        // GNU time prints its line last, after anything the compiler wrote to stderr.
        const lastLine = result.stderr.trim().split('\n').at(-1) ?? '';
        const [user, system, rss] = lastLine.split(' ').map(Number);
        samples[index].cpu.push(user + system);
        samples[index].rss.push(rss);
      }
    }
  }
  return Promise.all(
    jobs.map(async (job, index) => ({
      wallSeconds: median(samples[index].wall),
      cpuSeconds: timer === undefined ? undefined : median(samples[index].cpu),
      maxRssKiB: timer === undefined ? undefined : median(samples[index].rss),
      librarySize: (await stat(libraryPath(job))).size,
    })),
  );
}

function libraryPath(job: CompileJob): string {
  return `${job.path}${job.optimization}.so`;
}

/** Returns GNU time, which reports the child's CPU time and maximum RSS, or undefined (macOS has BSD time). */
async function findGnuTime(): Promise<string | undefined> {
  const path = '/usr/bin/time';
  const result = await execa(path, ['-f', '%M', 'true'], { reject: false }).catch(() => undefined);
  return result?.exitCode === 0 ? path : undefined;
}

async function compareCompiles(files: SourceFile[], bundleSize: number, cc: string, runs: number): Promise<void> {
  const jobs = files.flatMap((file) =>
    (['-O0', '-O2'] as const).map((optimization) => ({ label: file.label, path: file.path, optimization })),
  );
  const results = await compileAll(jobs, cc, runs);

  const rows: string[][] = [['C file', 'size', 'x bundle', 'write (1 run)', 'cc', 'wall', 'CPU', 'max RSS', '.so size']];
  for (const [index, job] of jobs.entries()) {
    const file = files.find((candidate) => candidate.path === job.path)!;
    const result = results[index];
    rows.push([
      file.label,
      formatMiB(file.size),
      (file.size / bundleSize).toFixed(2),
      formatMs(file.generationMs),
      job.optimization,
      formatSeconds(result.wallSeconds),
      result.cpuSeconds === undefined ? 'n/a' : formatSeconds(result.cpuSeconds),
      result.maxRssKiB === undefined ? 'n/a' : formatMiB(result.maxRssKiB * 1024),
      formatMiB(result.librarySize),
    ]);
  }
  console.log(`compile with ${cc} -fPIC -shared -DABI_VERSION=5, median of ${runs} runs:`);
  printTable(rows);
}

async function compareLineSizes(
  bundle: KernelBundle,
  lineSizes: number[],
  cc: string,
  runs: number,
  directory: string,
): Promise<void> {
  const jobs: CompileJob[] = [];
  const sizes: number[] = [];
  for (const bytesPerLine of lineSizes) {
    const path = join(directory, `kernel-line-${bytesPerLine}.c`);
    const source = renderKernelSource(bundle, HEADER, { bytesPerLine });
    await writeFile(path, source);
    jobs.push({ label: String(bytesPerLine), path, optimization: '-O0' });
    sizes.push(source.byteLength);
  }
  const results = await compileAll(jobs, cc, runs);

  const rows: string[][] = [['bytes per line', 'kernel.c size', 'wall', 'CPU', 'max RSS']];
  for (const [index, job] of jobs.entries()) {
    const result = results[index];
    rows.push([
      job.label,
      formatMiB(sizes[index]),
      formatSeconds(result.wallSeconds),
      result.cpuSeconds === undefined ? 'n/a' : formatSeconds(result.cpuSeconds),
      result.maxRssKiB === undefined ? 'n/a' : formatMiB(result.maxRssKiB * 1024),
    ]);
  }
  console.log(`\nbytes per line of the new encoding, ${cc} -O0, median of ${runs} runs:`);
  printTable(rows);
}

/**
 * Writes the reference encoding: every byte as a two-digit \xNN escape, 16 bytes a line.
 * The declarations around the literal are taken from `newSource`, so that both files
 * compile to the same library.
 */
function renderReferenceSource(bundle: KernelBundle, newSource: Buffer): Buffer {
  const literalStart = newSource.indexOf('=\n"') + 2;
  const literalEnd = newSource.indexOf('";\n', literalStart) + 1;
  const prefix = newSource.subarray(0, literalStart);
  const suffix = newSource.subarray(literalEnd);

  const bytes = bundle.bytes;
  const lines = Math.ceil(bytes.byteLength / 16);
  // Each line is a quote, 16 escapes of 4 characters, a quote and a newline.
  const out = Buffer.allocUnsafe(prefix.byteLength + bytes.byteLength * 4 + lines * 3 + suffix.byteLength);
  let position = prefix.copy(out, 0);
  const hexDigits = Buffer.from('0123456789abcdef', 'latin1');
  for (let i = 0; i < bytes.byteLength; i++) {
    if (i % 16 === 0) {
      if (i > 0) {
        out[position++] = 0x22; // "
        out[position++] = 0x0a; // newline
      }
      out[position++] = 0x22;
    }
    const byte = bytes[i];
    out[position++] = 0x5c; // backslash
    out[position++] = 0x78; // x
    out[position++] = hexDigits[byte >> 4];
    out[position++] = hexDigits[byte & 15];
  }
  out[position++] = 0x22;
  position += suffix.copy(out, position);
  return out.subarray(0, position);
}

async function findInput(argument: string | undefined, synthetic: boolean, workDirectory: string): Promise<Input> {
  const explicitPath = synthetic ? undefined : (argument ?? process.env.KRUNFW_BENCH_VMLINUX);
  if (explicitPath !== undefined) {
    return { path: explicitPath, description: `${explicitPath} (${formatMiB((await stat(explicitPath)).size)})` };
  }
  const found = synthetic ? undefined : await findScratchVmlinux();
  if (found !== undefined) {
    return { path: found, description: `${found} (${formatMiB((await stat(found)).size)}, found automatically)` };
  }
  const path = join(workDirectory, 'synthetic-vmlinux');
  await writeFile(path, synthesizeVmlinux());
  return {
    path,
    description:
      `synthetic ${formatMiB(SYNTHETIC_SIZE)} ELF file. Its byte mix only imitates ` +
      'a kernel, so encoded size and compile time differ from a real vmlinux.',
  };
}

/** Returns the first x86_64 vmlinux at SCRATCH/*\/vmlinux or SCRATCH/*\/*\/vmlinux, if any. */
async function findScratchVmlinux(): Promise<string | undefined> {
  // The end-to-end tests leave a real vmlinux in the test cache; any machine that ran `npm test` has one.
  const testCache = process.env.KRUNFW_TEST_CACHE ?? join(homedir(), '.cache', 'krunfw-mac-tests');
  const candidates: string[] = [join(testCache, 'e2e', 'x86_64', '.krunfw', 'x86_64-generic', 'tree', 'vmlinux')];
  const entries = await readdir(SCRATCH_DIRECTORY, { withFileTypes: true }).catch(() => []);
  for (const entry of entries.filter((item) => item.isDirectory()).sort((a, b) => a.name.localeCompare(b.name))) {
    const directory = join(SCRATCH_DIRECTORY, entry.name);
    candidates.push(join(directory, 'vmlinux'));
    const children = await readdir(directory, { withFileTypes: true }).catch(() => []);
    for (const child of children.filter((item) => item.isDirectory()).sort((a, b) => a.name.localeCompare(b.name))) {
      candidates.push(join(directory, child.name, 'vmlinux'));
    }
  }
  for (const candidate of candidates) {
    if (await isX86Vmlinux(candidate)) {
      return candidate;
    }
  }
  return undefined;
}

/** Only an x86_64 vmlinux is bundled as ELF, and an aarch64 build tree also contains a vmlinux. */
async function isX86Vmlinux(path: string): Promise<boolean> {
  const EM_X86_64 = 62;
  const handle = await open(path, 'r').catch(() => undefined);
  if (handle === undefined) {
    return false;
  }
  try {
    const header = Buffer.alloc(20);
    await handle.read(header, 0, header.byteLength, 0);
    return header.readUInt32BE(0) === 0x7f454c46 && header.readUInt16LE(18) === EM_X86_64;
  } finally {
    await handle.close();
  }
}

/**
 * Builds a 25 MiB ELF file shaped like an x86_64 vmlinux: text of pseudo-random bytes with
 * runs of zeros, read-only data of ASCII strings and zeros, and data that is mostly zeros.
 */
function synthesizeVmlinux(): Uint8Array {
  let state = 0x1234567;
  const next = (): number => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
  const text = new Uint8Array(Math.floor(SYNTHETIC_SIZE * 0.6));
  for (let i = 0; i < text.length; i++) {
    const value = next();
    text[i] = value % 8 === 0 ? 0 : value >>> 24;
  }
  const words = ['kernel', 'virtio', 'device', 'failed', '%s: %d\n', 'memory', 'cpu', '0x%lx', 'error'];
  const rodata = new Uint8Array(Math.floor(SYNTHETIC_SIZE * 0.25));
  for (let i = 0; i < rodata.length; ) {
    const value = next();
    if (value % 3 === 0) {
      rodata.fill(0, i, i + (value % 64));
      i += value % 64;
    } else {
      const word = Buffer.from(words[value % words.length], 'latin1');
      rodata.set(word.subarray(0, rodata.length - i), i);
      i += word.length;
    }
  }
  const data = new Uint8Array(SYNTHETIC_SIZE - text.length - rodata.length);
  for (let i = 0; i < data.length; i += 1 + (next() % 32)) {
    data[i] = next() >>> 24;
  }
  const load = 0x1000000n;
  return buildElf({
    entry: load,
    segments: [
      { paddr: load, data: text },
      { paddr: load + BigInt(align(text.length, 0x200000)), data: rodata },
      { paddr: load + BigInt(align(text.length, 0x200000) + align(rodata.length, 0x200000)), data, memsz: BigInt(data.length + 0x100000) },
    ],
  });
}

async function describeMachine(cc: string): Promise<string> {
  const cpuInfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const model = /^model name\s*:\s*(.*)$/m.exec(cpuInfo)?.[1] ?? 'unknown CPU';
  const cpus = (cpuInfo.match(/^processor\s*:/gm) ?? []).length;
  const compiler = (await execa(cc, ['--version'], { reject: false })).stdout.split('\n')[0];
  // Other processes slow every step, so the load average shows how far to trust the numbers.
  const load = loadavg().map((value) => value.toFixed(2)).join(' ');
  return `${model}, ${cpus} CPUs, Node ${process.version}, ${compiler}, load average ${load}`;
}

function printTable(rows: string[][]): void {
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  for (const row of rows) {
    console.log(`  ${row.map((cell, column) => cell.padEnd(widths[column])).join('  ')}`);
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function positiveInteger(text: string | undefined, option: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new Error(`${option} must be a positive integer, not ${text}`);
  }
  return value;
}

function align(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

function formatMs(ms: number): string {
  return `${ms.toFixed(1)} ms`;
}

function formatSeconds(seconds: number): string {
  return `${seconds.toFixed(2)} s`;
}

function formatMiB(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

await main();
