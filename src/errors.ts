// SPDX-License-Identifier: LGPL-2.1-only

/**
 * An expected failure: bad input, a missing tool, a failed download or
 * build step. The CLI prints `message` and `hint` without a stack trace;
 * anything else that is thrown is a bug and keeps its stack behind
 * `--verbose`.
 */
export class KrunfwError extends Error {
  /** The next step for the user, printed under the message. */
  readonly hint?: string;
  /** Extra output to show under the message, such as a log's last lines. */
  readonly details?: string;

  constructor(message: string, options: { hint?: string; details?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KrunfwError';
    this.hint = options.hint;
    this.details = options.details;
  }
}

export function isKrunfwError(error: unknown): error is KrunfwError {
  return error instanceof KrunfwError;
}
