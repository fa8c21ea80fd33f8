// SPDX-License-Identifier: LGPL-2.1-only
//
// Times `krunfw-mac build` when nothing changed: the whole command, from
// process start to exit, as a user sees it.
//
//   node dist/bench/noop-rebuild.js [WORK_DIR] [-- extra build arguments]
//
// WORK_DIR must hold a finished build; the default is the x86_64 work
// directory the end-to-end tests leave in the test cache, built from
// Debian's 6.1 source (run `npm test` once first).
import { execFileSync, spawnSync } from 'node:child_process';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const RUNS = 5;
const repository = fileURLToPath(new URL('../..', import.meta.url));
const cli = join(repository, 'bin', 'krunfw-mac.js');
const separator = process.argv.indexOf('--');
const positional = separator < 0 ? process.argv.slice(2) : process.argv.slice(2, separator);
const extra = separator < 0 ? ['--kernel-tarball', '/usr/src/linux-source-6.1.tar.xz'] : process.argv.slice(separator + 1);
const cache = process.env.KRUNFW_TEST_CACHE ?? join(os.homedir(), '.cache', 'krunfw-mac-tests');
const workDirectory = positional[0] ?? join(cache, 'e2e', 'x86_64');
const args = [cli, 'build', '--json', '--work-dir', workDirectory, ...extra];

const warmup = spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, KRUNFW_CACHE_DIR: join(cache, 'downloads') } });
if (warmup.status !== 0) {
  process.stderr.write(`The build in ${workDirectory} failed; finish a build there first.\n${warmup.stderr}`);
  process.exit(1);
}
const times: number[] = [];
let stages = '';
for (let run = 0; run < RUNS; run++) {
  const started = process.hrtime.bigint();
  const output = execFileSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, KRUNFW_CACHE_DIR: join(cache, 'downloads') } });
  times.push(Number(process.hrtime.bigint() - started) / 1e9);
  stages = JSON.stringify((JSON.parse(output) as { stages: unknown }).stages);
}
times.sort((a, b) => a - b);
const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
process.stdout.write(`no-op rebuild of ${workDirectory}\n`);
process.stdout.write(`machine: ${os.cpus().length} x ${cpu}, Node.js ${process.version}\n`);
process.stdout.write(`stages: ${stages}\n`);
process.stdout.write(`runs: ${times.map((time) => time.toFixed(2)).join(' s, ')} s\n`);
process.stdout.write(`median: ${times[Math.floor(times.length / 2)]!.toFixed(2)} s\n`);
