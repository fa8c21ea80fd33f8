// SPDX-License-Identifier: LGPL-2.1-only
import os from 'node:os';

export type GuestArch = 'x86_64' | 'aarch64';
export const GUEST_ARCHES: readonly GuestArch[] = ['x86_64', 'aarch64'];

/** Facts about the machine krunfw-mac runs on. */
export interface Host {
  /** Node's `process.platform`: 'linux', 'darwin', ... */
  os: NodeJS.Platform;
  /** The CPU in kernel terms ('x86_64', 'aarch64'), or Node's name for anything else. */
  cpu: string;
  /** Logical CPUs available to this process. */
  cpus: number;
  /** Total memory in MiB. */
  memoryMiB: number;
}

const NODE_ARCH_TO_CPU: Record<string, string> = { x64: 'x86_64', arm64: 'aarch64' };

export function detectHost(): Host {
  return {
    os: process.platform,
    cpu: NODE_ARCH_TO_CPU[process.arch] ?? process.arch,
    cpus: os.availableParallelism(),
    memoryMiB: Math.floor(os.totalmem() / (1024 * 1024)),
  };
}

export function isGuestArch(value: string): value is GuestArch {
  return (GUEST_ARCHES as readonly string[]).includes(value);
}
