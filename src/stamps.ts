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

/** Reads the outputs' state where they live: on this host or in a builder VM. */
export interface OutputProbe {
  kind(path: string): Promise<'file' | 'directory' | undefined>;
  sha256(path: string): Promise<string | undefined>;
}

const HOST_PROBE: OutputProbe = {
  async kind(path) {
    try {
      return (await stat(path)).isDirectory() ? 'directory' : 'file';
    } catch {
      return undefined;
    }
  },
  async sha256(path) {
    try {
      return await sha256File(path);
    } catch {
      return undefined;
    }
  },
};

export interface StampedStage<Data> {
  stampFile: string;
  /** Anything that, when changed, must rerun the stage (hashes, options). */
  inputs: unknown;
  /** Files (hashed) and directories (checked to exist) the stage produces. */
  outputFiles: string[];
  outputDirectories?: string[];
  run: () => Promise<Data>;
  /** The side that checks and hashes the outputs: this host by default, or a builder VM. */
  probe?: OutputProbe;
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

async function outputsUnchanged(record: StampRecord<unknown>, probe: OutputProbe): Promise<boolean> {
  for (const [path, expected] of Object.entries(record.outputs)) {
    if (expected === 'directory' ? (await probe.kind(path)) !== 'directory' : expected !== (await probe.sha256(path))) return false;
  }
  return true;
}

/** Runs a stage unless its stamp shows the same inputs and untouched outputs. */
export async function runStamped<Data>(stage: StampedStage<Data>): Promise<StageOutcome<Data>> {
  const inputs = hashInputs(stage.inputs);
  const record = await readRecord<Data>(stage.stampFile);
  const probe = stage.probe ?? HOST_PROBE;
  if (record && record.inputs === inputs && (await outputsUnchanged(record, probe))) {
    return { skipped: true, data: record.data, outputs: record.outputs };
  }
  await rm(stage.stampFile, { force: true });
  const data = await stage.run();
  const outputs: Record<string, string> = {};
  for (const directory of stage.outputDirectories ?? []) outputs[directory] = 'directory';
  for (const file of stage.outputFiles) {
    const digest = await probe.sha256(file);
    if (digest === undefined) throw new Error(`stage finished without writing ${file}`);
    outputs[file] = digest;
  }
  await writeFileAtomic(stage.stampFile, JSON.stringify({ inputs, outputs, data } satisfies StampRecord<Data>, null, 2) + '\n');
  return { skipped: false, data, outputs };
}
