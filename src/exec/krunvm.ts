// SPDX-License-Identifier: LGPL-2.1-only
import { createWriteStream, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { execa } from 'execa';
import { KrunfwError } from '../errors.js';
import { type Command, type Executor, type RunOptions, formatArgv } from './executor.js';
import { FAILURE_TAIL_LINES, LineTail } from './local.js';

/** Result of one krunvm call. */
export interface KrunvmResult {
  exitCode: number;
  /** stdout and stderr together, in order; krunvm prints its own errors on stdout. */
  output: string;
}

/**
 * krunvm's own error texts and what to tell the user. krunvm prints them on
 * stdout and exits 255 (krunvm 0.2.x).
 */
const KNOWN_FAILURES: Array<{ pattern: RegExp; message: (vm: string) => string; hint: (vm: string) => string }> = [
  {
    pattern: /diskutil apfs addVolume|Case-sensitive APFS|storage volume/i,
    message: () => 'krunvm has no storage volume configured, so it stopped to ask for one',
    hint: () =>
      'Create a case-sensitive APFS volume for krunvm (diskutil apfs addVolume disk3 "Case-sensitive APFS" krunvm), run "krunvm list" once in a terminal and enter its mount point, then run the build again.',
  },
  {
    pattern: /A VM with this name already exists/,
    message: (vm) => `krunvm already has a VM named ${vm}`,
    hint: (vm) => `Another build in this work directory may be running. If not, remove the VM with: krunvm delete ${vm}`,
  },
  {
    pattern: /Couldn't acquire lock file/,
    message: (vm) => `VM ${vm} is already running`,
    hint: () => 'Another krunfw-mac build in this work directory is using it; wait for that build to finish or stop it.',
  },
  {
    pattern: /No VM found with/,
    message: (vm) => `krunvm has no VM named ${vm}`,
    hint: () => 'It was deleted while the build ran; run the build again.',
  },
  {
    pattern: /container not known/,
    message: (vm) => `krunvm cannot delete VM ${vm}: its buildah container is gone`,
    hint: (vm) => `Remove the leftover VM record by hand (buildah containers --all; krunvm delete ${vm}), or build in another work directory, which gets another VM name.`,
  },
  {
    pattern: /Error setting VM mapped volumes/,
    message: () => 'krunvm could not map the work directory into the VM',
    hint: () => 'Volume mapping needs krunvm 0.2.6 or later and libkrun 1.8 or later. Run: brew upgrade krunvm libkrun',
  },
];

/** Turns a failed krunvm call into an error that names the VM and a next step. */
export function krunvmFailure(args: readonly string[], result: KrunvmResult, vm: string, logFile?: string): KrunfwError {
  const known = KNOWN_FAILURES.find((failure) => failure.pattern.test(result.output));
  if (known) return new KrunfwError(known.message(vm), { hint: known.hint(vm), details: lastLines(result.output) });
  return new KrunfwError(`krunvm ${args[0]} failed with exit status ${result.exitCode}: krunvm ${formatArgv(args)}`, {
    details: lastLines(result.output),
    hint: logFile ? `Full output: ${logFile}` : undefined,
  });
}

function lastLines(text: string): string {
  return text.trimEnd().split('\n').slice(-FAILURE_TAIL_LINES).join('\n');
}

/**
 * Runs krunvm with stdin closed, so a first-run prompt for the storage
 * volume gets end-of-file instead of waiting on a terminal that no user can see.
 */
export async function runKrunvm(
  krunvm: string,
  args: readonly string[],
  options: RunOptions & { env?: Record<string, string> } = {},
): Promise<KrunvmResult> {
  let log: ReturnType<typeof createWriteStream> | undefined;
  if (options.logFile) {
    mkdirSync(dirname(options.logFile), { recursive: true });
    log = createWriteStream(options.logFile, { flags: 'a' });
    log.write(`$ krunvm ${formatArgv(args)}\n`);
  }
  const lines = new LineTail(1);
  // Spawned directly, never through a shell script: macOS strips DYLD_* variables from programs started by #! scripts.
  const child = execa(krunvm, args, {
    stdin: 'ignore',
    all: true,
    reject: false,
    cancelSignal: options.signal,
    forceKillAfterDelay: 10_000,
    env: options.env,
    maxBuffer: 64 * 1024 * 1024,
  });
  let output = '';
  child.all?.on('data', (chunk: Buffer) => {
    const text = chunk.toString('utf8');
    log?.write(text);
    // The guest console of a real VM may end lines with \r\n.
    output += text.replace(/\r\n/g, '\n');
    for (const line of lines.push(text.replace(/\r\n/g, '\n'))) if (!line.startsWith(STATUS_MARKER)) options.onLine?.(line);
  });
  const result = await child;
  if (log) await new Promise<void>((resolve) => log.end(resolve));
  if (result.code === 'ENOENT') {
    throw new KrunfwError(`krunvm was not found: ${krunvm}`, { hint: 'Install it with: brew tap libkrun/krun && brew install krunvm' });
  }
  if (result.isCanceled || options.signal?.aborted) throw new KrunfwError(`Interrupted: krunvm ${formatArgv(args)}`);
  return { exitCode: result.exitCode ?? 128, output };
}

/**
 * The guest side of every command: a shell that runs the argv it is given
 * as "$@" (so no quoting is involved) and prints the exit status as the
 * last line. Older krunvm and libkrun exit 0 whatever the guest command
 * did, so the status line is how failure is seen.
 */
export const STATUS_MARKER = 'krunfw-guest-status:';
const STATUS_SCRIPT = `"$@"; status=$?; printf '\\n${STATUS_MARKER}%d\\n' "$status"; exit "$status"`;

/** Splits a guest command's output into what the command printed and its exit status. */
export function parseGuestOutput(output: string): { text: string; status: number | undefined } {
  const index = output.lastIndexOf(`\n${STATUS_MARKER}`);
  if (index < 0) return { text: output, status: undefined };
  const match = /^(\d+)/.exec(output.slice(index + 1 + STATUS_MARKER.length));
  return { text: output.slice(0, index), status: match ? Number(match[1]) : undefined };
}

/**
 * Runs commands inside a krunvm VM with `krunvm start`. Every guest argument
 * follows `--`, because krunvm rejects any argument starting with `-`
 * before it. `env -C` sets the working directory and environment, because
 * `krunvm start` has no option for either.
 */
export class KrunvmExecutor implements Executor {
  readonly name: string;

  constructor(
    private readonly krunvm: string,
    private readonly vm: string,
    /** Variables for every guest command, such as a builder's DEBIAN_FRONTEND. */
    private readonly guestEnv: Readonly<Record<string, string>> = {},
    /** Variables for krunvm itself, such as DYLD_LIBRARY_PATH for the smoke test. */
    private readonly hostEnv?: Record<string, string>,
  ) {
    this.name = `krunvm VM ${vm}`;
  }

  /** Returns the krunvm arguments that run `command` in the VM. */
  startArguments(command: Command): string[] {
    const environment = { ...this.guestEnv, ...command.env };
    return [
      'start',
      this.vm,
      '/usr/bin/env',
      '--',
      '-C',
      command.cwd,
      ...(command.unsetEnv ?? []).flatMap((name) => ['-u', name]),
      ...Object.entries(environment).map(([key, value]) => `${key}=${value}`),
      '/bin/sh',
      '-c',
      STATUS_SCRIPT,
      'krunfw-guest',
      ...command.argv,
    ];
  }

  async run(command: Command, options: RunOptions = {}): Promise<void> {
    await this.execute(command, options);
  }

  async capture(command: Command, options: RunOptions = {}): Promise<string> {
    return (await this.execute(command, options)).trim();
  }

  private async execute(command: Command, options: RunOptions): Promise<string> {
    const args = this.startArguments(command);
    const result = await runKrunvm(this.krunvm, args, { ...options, env: this.hostEnv });
    const { text, status } = parseGuestOutput(result.output);
    if (status === 0) return text;
    if (status === undefined) {
      if (result.exitCode !== 0) throw krunvmFailure(args, result, this.vm, options.logFile);
      throw new KrunfwError(`The guest command reported no exit status: ${formatArgv(command.argv)} in VM ${this.vm}`, {
        details: lastLines(text),
        hint: 'The VM may have failed to start or been stopped. Run the build again with --verbose to see the VM\'s output.',
      });
    }
    throw new KrunfwError(`Command failed in VM ${this.vm} (exited with status ${status}): ${formatArgv(command.argv)}`, {
      details: lastLines(text),
      hint: options.logFile ? `Full output: ${options.logFile}` : undefined,
    });
  }
}
