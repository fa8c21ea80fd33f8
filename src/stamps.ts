// SPDX-License-Identifier: LGPL-2.1-only
import { readFile, rm, stat } from 'node:fs/promises';
import { sha256, sha256File } from './hash.js';
import { writeFileAtomic } from './files.js';

/**
 * A stage's stamp records a hash of its inputs, the hashes of the files it
 * produced and any facts later stages need. A stage whose stamp matches and
 * whose outputs are unchanged is skipped. The stamp is removed before the
 * stage starts and written after it succeeds, so an interrupted or failed
 * stage is never mistaken for a finished one.
 */
export interface StampRecord<Data> {
  inputs: string;
  /** Output path to its SHA-256, or 'directory' for a directory that must exist. */
  outputs: Record<string, string>;
  data: Data;
}

export interface StampedStage<Data> {
  stampFile: string;
  /** Anything that, when changed, must rerun the stage (hashes, options). */
  inputs: unknown;
  /** Files (hashed) and directories (checked to exist) the stage produces. */
  outputFiles: string[];
  outputDirectories?: string[];
  run: () => Promise<Data>;
}

export interface StageOutcome<Data> {
  skipped: boolean;
  data: Data;
  outputs: Record<string, string>;
}

export function hashInputs(inputs: unknown): string {
  return sha256(JSON.stringify(inputs));
}

async function readRecord<Data>(path: string): Promise<StampRecord<Data> | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as StampRecord<Data>;
  } catch {
    return undefined;
  }
}

async function outputsUnchanged(record: StampRecord<unknown>): Promise<boolean> {
  for (const [path, expected] of Object.entries(record.outputs)) {
    try {
      const info = await stat(path);
      if (expected === 'directory' ? !info.isDirectory() : expected !== (await sha256File(path))) return false;
    } catch {
      return false;
    }
  }
  return true;
}

/** Runs a stage unless its stamp shows the same inputs and untouched outputs. */
export async function runStamped<Data>(stage: StampedStage<Data>): Promise<StageOutcome<Data>> {
  const inputs = hashInputs(stage.inputs);
  const record = await readRecord<Data>(stage.stampFile);
  if (record && record.inputs === inputs && (await outputsUnchanged(record))) {
    return { skipped: true, data: record.data, outputs: record.outputs };
  }
  await rm(stage.stampFile, { force: true });
  const data = await stage.run();
  const outputs: Record<string, string> = {};
  for (const directory of stage.outputDirectories ?? []) outputs[directory] = 'directory';
  for (const file of stage.outputFiles) outputs[file] = await sha256File(file);
  await writeFileAtomic(stage.stampFile, JSON.stringify({ inputs, outputs, data } satisfies StampRecord<Data>, null, 2) + '\n');
  return { skipped: false, data, outputs };
}

/** Forgets a stage's result, so that it and every stage fed by it run again. */
export async function invalidateStamp(stampFile: string): Promise<void> {
  await rm(stampFile, { force: true });
}
