// SPDX-License-Identifier: LGPL-2.1-only
import { writeFileAtomic } from './files.js';

/**
 * The inputs of a library, written beside kernel.c as provenance.json. It
 * has no timestamp: the same inputs give the same file. The kernel's own
 * build timestamp is fixed too, so the bundle hash is the build identifier.
 */
export interface Provenance {
  tool: { name: string; version: string };
  variant: string;
  arch: string;
  abi: number;
  kernel: {
    version: string;
    /** The tarball's URL or local path, and its SHA-256. */
    tarball: { name: string; sha256: string };
    /** vmlinux or Image, as built. */
    artifact: { name: string; sha256: string };
  };
  patches: Array<{ name: string; sha256: string }>;
  /** The expanded .config's SHA-256 and the inputs it came from. */
  config: { sha256: string; maxCpus: number; fragments: Array<{ name: string; sha256: string }> };
  bundle: { file: string; sha256: string; sourceSha256: string; loadAddress: string; entryAddress: string };
  library: { file: string; soname: string; sha256: string };
  /** Builds from a libkrunfw-style tree: where it was, and its git commit and whether it had uncommitted changes. */
  source?: { directory: string; gitCommit?: string; gitDirty?: boolean };
  /** SEV variant only: the firmware and initrd bundled beside the kernel, by input file and generated source. */
  sev?: {
    qboot: { name: string; sha256: string; source: string; sourceSha256: string };
    initrd: { name: string; sha256: string; source: string; sourceSha256: string };
  };
}

export async function writeProvenance(path: string, provenance: Provenance): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(provenance, null, 2) + '\n');
}
