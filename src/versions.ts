// SPDX-License-Identifier: LGPL-2.1-only
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * The kernel release built when no `--kernel-version` is given: one pinned
 * release of the 6.12 long-term series. Change it here only.
 */
export const DEFAULT_KERNEL_VERSION = '6.12.44';

/**
 * The libkrunfw ABI: libkrun 1.17 and later dlopen `libkrunfw.so.5` and
 * `libkrunfw.5.dylib`. The number also encodes the guest-kernel protocol,
 * so a library must never be renamed to another ABI.
 */
export const ABI_VERSION = 5;

/** The library's own version after the ABI: file `libkrunfw.so.5.<minor>.<patch>`. */
export const LIBRARY_MINOR_VERSION = 0;
export const LIBRARY_PATCH_VERSION = 0;

/** Fixed build identity, so two builds of the same inputs give the same kernel bytes. */
export const REPRODUCIBLE_BUILD_ENV: Readonly<Record<string, string>> = {
  KBUILD_BUILD_TIMESTAMP: 'Thu Jan  1 00:00:00 UTC 2015',
  KBUILD_BUILD_USER: 'root',
  KBUILD_BUILD_HOST: 'libkrunfw',
};

/** Returns this tool's version from package.json. */
export function toolVersion(): string {
  const manifest = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return manifest.version;
}

/** Returns the repository root (where `patches/` and `config-generic/` live). */
export function packageRoot(): string {
  return fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');
}
