// SPDX-License-Identifier: LGPL-2.1-only
import type { Command } from '../exec/executor.js';
import type { GuestArch } from '../host.js';
import { REPRODUCIBLE_BUILD_ENV } from '../versions.js';
import { type KernelMakeTarget, makeTargetVariables } from './config.js';

/** Per guest arch: the kernel's ARCH, the make target and where it writes the artifact. */
export const KERNEL_TARGETS: Record<GuestArch, { makeArch: string; makeTarget: string; artifact: string; crossPrefix: string }> = {
  x86_64: { makeArch: 'x86_64', makeTarget: 'vmlinux', artifact: 'vmlinux', crossPrefix: 'x86_64-linux-gnu-' },
  aarch64: { makeArch: 'arm64', makeTarget: 'Image', artifact: 'arch/arm64/boot/Image', crossPrefix: 'aarch64-linux-gnu-' },
};

/**
 * The one make call that builds the kernel. MAKEFLAGS from an outer make is
 * dropped: passed on, its `w` flag from `-C` would be read as a goal.
 * KBUILD_BUILD_VERSION replaces the `.version` counter, which would
 * otherwise change `uname -v` on every build.
 */
export function buildKernelCommand(
  treeDirectory: string,
  target: KernelMakeTarget & { makeTarget: string },
  jobs: number,
): Command {
  return {
    argv: ['make', `-j${jobs}`, ...makeTargetVariables(target), target.makeTarget],
    cwd: treeDirectory,
    env: { ...REPRODUCIBLE_BUILD_ENV, KBUILD_BUILD_VERSION: '1' },
    unsetEnv: ['MAKEFLAGS', 'MAKELEVEL', 'MFLAGS'],
  };
}

/** Prints the tree's kernel version (VERSION.PATCHLEVEL.SUBLEVEL plus EXTRAVERSION). */
export function kernelVersionCommand(treeDirectory: string): Command {
  return { argv: ['make', '-s', 'kernelversion'], cwd: treeDirectory, unsetEnv: ['MAKEFLAGS', 'MAKELEVEL', 'MFLAGS'] };
}
