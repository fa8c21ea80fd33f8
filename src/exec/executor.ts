// SPDX-License-Identifier: LGPL-2.1-only

/**
 * One external program to run, described as data so that the same stage can
 * run on this host or inside a builder VM. Paths are as the executor's side
 * sees them.
 */
export interface Command {
  /** Program and arguments; never passed through a shell. */
  argv: readonly string[];
  /** Working directory. */
  cwd: string;
  /** Variables set on top of the executor's environment. */
  env?: Readonly<Record<string, string>>;
  /** Variables removed from the executor's environment, such as an inherited MAKEFLAGS. */
  unsetEnv?: readonly string[];
}

export interface RunOptions {
  /** Host path of a log file that receives the full output (appended). */
  logFile?: string;
  /** Called with each output line, for progress display. */
  onLine?: (line: string) => void;
  /** Aborting stops the program. */
  signal?: AbortSignal;
}

/** Runs commands somewhere: on this host, or in a VM. */
export interface Executor {
  /** A short name for messages: "host", "krunvm VM krunfw-...". */
  readonly name: string;
  /** Runs a command; throws a KrunfwError with the output's last lines when it fails. */
  run(command: Command, options?: RunOptions): Promise<void>;
  /** Runs a command and returns its standard output; for short outputs only. */
  capture(command: Command, options?: RunOptions): Promise<string>;
}

/** Renders argv for messages and logs, quoting only where a reader needs it. */
export function formatArgv(argv: readonly string[]): string {
  return argv.map((argument) => (/^[\w@%+=:,./-]+$/.test(argument) ? argument : JSON.stringify(argument))).join(' ');
}
