// SPDX-License-Identifier: LGPL-2.1-only
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KrunfwError } from '../errors.js';
import type { Command } from '../exec/executor.js';
import type { GuestArch } from '../host.js';

/** A symbol's value as Kconfig writes it: 'y', 'm', 'n', a number or a quoted string. */
export type ConfigValue = string;

/** A fragment's value and its source file and line, for audit messages. */
export interface ConfigSetting {
  value: ConfigValue;
  source: string;
  line: number;
}

/** Symbol (without the CONFIG_ prefix) to its last setting. */
export type ConfigSettings = Map<string, ConfigSetting>;

const ASSIGNMENT = /^CONFIG_([A-Za-z0-9_]+)=(.*)$/;
const NOT_SET = /^# CONFIG_([A-Za-z0-9_]+) is not set$/;
const VALUE = /^(y|m|n|-?\d+|0x[0-9a-fA-F]+|"(?:[^"\\]|\\.)*")$/;

/**
 * Parses a config fragment or a full `.config`. A later assignment of the
 * same symbol replaces an earlier one, as Kconfig does.
 */
export function parseConfig(text: string, source: string, into: ConfigSettings = new Map()): ConfigSettings {
  const lines = text.split('\n');
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index]!.trim();
    if (line === '') continue;
    const notSet = NOT_SET.exec(line);
    if (notSet) {
      into.set(notSet[1]!, { value: 'n', source, line: index + 1 });
      continue;
    }
    if (line.startsWith('#')) continue;
    const assignment = ASSIGNMENT.exec(line);
    if (!assignment || !VALUE.test(assignment[2]!)) {
      throw new KrunfwError(`Invalid line in config fragment ${source}:${index + 1}: ${line}`, {
        hint: 'Each line must be CONFIG_NAME=value (y, m, n, a number or a quoted string), "# CONFIG_NAME is not set", a comment or empty.',
      });
    }
    into.set(assignment[1]!, { value: assignment[2]!, source, line: index + 1 });
  }
  return into;
}

/** Reads fragments in order; later files override earlier ones. */
export async function readFragments(paths: readonly string[]): Promise<ConfigSettings> {
  const settings: ConfigSettings = new Map();
  for (const path of paths) {
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      throw new KrunfwError(`Config fragment not found: ${path}`, { cause: error });
    }
    parseConfig(text, path, settings);
  }
  return settings;
}

/** Returns the shipped fragments for an arch, in the order they apply. */
export function fragmentPaths(configDirectory: string, arch: GuestArch): string[] {
  return [join(configDirectory, 'common.config'), join(configDirectory, `${arch}.config`)];
}

/** Renders settings as a fragment for KCONFIG_ALLCONFIG, in a stable order. */
export function renderFragment(settings: ConfigSettings): string {
  const lines = [...settings.keys()].sort().map((symbol) => {
    const { value } = settings.get(symbol)!;
    return value === 'n' ? `# CONFIG_${symbol} is not set` : `CONFIG_${symbol}=${value}`;
  });
  return lines.join('\n') + '\n';
}

/** Kernel `make` variables that select the target arch and compiler. */
export interface KernelMakeTarget {
  /** The kernel's ARCH value: 'x86_64' or 'arm64'. */
  makeArch: string;
  /** CROSS_COMPILE prefix, or undefined for a native build. */
  crossCompile?: string;
}

export function makeTargetVariables(target: KernelMakeTarget): string[] {
  return [`ARCH=${target.makeArch}`, ...(target.crossCompile ? [`CROSS_COMPILE=${target.crossCompile}`] : [])];
}

/**
 * Expands a merged fragment into a full `.config` with the kernel's own
 * Kconfig: every symbol the fragment names is forced, every other one is set
 * as low as its dependencies allow. That keeps the guest kernel small.
 */
export function expandConfigCommand(treeDirectory: string, mergedFragment: string, target: KernelMakeTarget): Command {
  return {
    argv: ['make', ...makeTargetVariables(target), `KCONFIG_ALLCONFIG=${mergedFragment}`, 'allnoconfig'],
    cwd: treeDirectory,
    unsetEnv: ['MAKEFLAGS', 'MAKELEVEL', 'MFLAGS'],
  };
}

/** Completes a full .config for this kernel: new symbols get their defaults, unmet ones are dropped. */
export function oldConfigCommand(treeDirectory: string, target: KernelMakeTarget): Command {
  return {
    argv: ['make', ...makeTargetVariables(target), 'olddefconfig'],
    cwd: treeDirectory,
    unsetEnv: ['MAKEFLAGS', 'MAKELEVEL', 'MFLAGS'],
  };
}

/** A fragment setting that the expanded `.config` does not have. */
export interface DroppedOption {
  symbol: string;
  expected: ConfigValue;
  /** The value in `.config`, 'n' when absent. */
  actual: ConfigValue;
  source: string;
  line: number;
}

/**
 * Compares the requested settings with the final `.config`. Kconfig drops
 * options whose dependencies are unmet and ignores unknown symbols without
 * an error, so this is the only place such a loss shows.
 */
export function auditConfig(requested: ConfigSettings, finalConfig: ConfigSettings): DroppedOption[] {
  const dropped: DroppedOption[] = [];
  for (const [symbol, setting] of requested) {
    const actual = finalConfig.get(symbol)?.value ?? 'n';
    if (actual !== setting.value) {
      dropped.push({ symbol, expected: setting.value, actual, source: setting.source, line: setting.line });
    }
  }
  return dropped;
}

export function formatDropped(dropped: readonly DroppedOption[]): string {
  return dropped
    .map((option) => `  CONFIG_${option.symbol}: requested ${option.expected}, got ${option.actual} (${option.line > 0 ? `${option.source}:${option.line}` : option.source})`)
    .join('\n');
}
