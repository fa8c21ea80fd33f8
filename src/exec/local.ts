// SPDX-License-Identifier: LGPL-2.1-only
import { createWriteStream, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { execa } from 'execa';
import { KrunfwError } from '../errors.js';
import { type Command, type Executor, type RunOptions, formatArgv } from './executor.js';

/** How many of a failed command's last output lines an error shows. */
export const FAILURE_TAIL_LINES = 25;

/** Keeps the last few lines of a stream of text. */
export class LineTail {
  private readonly lines: string[] = [];
  private partial = '';

  constructor(private readonly limit: number) {}

  /** Adds a chunk and returns the complete lines it finished. */
  push(chunk: string): string[] {
    const parts = (this.partial + chunk).split('\n');
    this.partial = parts.pop() ?? '';
    for (const line of parts) {
      this.lines.push(line);
      if (this.lines.length > this.limit) this.lines.shift();
    }
    return parts;
  }

  text(): string {
    return [...this.lines, ...(this.partial ? [this.partial] : [])].join('\n');
  }
}

/** Builds the child's environment from this process's, applying a command's changes. */
export function commandEnvironment(command: Command): Record<string, string> {
  const environment: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined) environment[key] = value;
  }
  for (const key of command.unsetEnv ?? []) delete environment[key];
  return { ...environment, ...command.env };
}

/** Runs commands on this host with execa, without a shell and with stdin closed. */
export class LocalExecutor implements Executor {
  readonly name = 'host';

  async run(command: Command, options: RunOptions = {}): Promise<void> {
    await this.execute(command, options);
  }

  async capture(command: Command, options: RunOptions = {}): Promise<string> {
    return (await this.execute(command, options)).trim();
  }

  private async execute(command: Command, options: RunOptions): Promise<string> {
    const [file, ...args] = command.argv;
    if (file === undefined) throw new Error('empty argv');
    let log: ReturnType<typeof createWriteStream> | undefined;
    if (options.logFile) {
      mkdirSync(dirname(options.logFile), { recursive: true });
      log = createWriteStream(options.logFile, { flags: 'a' });
      log.write(`$ ${formatArgv(command.argv)}\n`);
    }
    const tail = new LineTail(FAILURE_TAIL_LINES);
    const child = execa(file, args, {
      cwd: command.cwd,
      env: commandEnvironment(command),
      extendEnv: false,
      stdin: 'ignore',
      all: true,
      reject: false,
      cancelSignal: options.signal,
      forceKillAfterDelay: 5000,
      maxBuffer: 64 * 1024 * 1024,
    });
    child.all?.on('data', (chunk: Buffer) => {
      const text = chunk.toString('utf8');
      log?.write(text);
      for (const line of tail.push(text)) options.onLine?.(line);
    });
    const result = await child;
    if (log) await new Promise<void>((resolve) => log.end(resolve));

    if (result.isCanceled || options.signal?.aborted) {
      throw new KrunfwError(`Interrupted: ${formatArgv(command.argv)}`);
    }
    if (result.failed) {
      const reason = result.code === 'ENOENT'
        ? `${file} was not found`
        : result.exitCode !== undefined
          ? `exited with status ${result.exitCode}`
          : `was killed by ${result.signal ?? 'a signal'}`;
      throw new KrunfwError(`Command failed (${reason}): ${formatArgv(command.argv)}`, {
        details: tail.text(),
        hint: options.logFile ? `Full output: ${options.logFile}` : undefined,
      });
    }
    return typeof result.stdout === 'string' ? result.stdout : '';
  }
}
