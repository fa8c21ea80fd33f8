// SPDX-License-Identifier: LGPL-2.1-only
import { readFile } from 'node:fs/promises';
import { KrunfwError } from '../errors.js';
import { sha256 } from '../hash.js';

/**
 * A builder: the OCI image a krunvm VM boots to build the kernel, and the
 * commands that install the kernel toolchain in it. Stored as JSON in a
 * `builders/` directory.
 */
export interface BuilderDefinition {
  /** Name used with --builder and BUILDER. */
  name: string;
  /** One line for `krunfw-mac builders`. */
  description: string;
  /** Fully qualified image reference with an explicit tag or digest, e.g. docker.io/library/debian:bookworm-20251117. */
  image: string;
  /** Variables set for every command run in the VM. */
  env: Record<string, string>;
  /** Commands run once after the VM is created, each an argv with an absolute program path. */
  provision: string[][];
}

/** A definition together with where it was found. */
export interface LoadedBuilder {
  definition: BuilderDefinition;
  /** 'built-in', 'user', 'work directory' or 'file'. */
  origin: string;
  path: string;
  /** Hash of the definition's content, recorded with a provisioned VM. */
  sha256: string;
}

const NAME_PATTERN = /^[a-z0-9][a-z0-9._-]*$/;
// registry host (with a dot or a port), repository path, then a tag and/or digest.
const IMAGE_PATTERN = /^[a-z0-9.-]+(\.[a-z0-9-]+|:\d+)\/[a-z0-9._\/-]+(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$/;
const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]*$/;
const FIELDS = new Set(['name', 'description', 'image', 'env', 'provision']);

function invalid(path: string, field: string, expected: string): KrunfwError {
  return new KrunfwError(`Invalid builder definition ${path}: field "${field}" must be ${expected}`, {
    hint: 'Fix the file or remove it; see builders/debian.json for a complete example.',
  });
}

/** Validates parsed JSON as a builder definition, naming the file, the field and what was expected. */
export function validateBuilder(value: unknown, path: string): BuilderDefinition {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalid(path, '(top level)', 'a JSON object');
  }
  const record = value as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (!FIELDS.has(key)) throw invalid(path, key, `absent (known fields: ${[...FIELDS].join(', ')})`);
  }
  const { name, description, image, env, provision } = record;
  if (typeof name !== 'string' || !NAME_PATTERN.test(name)) {
    throw invalid(path, 'name', 'a lowercase name of letters, digits, ".", "_" or "-"');
  }
  if (description !== undefined && typeof description !== 'string') throw invalid(path, 'description', 'a string');
  if (typeof image !== 'string' || !IMAGE_PATTERN.test(image) || !/[:@]/.test(image.slice(image.lastIndexOf('/')))) {
    throw invalid(path, 'image', 'a fully qualified image reference with a registry and a tag or digest, such as docker.io/library/debian:bookworm-20251117');
  }
  if (env !== undefined && (typeof env !== 'object' || env === null || Array.isArray(env) || Object.values(env).some((item) => typeof item !== 'string'))) {
    throw invalid(path, 'env', 'an object of string values');
  }
  // The variables reach the guest as env(1) arguments, where a name with "=" or a leading "-" would change their meaning.
  for (const key of Object.keys((env as Record<string, string> | undefined) ?? {})) {
    if (!ENV_NAME_PATTERN.test(key)) {
      throw invalid(path, 'env', `an object keyed by variable names (letters, digits and "_", not starting with a digit), not ${JSON.stringify(key)}`);
    }
  }
  if (!Array.isArray(provision)) throw invalid(path, 'provision', 'an array of commands, each an array of strings');
  provision.forEach((command, index) => {
    if (!Array.isArray(command) || command.length === 0 || command.some((argument) => typeof argument !== 'string')) {
      throw invalid(path, `provision[${index}]`, 'a non-empty array of strings (program and arguments)');
    }
    if (!(command[0] as string).startsWith('/')) {
      throw invalid(path, `provision[${index}][0]`, 'an absolute program path (old krunvm versions ignore the image\'s PATH)');
    }
  });
  return {
    name,
    description: (description as string | undefined) ?? '',
    image,
    env: (env as Record<string, string> | undefined) ?? {},
    provision: provision as string[][],
  };
}

/** Reads and validates one definition file. */
export async function loadBuilderFile(path: string, origin: string): Promise<LoadedBuilder> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new KrunfwError(`Builder definition not found: ${path}`, { cause: error });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new KrunfwError(`Invalid builder definition ${path}: not valid JSON (${(error as Error).message})`, { cause: error });
  }
  return { definition: validateBuilder(parsed, path), origin, path, sha256: sha256(text) };
}
