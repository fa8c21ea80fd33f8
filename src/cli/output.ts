// SPDX-License-Identifier: LGPL-2.1-only
import chalk from 'chalk';
import { isKrunfwError } from '../errors.js';

/** Options every subcommand takes. */
export interface GlobalOptions {
  verbose: boolean;
  json: boolean;
}

/** Prints an error to stderr: the message, its details and the next step; the stack only with --verbose. */
export function printError(error: unknown, verbose: boolean): void {
  if (isKrunfwError(error)) {
    process.stderr.write(`${chalk.red('error:')} ${error.message}\n`);
    if (error.details) process.stderr.write(`${error.details.replace(/^/gm, '  ')}\n`);
    if (error.hint) process.stderr.write(`${chalk.yellow('hint:')} ${error.hint}\n`);
    if (verbose && error.stack) process.stderr.write(`${chalk.dim(error.stack)}\n`);
    return;
  }
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`${chalk.red('internal error:')} ${message}\n`);
  if (verbose && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  else process.stderr.write('Run again with --verbose for the stack trace, and report it as a bug.\n');
}

/** Writes one JSON document on stdout: the only thing --json prints there. */
export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, (_, item) => (typeof item === 'bigint' ? `0x${item.toString(16)}` : item), 2) + '\n');
}

/**
 * Runs a subcommand with Ctrl-C and SIGTERM turned into an abort signal, so
 * running programs are stopped and temporary files removed before exiting.
 * Sets the exit status: 0, 1 on failure, 130 or 143 when interrupted.
 */
export async function runCommand(options: GlobalOptions, body: (signal: AbortSignal) => Promise<void>): Promise<void> {
  const controller = new AbortController();
  let interruptedBy: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    if (interruptedBy) return;
    interruptedBy = signal;
    process.stderr.write(`\nInterrupted (${signal}); stopping and cleaning up...\n`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await body(controller.signal);
  } catch (error) {
    if (interruptedBy) {
      process.exitCode = interruptedBy === 'SIGINT' ? 130 : 143;
      return;
    }
    printError(error, options.verbose);
    // A script that asked for --json gets a document on stdout for failures too.
    if (options.json) {
      printJson(
        isKrunfwError(error)
          ? { ok: false, error: { message: error.message, hint: error.hint, details: error.details } }
          : { ok: false, error: { message: error instanceof Error ? error.message : String(error), internal: true } },
      );
    }
    process.exitCode = 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (interruptedBy && !process.exitCode) process.exitCode = interruptedBy === 'SIGINT' ? 130 : 143;
}
