// SPDX-License-Identifier: LGPL-2.1-only
import type { Command } from '../exec/executor.js';

/**
 * Extracts a kernel tarball into `destination`, dropping its single top-level
 * directory, whatever its name (`linux-6.12.44/` from kernel.org,
 * `linux-source-6.1/` from Debian's package). GNU tar detects the
 * compression.
 */
export function extractCommand(tarball: string, destination: string): Command {
  return {
    argv: ['tar', '-x', '-f', tarball, '-C', destination, '--strip-components=1', '--no-same-owner'],
    cwd: destination,
  };
}

/** Files every kernel tree has at its top, checked after extraction. */
export const KERNEL_TREE_MARKERS = ['Makefile', 'Kconfig', 'kernel/exit.c'];
