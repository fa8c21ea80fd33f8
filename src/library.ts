// SPDX-License-Identifier: LGPL-2.1-only

export type TargetOs = 'linux' | 'darwin';
export type Variant = 'generic' | 'sev';

/** The library's version triple: ABI, then the library's own minor and patch. */
export interface LibraryVersion {
  abi: number;
  minor: number;
  patch: number;
}

/** File names of one built library, following what libkrun dlopens. */
export interface LibraryNames {
  /** The real file. */
  fileName: string;
  /** The name libkrun opens: the ELF soname, or the Mach-O install name's leaf. */
  soname: string;
  /** Symlinks to create beside the real file, as [link name, target]. */
  links: Array<[string, string]>;
}

/** The library's name without ABI or suffix: `libkrunfw`, or `libkrunfw-sev` for the SEV variant. */
export function libraryBaseName(variant: Variant): string {
  return variant === 'sev' ? 'libkrunfw-sev' : 'libkrunfw';
}

/**
 * Linux: `libkrunfw.so.5.<minor>.<patch>` with the soname `libkrunfw.so.5`
 * and symlinks `.so.5` and `.so`. macOS: `libkrunfw.5.dylib` with the symlink
 * `libkrunfw.dylib`. The SEV variant puts `-sev` after `libkrunfw`.
 */
export function libraryNames(os: TargetOs, variant: Variant, version: LibraryVersion): LibraryNames {
  const base = libraryBaseName(variant);
  if (os === 'darwin') {
    const fileName = `${base}.${version.abi}.dylib`;
    return { fileName, soname: fileName, links: [[`${base}.dylib`, fileName]] };
  }
  const soname = `${base}.so.${version.abi}`;
  const fileName = `${soname}.${version.minor}.${version.patch}`;
  return { fileName, soname, links: [[soname, fileName], [`${base}.so`, soname]] };
}

export function formatLibraryVersion(version: LibraryVersion): string {
  return `${version.abi}.${version.minor}.${version.patch}`;
}
