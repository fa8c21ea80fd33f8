#!/usr/bin/env node
// SPDX-License-Identifier: LGPL-2.1-only
/**
 * A test double for krunvm 0.2.x on Linux.
 *
 * It accepts krunvm's command line and keeps VM records in
 * $KRUNVM_DOUBLE_STATE. `start` runs the guest command chrooted into an
 * overlayfs whose lower layer is the cached Debian rootfs
 * ($KRUNVM_DOUBLE_ROOTFS) and whose upper layer belongs to the VM. The guest
 * runs in private mount, PID, UTS and IPC namespaces and shares the host's
 * network. README.md in this directory lists what it implements and what it
 * does not.
 *
 * Exit codes: 0 on success, 255 for krunvm's own failures (message on stdout),
 * 2 for command-line errors (clap-style message on stderr), the guest's
 * status for `start`, and 70 when the double itself is misconfigured or its
 * setup fails.
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  appendFileSync,
  closeSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import which from 'which';

const DEFAULT_VERSION = '0.2.6';
/** Volume mapping works from this krunvm version on (with libkrun 1.8 or later). */
const FIRST_VERSION_WITH_VOLUMES = '0.2.6';

const EXIT_KRUNVM_FAILURE = 255;
const EXIT_USAGE = 2;
const EXIT_DOUBLE_FAILURE = 70;
/** libkrun's status for a guest init failure, such as a missing working directory. */
const EXIT_INIT_FAILED = 125;

/** The PATH that Debian's OCI image sets in its config. */
const GUEST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Debian's OCI image runs `bash` when no command is given. */
const DEFAULT_GUEST_COMMAND = 'bash';

/** The hidden first argument that makes this program the init of a guest's namespaces. */
const GUEST_INIT_ARGUMENT = '__krunvm-double-guest-init';
/** The file descriptor on which the guest init reports that its mounts are in place. */
const READY_FD = 3;
const READY_MESSAGE = 'ready\n';

const SCRIPT_PATH = fileURLToPath(import.meta.url);

// ---------------------------------------------------------------------------
// Failures

/** A failure that krunvm itself reports: the message goes to stdout and the exit code is 255. */
class KrunvmFailure extends Error {}

/** A command-line error in clap's format: the message goes to stderr and the exit code is 2. */
class UsageError extends Error {
  constructor(
    message: string,
    readonly usage?: string,
    readonly tip?: string,
  ) {
    super(message);
  }
}

/** A misconfigured double or a failed setup step, which real krunvm would never report. */
class DoubleFailure extends Error {}

function printStdout(text: string): void {
  writeSync(1, `${text}\n`);
}

function printStderr(text: string): void {
  writeSync(2, `${text}\n`);
}

// ---------------------------------------------------------------------------
// Command-line parsing with clap 4's rules

interface OptionSpec {
  id: string;
  long: string;
  short?: string;
  /** The value's placeholder in messages, such as `NAME`. A flag has none. */
  valueName?: string;
  multiple?: boolean;
}

interface PositionalSpec {
  id: string;
  required: boolean;
  multiple?: boolean;
}

interface CommandSpec {
  name: string;
  usage: string;
  about: string;
  options: OptionSpec[];
  positionals: PositionalSpec[];
}

interface ParsedArguments {
  values: Map<string, string[]>;
  flags: Set<string>;
  positionals: Map<string, string[]>;
  help: boolean;
}

const COMMANDS: Record<string, CommandSpec> = {
  create: {
    name: 'create',
    usage: 'krunvm create [OPTIONS] <IMAGE>',
    about: 'Create a new microVM',
    options: [
      { id: 'name', long: 'name', valueName: 'NAME' },
      { id: 'cpus', long: 'cpus', valueName: 'CPUS' },
      { id: 'mem', long: 'mem', valueName: 'MEM' },
      { id: 'dns', long: 'dns', valueName: 'DNS' },
      { id: 'workdir', long: 'workdir', short: 'w', valueName: 'WORKDIR' },
      { id: 'volumes', long: 'volume', short: 'v', valueName: 'VOLUMES', multiple: true },
      { id: 'ports', long: 'port', valueName: 'PORTS', multiple: true },
    ],
    positionals: [{ id: 'image', required: true }],
  },
  start: {
    name: 'start',
    usage: 'krunvm start [OPTIONS] <NAME> [COMMAND] [ARGS]...',
    about: 'Start an existing microVM',
    options: [
      { id: 'cpus', long: 'cpus', valueName: 'CPUS' },
      { id: 'mem', long: 'mem', valueName: 'MEM' },
      { id: 'envs', long: 'env', valueName: 'ENVS', multiple: true },
    ],
    positionals: [
      { id: 'name', required: true },
      { id: 'command', required: false },
      { id: 'args', required: false, multiple: true },
    ],
  },
  delete: {
    name: 'delete',
    usage: 'krunvm delete <NAME>',
    about: 'Delete an existing microVM',
    options: [],
    positionals: [{ id: 'name', required: true }],
  },
  list: {
    name: 'list',
    usage: 'krunvm list [OPTIONS]',
    about: 'List microVMs',
    options: [{ id: 'debug', long: 'debug', short: 'd' }],
    positionals: [],
  },
  changevm: {
    name: 'changevm',
    usage: 'krunvm changevm [OPTIONS] <NAME>',
    about: 'Change the configuration of a microVM',
    options: [
      { id: 'newName', long: 'new-name', valueName: 'NEW_NAME' },
      { id: 'cpus', long: 'cpus', valueName: 'CPUS' },
      { id: 'mem', long: 'mem', valueName: 'MEM' },
      { id: 'workdir', long: 'workdir', short: 'w', valueName: 'WORKDIR' },
      { id: 'removeVolumes', long: 'remove-volumes' },
      { id: 'volumes', long: 'volume', short: 'v', valueName: 'VOLUMES', multiple: true },
      { id: 'removePorts', long: 'remove-ports' },
      { id: 'ports', long: 'port', valueName: 'PORTS', multiple: true },
    ],
    positionals: [{ id: 'name', required: true }],
  },
  config: {
    name: 'config',
    usage: 'krunvm config [OPTIONS]',
    about: 'Configure global values',
    options: [
      { id: 'cpus', long: 'cpus', valueName: 'CPUS' },
      { id: 'mem', long: 'mem', valueName: 'MEM' },
      { id: 'dns', long: 'dns', valueName: 'DNS' },
    ],
    positionals: [],
  },
};

function describeOption(option: OptionSpec): string {
  return option.valueName === undefined ? `--${option.long}` : `--${option.long} <${option.valueName}>`;
}

function takesPositionals(spec: CommandSpec): boolean {
  return spec.positionals.length > 0;
}

/**
 * Parses a subcommand's arguments the way clap 4 does: options may appear
 * between positionals, a value may follow as the next argument or after `=`,
 * and every argument that starts with `-` is an option unless it comes
 * after `--`.
 */
function parseArguments(spec: CommandSpec, argv: string[]): ParsedArguments {
  const parsed: ParsedArguments = { values: new Map(), flags: new Set(), positionals: new Map(), help: false };
  const positionalValues: string[] = [];
  let onlyPositionals = false;

  for (let index = 0; index < argv.length; index++) {
    const token = argv[index]!;
    if (onlyPositionals || token === '-' || !token.startsWith('-')) {
      positionalValues.push(token);
      continue;
    }
    if (token === '--') {
      onlyPositionals = true;
      continue;
    }
    if (token === '--help' || token === '-h') {
      parsed.help = true;
      continue;
    }

    let option: OptionSpec | undefined;
    let inlineValue: string | undefined;
    if (token.startsWith('--')) {
      const equals = token.indexOf('=');
      const long = equals === -1 ? token.slice(2) : token.slice(2, equals);
      inlineValue = equals === -1 ? undefined : token.slice(equals + 1);
      option = spec.options.find((candidate) => candidate.long === long);
    } else {
      option = spec.options.find((candidate) => candidate.short === token[1]);
      const attached = token.slice(2);
      inlineValue = attached === '' ? undefined : attached.replace(/^=/, '');
    }
    if (option === undefined) {
      const tip = takesPositionals(spec) ? `to pass '${token}' as a value, use '-- ${token}'` : undefined;
      throw new UsageError(`unexpected argument '${token}' found`, spec.usage, tip);
    }

    if (option.valueName === undefined) {
      if (inlineValue !== undefined) {
        throw new UsageError(
          `unexpected value '${inlineValue}' for '--${option.long}' found; no more were expected`,
          spec.usage,
        );
      }
      parsed.flags.add(option.id);
      continue;
    }

    let value = inlineValue;
    if (value === undefined) {
      const next = argv[index + 1];
      if (next !== undefined && (next === '-' || !next.startsWith('-'))) {
        value = next;
        index++;
      }
    }
    if (value === undefined) {
      throw new UsageError(`a value is required for '${describeOption(option)}' but none was supplied`, spec.usage);
    }
    const previous = parsed.values.get(option.id) ?? [];
    if (previous.length > 0 && option.multiple !== true) {
      throw new UsageError(`the argument '${describeOption(option)}' cannot be used multiple times`, spec.usage);
    }
    parsed.values.set(option.id, [...previous, value]);
  }

  if (parsed.help) {
    return parsed;
  }
  assignPositionals(spec, positionalValues, parsed);
  return parsed;
}

function assignPositionals(spec: CommandSpec, values: string[], parsed: ParsedArguments): void {
  let next = 0;
  for (const positional of spec.positionals) {
    if (positional.multiple === true) {
      parsed.positionals.set(positional.id, values.slice(next));
      next = values.length;
    } else if (next < values.length) {
      parsed.positionals.set(positional.id, [values[next]!]);
      next++;
    }
  }
  if (next < values.length) {
    throw new UsageError(`unexpected argument '${values[next]}' found`, spec.usage);
  }
  const missing = spec.positionals.filter((positional) => positional.required && !parsed.positionals.has(positional.id));
  if (missing.length > 0) {
    const names = missing.map((positional) => `  <${positional.id.toUpperCase()}>`).join('\n');
    throw new UsageError(`the following required arguments were not provided:\n${names}`, spec.usage);
  }
}

function singleValue(parsed: ParsedArguments, id: string): string | undefined {
  return parsed.values.get(id)?.[0];
}

function positional(parsed: ParsedArguments, id: string): string | undefined {
  return parsed.positionals.get(id)?.[0];
}

function invalidValue(option: string, value: string, reason: string): UsageError {
  return new UsageError(`invalid value '${value}' for '${option}': ${reason}`);
}

/** Parses an unsigned 32-bit integer with the messages of Rust's `u32::from_str`. */
function parseU32(value: string | undefined, option: string): number | undefined {
  if (value === undefined) {
    return undefined;
  }
  if (value === '') {
    throw invalidValue(option, value, 'cannot parse integer from empty string');
  }
  if (!/^\+?[0-9]+$/.test(value)) {
    throw invalidValue(option, value, 'invalid digit found in string');
  }
  const number = Number(value);
  if (number > 0xffffffff) {
    throw invalidValue(option, value, 'number too large to fit in target type');
  }
  return number;
}

// ---------------------------------------------------------------------------
// Volume and port values (krunvm's PathPair and PortPair rules)

/**
 * Counts path components the way Rust's `Path::components` does: repeated
 * separators and `.` after the first component are dropped, and the root
 * counts as one component.
 */
function countPathComponents(path: string): number {
  const parts = path.split('/').filter((part, index) => part !== '' && (part !== '.' || index === 0));
  return parts.length + (path.startsWith('/') ? 1 : 0);
}

/** Parses `HOST:GUEST`. krunvm rejects a bad value while it parses its command line, like clap. */
function parseVolume(value: string): [string, string] {
  const fields = value.split(':');
  const reject = (reason: string): UsageError => invalidValue('--volume <VOLUMES>', value, reason);
  if (fields.length !== 2) {
    throw reject("Too many ':' separators");
  }
  const [hostPath, guestPath] = fields as [string, string];
  if (!hostPath.startsWith('/')) {
    throw reject('Invalid volume, host_path is not an absolute path');
  }
  if (!existsSync(hostPath)) {
    throw reject('Invalid volume, host_path does not exists');
  }
  if (!guestPath.startsWith('/')) {
    throw reject('Invalid volume, guest_path is not an absolute path');
  }
  // NOTE: real krunvm accepts `/..`, which has two components. The double
  // rejects it because it would mount the volume outside the guest's root.
  if (countPathComponents(guestPath) !== 2 || guestPath.split('/').includes('..')) {
    throw reject('Invalid volume, only single direct root children are supported as guest_path');
  }
  return [hostPath, guestPath];
}

function parsePort(value: string): [string, string] {
  const fields = value.split(':');
  const reject = (reason: string): UsageError => invalidValue('--port <PORTS>', value, reason);
  if (fields.length !== 2) {
    throw reject("Too many ':' separators");
  }
  const [hostPort, guestPort] = fields.map((field) => (/^\+?[0-9]+$/.test(field) ? Number(field) : NaN)) as [
    number,
    number,
  ];
  if (!(hostPort <= 0xffff)) {
    throw reject('Invalid host port');
  }
  if (!(guestPort <= 0xffff)) {
    throw reject('Invalid guest port');
  }
  return [String(hostPort), String(guestPort)];
}

/** Builds krunvm's map from host to guest, in which a repeated key keeps the last value. */
function parsePairs(values: string[] | undefined, parse: (value: string) => [string, string]): Record<string, string> {
  const map: Record<string, string> = {};
  for (const value of values ?? []) {
    const [key, mapped] = parse(value);
    map[key] = mapped;
  }
  return map;
}

// ---------------------------------------------------------------------------
// Versions

function parseVersion(version: string): number[] {
  const match = /^(\d+)\.(\d+)\.(\d+)$/.exec(version);
  if (match === null) {
    throw new DoubleFailure(`KRUNVM_DOUBLE_VERSION is invalid: "${version}". Set it to MAJOR.MINOR.PATCH, such as 0.2.6.`);
  }
  return match.slice(1).map(Number);
}

function isVersionBelow(version: string, minimum: string): boolean {
  const [left, right] = [parseVersion(version), parseVersion(minimum)];
  for (let index = 0; index < 3; index++) {
    if (left[index] !== right[index]) {
      return left[index]! < right[index]!;
    }
  }
  return false;
}

function reportedVersion(): string {
  const version = process.env.KRUNVM_DOUBLE_VERSION ?? DEFAULT_VERSION;
  parseVersion(version);
  return version;
}

// ---------------------------------------------------------------------------
// State: global configuration, VM records and the call log

interface GlobalConfig {
  cpus: number;
  mem: number;
  dns: string;
}

/** One VM, with the fields that `krunvm list` prints. */
interface VmRecord {
  name: string;
  image: string;
  /** The buildah container name that real krunvm would have created. */
  container: string;
  cpus: number;
  mem: number;
  dns: string;
  /** The guest's working directory. An empty string means `/`. */
  workdir: string;
  /** Host path to guest path, as krunvm stores them. */
  volumes: Record<string, string>;
  /** Host port to guest port, recorded but never forwarded. */
  ports: Record<string, string>;
  /** The Debian rootfs used as the overlay's lower layer, or null for an image that cannot run here. */
  rootfs: string | null;
}

const DEFAULT_GLOBAL_CONFIG: GlobalConfig = { cpus: 2, mem: 1024, dns: '1.1.1.1' };

class State {
  constructor(readonly directory: string) {}

  static fromEnvironment(): State {
    const directory = process.env.KRUNVM_DOUBLE_STATE;
    if (directory === undefined || directory === '') {
      throw new DoubleFailure(
        'KRUNVM_DOUBLE_STATE is not set. Point it at a directory for the VM records, or use makeKrunvmBin() from test/support/krunvm-double.ts.',
      );
    }
    mkdirSync(join(directory, 'vms'), { recursive: true });
    return new State(directory);
  }

  get storageVolume(): string {
    return join(this.directory, 'storage');
  }

  appendCall(argv: string[]): void {
    appendFileSync(join(this.directory, 'calls.jsonl'), `${JSON.stringify(argv)}\n`);
  }

  readGlobalConfig(): GlobalConfig {
    const path = join(this.directory, 'config.json');
    if (!existsSync(path)) {
      return { ...DEFAULT_GLOBAL_CONFIG };
    }
    return { ...DEFAULT_GLOBAL_CONFIG, ...(JSON.parse(readFileSync(path, 'utf8')) as Partial<GlobalConfig>) };
  }

  writeGlobalConfig(config: GlobalConfig): void {
    writeJsonAtomically(join(this.directory, 'config.json'), config);
  }

  /** Returns the directory of a VM. The name is encoded so that any name becomes one safe path component. */
  vmDirectory(name: string): string {
    return join(this.directory, 'vms', encodeURIComponent(name).replace(/^\./, '%2E'));
  }

  readVm(name: string): VmRecord | undefined {
    const path = join(this.vmDirectory(name), 'vm.json');
    return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as VmRecord) : undefined;
  }

  listVms(): VmRecord[] {
    const records: VmRecord[] = [];
    for (const entry of readdirSync(join(this.directory, 'vms'))) {
      const path = join(this.directory, 'vms', entry, 'vm.json');
      if (existsSync(path)) {
        records.push(JSON.parse(readFileSync(path, 'utf8')) as VmRecord);
      }
    }
    return records.sort((left, right) => left.name.localeCompare(right.name));
  }

  writeVm(record: VmRecord): void {
    writeJsonAtomically(join(this.vmDirectory(record.name), 'vm.json'), record);
  }
}

function writeJsonAtomically(path: string, value: unknown): void {
  const temporary = `${path}.${process.pid}.tmp`;
  writeFileSync(temporary, `${JSON.stringify(value, null, 2)}\n`);
  renameSync(temporary, path);
}

/** Formats a map like Rust's `{:?}` of a `HashMap<String, String>`. */
function formatRustMap(map: Record<string, string>): string {
  const entries = Object.entries(map).map(([key, value]) => `${JSON.stringify(key)}: ${JSON.stringify(value)}`);
  return `{${entries.join(', ')}}`;
}

function printVm(record: VmRecord): void {
  printStdout(record.name);
  printStdout(` CPUs: ${record.cpus}`);
  printStdout(` RAM (MiB): ${record.mem}`);
  printStdout(` DNS server: ${record.dns}`);
  printStdout(` Buildah container: ${record.container}`);
  printStdout(` Workdir: ${record.workdir}`);
  printStdout(` Mapped volumes: ${formatRustMap(record.volumes)}`);
  printStdout(` Mapped ports: ${formatRustMap(record.ports)}`);
}

/**
 * Throws unless nothing is mounted at or below `directory` in this mount
 * namespace. Removing a directory that still has a bind mount below it would
 * delete the files of the mounted host directory.
 */
function assertNothingMountedUnder(directory: string): void {
  const prefix = directory.endsWith('/') ? directory : `${directory}/`;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mountPoint = line.split(' ')[4];
    if (mountPoint !== undefined && (mountPoint === directory || mountPoint.startsWith(prefix))) {
      throw new DoubleFailure(`Not removing ${directory} because ${mountPoint} is still mounted. Stop the guest first.`);
    }
  }
}

// ---------------------------------------------------------------------------
// Images

/** Returns the repository name of an image reference without registry, path, tag or digest. */
function imageName(reference: string): string {
  const withoutDigest = reference.split('@')[0]!;
  const lastSlash = withoutDigest.lastIndexOf('/');
  const colon = withoutDigest.lastIndexOf(':');
  const withoutTag = colon > lastSlash ? withoutDigest.slice(0, colon) : withoutDigest;
  return withoutTag.slice(lastSlash + 1);
}

function isDebianImage(reference: string): boolean {
  return imageName(reference) === 'debian';
}

/** Picks a container name the way buildah does: `NAME-working-container`, then `-1`, `-2`, ... */
function containerNameFor(image: string, state: State): string {
  const base = `${imageName(image)}-working-container`;
  const usedNames = new Set(state.listVms().map((record) => record.container));
  let candidate = base;
  for (let suffix = 1; usedNames.has(candidate); suffix++) {
    candidate = `${base}-${suffix}`;
  }
  return candidate;
}

// ---------------------------------------------------------------------------
// Storage volume prompt (krunvm on macOS, first run)

/** Reads one line from stdin byte by byte, or returns undefined at end of input or when stdin is closed. */
function readLineFromStdin(): string | undefined {
  const bytes: number[] = [];
  const buffer = Buffer.alloc(1);
  for (;;) {
    let count: number;
    try {
      count = readSync(0, buffer, 0, 1, null);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
        continue;
      }
      return undefined;
    }
    if (count === 0) {
      return bytes.length > 0 ? Buffer.from(bytes).toString('utf8') : undefined;
    }
    if (buffer[0] === 0x0a) {
      return Buffer.from(bytes).toString('utf8');
    }
    bytes.push(buffer[0]!);
  }
}

/**
 * Prompts for a storage volume like krunvm does on macOS before its first
 * use, and exits 255. At end of input it exits at once. After a usable mount
 * point it also exits, because krunvm then asks to be run again.
 */
function promptForStorageVolume(state: State): never {
  // The first sentence, the diskutil command and the prompt are krunvm's own
  // text, which a wrapper may match; the rest is a summary.
  printStdout('');
  printStdout('On macOS, krunvm requires a dedicated, case-sensitive volume.');
  printStdout('Create one from another terminal, for example with:');
  printStdout('');
  printStdout('diskutil apfs addVolume disk3 "Case-sensitive APFS" krunvm');
  printStdout('');
  printStdout('(krunvm test double: create $KRUNVM_DOUBLE_STATE/storage to skip this prompt.)');
  printStdout('');
  for (;;) {
    writeSync(1, 'Please enter the mountpoint for this volume [/Volumes/krunvm]: ');
    const answer = readLineFromStdin();
    if (answer === undefined) {
      process.exit(EXIT_KRUNVM_FAILURE);
    }
    const volume = answer === '' ? '/Volumes/krunvm' : answer;
    writeSync(1, 'Checking volume... ');
    if (existsSync(volume) && statSync(volume).isDirectory()) {
      printStdout('success.');
      printStdout('The volume has been configured. Please execute krunvm again');
      mkdirSync(state.storageVolume, { recursive: true });
      process.exit(EXIT_KRUNVM_FAILURE);
    }
    printStdout('error.');
    printStdout('There was an error running the test: No such file or directory (os error 2)');
  }
}

// ---------------------------------------------------------------------------
// Subcommands

function runCreate(state: State, parsed: ParsedArguments): number {
  const defaults = state.readGlobalConfig();
  const cpus = parseU32(singleValue(parsed, 'cpus'), '--cpus <CPUS>') ?? defaults.cpus;
  const mem = parseU32(singleValue(parsed, 'mem'), '--mem <MEM>') ?? defaults.mem;
  const dns = singleValue(parsed, 'dns') ?? defaults.dns;
  const workdir = singleValue(parsed, 'workdir') ?? '';
  const volumes = parsePairs(parsed.values.get('volumes'), parseVolume);
  const ports = parsePairs(parsed.values.get('ports'), parsePort);
  const image = positional(parsed, 'image')!;
  const requestedName = singleValue(parsed, 'name');

  if (requestedName !== undefined && state.readVm(requestedName) !== undefined) {
    throw new KrunvmFailure('A VM with this name already exists');
  }

  const injectedFailure = process.env.KRUNVM_DOUBLE_FAIL_CREATE;
  if (injectedFailure !== undefined && injectedFailure !== '') {
    throw new KrunvmFailure(injectedFailure);
  }

  const runnable = isDebianImage(image);
  if (!runnable && process.env.KRUNVM_DOUBLE_ACCEPT_ANY_IMAGE !== '1') {
    // krunvm prints buildah's stdout, which is empty on failure. buildah's error goes to stderr.
    printStderr(`Error: creating build container: ${image}: image not known`);
    throw new KrunvmFailure('buildah returned an error: ');
  }
  const rootfs = runnable ? requireRootfs() : null;

  const container = containerNameFor(image, state);
  const name = requestedName ?? container;
  if (name === '') {
    throw new KrunvmFailure('The VM name must not be empty');
  }
  const directory = state.vmDirectory(name);
  try {
    mkdirSync(directory);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new KrunvmFailure('A VM with this name already exists');
    }
    throw error;
  }
  for (const layer of ['upper', 'work', 'merged']) {
    mkdirSync(join(directory, layer));
  }
  state.writeVm({ name, image, container, cpus, mem, dns, workdir, volumes, ports, rootfs });
  printStdout(`microVM created with name: ${name}`);
  return 0;
}

function requireRootfs(): string {
  const rootfs = process.env.KRUNVM_DOUBLE_ROOTFS;
  if (rootfs === undefined || rootfs === '' || !existsSync(join(rootfs, 'etc', 'debian_version'))) {
    throw new DoubleFailure(
      `KRUNVM_DOUBLE_ROOTFS is not a Debian root file system: "${rootfs ?? ''}". Build one with ensureDebianRootfs() from test/support/krunvm-double.ts.`,
    );
  }
  return rootfs;
}

function runDelete(state: State, parsed: ParsedArguments): number {
  const name = positional(parsed, 'name')!;
  const record = state.readVm(name);
  if (record === undefined) {
    throw new KrunvmFailure('No VM found with that name');
  }
  if (process.env.KRUNVM_DOUBLE_DELETE_CONTAINER_GONE === name) {
    // krunvm stops at buildah's failure before saving its configuration, so the record stays.
    printStderr(`Error: unmounting container "${record.container}": container not known`);
    throw new KrunvmFailure('buildah returned an error: ');
  }

  const directory = state.vmDirectory(name);
  const lock = tryLockVm(directory);
  if (lock === undefined) {
    printStderr(`krunvm (test double): VM "${name}" is running; not deleting its root file system under it.`);
    throw new KrunvmFailure('buildah returned an error: ');
  }
  try {
    assertNothingMountedUnder(directory);
    rmSync(directory, { recursive: true, force: true });
  } finally {
    closeSync(lock);
  }
  return 0;
}

function runList(state: State): number {
  const records = state.listVms();
  if (records.length === 0) {
    printStdout('No microVMs found');
    return 0;
  }
  for (const record of records) {
    printStdout('');
    printVm(record);
  }
  printStdout('');
  return 0;
}

const MAX_CPUS = 8;
const MAX_MEM_MIB = 16384;

function runChangeVm(state: State, parsed: ParsedArguments): number {
  const name = positional(parsed, 'name')!;
  const newName = singleValue(parsed, 'newName');
  const cpus = parseU32(singleValue(parsed, 'cpus'), '--cpus <CPUS>');
  const mem = parseU32(singleValue(parsed, 'mem'), '--mem <MEM>');
  const volumes = parsePairs(parsed.values.get('volumes'), parseVolume);
  const ports = parsePairs(parsed.values.get('ports'), parsePort);
  const workdir = singleValue(parsed, 'workdir');

  if (newName !== undefined && state.readVm(newName) !== undefined) {
    throw new KrunvmFailure(`A VM with name ${newName} already exists`);
  }
  const record = state.readVm(name);
  if (record === undefined) {
    throw new KrunvmFailure(`No VM found with name ${name}`);
  }

  let changed = false;
  if (newName !== undefined) {
    renameSync(state.vmDirectory(name), state.vmDirectory(newName));
    record.name = newName;
    changed = true;
  }
  // krunvm prints these two errors but still applies the other changes and exits 0.
  if (cpus !== undefined) {
    if (cpus > MAX_CPUS) {
      printStdout(`Error: the maximum number of CPUs supported is ${MAX_CPUS}`);
    } else {
      record.cpus = cpus;
      changed = true;
    }
  }
  if (mem !== undefined) {
    if (mem > MAX_MEM_MIB) {
      printStdout(`Error: the maximum amount of RAM supported is ${MAX_MEM_MIB} MiB`);
    } else {
      record.mem = mem;
      changed = true;
    }
  }
  // krunvm ignores -v and --port when the matching --remove-* flag is given.
  if (parsed.flags.has('removeVolumes')) {
    record.volumes = {};
    changed = true;
  } else if (Object.keys(volumes).length > 0) {
    record.volumes = volumes;
    changed = true;
  }
  if (parsed.flags.has('removePorts')) {
    record.ports = {};
    changed = true;
  } else if (Object.keys(ports).length > 0) {
    record.ports = ports;
    changed = true;
  }
  if (workdir !== undefined) {
    record.workdir = workdir;
    changed = true;
  }

  printStdout('');
  printVm(record);
  printStdout('');
  if (changed) {
    state.writeVm(record);
  }
  return 0;
}

function runConfig(state: State, parsed: ParsedArguments): number {
  const config = state.readGlobalConfig();
  const cpus = parseU32(singleValue(parsed, 'cpus'), '--cpus <CPUS>');
  const mem = parseU32(singleValue(parsed, 'mem'), '--mem <MEM>');
  const dns = singleValue(parsed, 'dns');

  let changed = false;
  if (cpus !== undefined) {
    if (cpus > MAX_CPUS) {
      printStdout(`Error: the maximum number of CPUs supported is ${MAX_CPUS}`);
    } else {
      config.cpus = cpus;
      changed = true;
    }
  }
  if (mem !== undefined) {
    if (mem > MAX_MEM_MIB) {
      printStdout(`Error: the maximum amount of RAM supported is ${MAX_MEM_MIB} MiB`);
    } else {
      config.mem = mem;
      changed = true;
    }
  }
  if (dns !== undefined) {
    config.dns = dns;
    changed = true;
  }
  if (changed) {
    state.writeGlobalConfig(config);
  }

  printStdout('Global configuration:');
  printStdout(`Default number of CPUs for newly created VMs: ${config.cpus}`);
  printStdout(`Default amount of RAM (MiB) for newly created VMs: ${config.mem}`);
  printStdout(`Default DNS server for newly created VMs: ${config.dns}`);
  return 0;
}

// ---------------------------------------------------------------------------
// start: the host side

/** The guest init's input, passed to it as one JSON argument. */
interface GuestSpec {
  lowerDirectory: string;
  upperDirectory: string;
  workDirectory: string;
  mergedDirectory: string;
  /** Host path to guest path. */
  volumes: Record<string, string>;
  workdir: string;
  command: string;
  args: string[];
  env: Record<string, string>;
}

/**
 * Takes the VM's lock without waiting, like krunvm's flock on its lock file.
 * Returns the descriptor that keeps the lock, or undefined when another
 * process has it. Node has no flock, so flock(1) locks the open file
 * description that this process shares with it, and the lock stays after
 * flock(1) exits.
 */
function tryLockVm(vmDirectory: string): number | undefined {
  const fd = openSync(join(vmDirectory, 'lock'), 'a');
  // The descriptor becomes fd 3 in flock(1).
  const result = spawnSync('flock', ['--nonblock', '--exclusive', '3'], {
    stdio: ['ignore', 'ignore', 'inherit', fd],
  });
  if (result.error !== undefined) {
    closeSync(fd);
    throw new DoubleFailure(`Running flock failed: ${result.error.message}. Install util-linux.`);
  }
  if (result.status !== 0) {
    closeSync(fd);
    return undefined;
  }
  return fd;
}

/** Splits `--env KEY=VALUE` values. Unlike real krunvm, the double rejects a value without `=`. */
function parseEnvironment(values: string[]): Record<string, string> {
  const environment: Record<string, string> = {};
  for (const value of values) {
    const equals = value.indexOf('=');
    if (equals <= 0) {
      throw new KrunvmFailure(`Invalid value for --env: "${value}" (krunvm test double expects KEY=VALUE)`);
    }
    environment[value.slice(0, equals)] = value.slice(equals + 1);
  }
  return environment;
}

/** Rejects paths that the overlay's mount options cannot carry unescaped. */
function assertOverlayPath(path: string): void {
  if (/[,:\\]/.test(path)) {
    throw new DoubleFailure(`The overlay layer path contains ',', ':' or '\\': ${path}. Use a state directory without them.`);
  }
}

async function runStart(state: State, parsed: ParsedArguments): Promise<number> {
  const name = positional(parsed, 'name')!;
  const record = state.readVm(name);
  if (record === undefined) {
    throw new KrunvmFailure(`No VM found with name ${name}`);
  }
  if (record.rootfs === null) {
    printStderr(`krunvm (test double): image ${record.image} cannot run here; the start was only recorded.`);
    return 0;
  }
  // With krunvm before 0.2.6 (or libkrun before 1.8) on macOS, libkrun rejects the volume list at start.
  if (Object.keys(record.volumes).length > 0 && isVersionBelow(reportedVersion(), FIRST_VERSION_WITH_VOLUMES)) {
    throw new KrunvmFailure('Error setting VM mapped volumes');
  }
  const extraEnvironment = parseEnvironment(parsed.values.get('envs') ?? []);

  const directory = state.vmDirectory(name);
  const spec: GuestSpec = {
    lowerDirectory: record.rootfs,
    upperDirectory: join(directory, 'upper'),
    workDirectory: join(directory, 'work'),
    mergedDirectory: join(directory, 'merged'),
    volumes: record.volumes,
    workdir: record.workdir === '' ? '/' : record.workdir,
    command: positional(parsed, 'command') ?? DEFAULT_GUEST_COMMAND,
    args: parsed.positionals.get('args') ?? [],
    env: { PATH: GUEST_PATH, HOSTNAME: record.name, HOME: '/root', ...extraEnvironment },
  };
  for (const path of [spec.lowerDirectory, spec.upperDirectory, spec.workDirectory]) {
    assertOverlayPath(path);
  }

  const lock = tryLockVm(directory);
  if (lock === undefined) {
    throw new KrunvmFailure("Couldn't acquire lock file. Is another instance of this VM already running?");
  }
  try {
    const status = await runGuest(spec);
    if (status.setupFailed || status.signal !== undefined) {
      return status.exitCode;
    }
    return process.env.KRUNVM_DOUBLE_EXIT_ZERO === '1' ? 0 : status.exitCode;
  } finally {
    closeSync(lock);
  }
}

interface GuestStatus {
  exitCode: number;
  /** True when the init failed before the guest command started. */
  setupFailed: boolean;
  /** The signal that stopped the double while the guest ran. */
  signal?: NodeJS.Signals;
}

function signalNumber(signal: NodeJS.Signals): number {
  return osConstants.signals[signal];
}

/** Returns the children of a process, read from procfs. */
function childProcessIds(pid: number): number[] {
  try {
    const text = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8');
    return text.split(' ').filter((field) => field !== '').map(Number);
  } catch {
    return [];
  }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // The process has already exited.
  }
}

/**
 * Runs the guest init in new namespaces and waits for it. unshare(1) forks
 * the init as PID 1 of a new PID namespace. When the init dies, the kernel
 * kills every other process in it, and the mounts vanish with the mount
 * namespace. Parent-death signals (setpriv --pdeathsig, unshare
 * --kill-child) also kill the init when this process is killed.
 */
async function runGuest(spec: GuestSpec): Promise<GuestStatus> {
  const argv = [
    '--pdeathsig', 'KILL', '--',
    'unshare', '--mount', '--propagation', 'private', '--uts', '--ipc', '--pid', '--fork', '--kill-child', '--',
    process.execPath, SCRIPT_PATH, GUEST_INIT_ARGUMENT, JSON.stringify(spec),
  ];
  const child = spawn('setpriv', argv, { stdio: ['inherit', 'inherit', 'inherit', 'pipe'] });

  let ready = false;
  child.stdio[READY_FD]!.on('data', (chunk: Buffer) => {
    ready ||= chunk.toString('utf8').includes('ready');
  });

  let receivedSignal: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (receivedSignal !== undefined || child.pid === undefined) {
      return;
    }
    receivedSignal = signal;
    // Stopping the init (the child of unshare) rather than unshare makes
    // unshare exit only after every process in the namespace is gone, and
    // the mounts with them. Once ready, the init has a SIGTERM handler that
    // kills the guest and exits. Before that, only SIGKILL reaches it, because
    // a namespace's PID 1 ignores signals it has no handler for.
    const initProcesses = childProcessIds(child.pid);
    for (const pid of initProcesses) {
      killQuietly(pid, ready ? 'SIGTERM' : 'SIGKILL');
    }
    if (initProcesses.length === 0) {
      killQuietly(child.pid, 'SIGKILL');
    }
  };
  const handledSignals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const signal of handledSignals) {
    process.on(signal, onSignal);
  }

  try {
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (exitCode: number | null, exitSignal: NodeJS.Signals | null) => resolve([exitCode, exitSignal]));
    });
    if (receivedSignal !== undefined) {
      return { exitCode: 128 + signalNumber(receivedSignal), setupFailed: false, signal: receivedSignal };
    }
    const exitCode = code ?? 128 + signalNumber(signal ?? 'SIGKILL');
    return { exitCode, setupFailed: !ready };
  } catch (error) {
    throw new DoubleFailure(`Starting setpriv and unshare failed: ${(error as Error).message}. Install util-linux.`);
  } finally {
    for (const signal of handledSignals) {
      process.off(signal, onSignal);
    }
  }
}

// ---------------------------------------------------------------------------
// start: the guest init, PID 1 of the new namespaces

function mount(argv: string[]): void {
  const result = spawnSync('mount', argv, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (result.status !== 0) {
    const reason = result.error?.message ?? result.stderr.trim();
    throw new DoubleFailure(`mount ${argv.join(' ')} failed: ${reason}`);
  }
}

/** Creates a mount point inside the guest's root, refusing a symbolic link that could lead out of it. */
function prepareMountPoint(path: string): void {
  try {
    if (lstatSync(path).isSymbolicLink()) {
      throw new DoubleFailure(`${path} is a symbolic link, which cannot be a mount point in the guest.`);
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw error;
    }
    mkdirSync(path, { mode: 0o755 });
  }
}

function mountGuestFileSystems(spec: GuestSpec): void {
  const root = spec.mergedDirectory;
  mount([
    '-t', 'overlay', 'overlay',
    '-o', `lowerdir=${spec.lowerDirectory},upperdir=${spec.upperDirectory},workdir=${spec.workDirectory}`,
    root,
  ]);
  for (const [hostPath, guestPath] of Object.entries(spec.volumes)) {
    const target = join(root, guestPath);
    prepareMountPoint(target);
    mount(['--rbind', hostPath, target]);
  }
  prepareMountPoint(join(root, 'proc'));
  mount(['-t', 'proc', 'proc', join(root, 'proc')]);
  prepareMountPoint(join(root, 'dev'));
  mount(['--rbind', '/dev', join(root, 'dev')]);
  // Read-only, because this sysfs is the host's, not a VM's own.
  prepareMountPoint(join(root, 'sys'));
  mount(['-t', 'sysfs', '-o', 'ro,nosuid,nodev,noexec', 'sysfs', join(root, 'sys')]);

  // The host's resolver, so that apt in the guest reaches the archive as the host's apt does.
  const resolvConf = join(root, 'etc', 'resolv.conf');
  rmSync(resolvConf, { force: true });
  copyFileSync('/etc/resolv.conf', resolvConf);
}

/**
 * Mounts the guest's file systems, reports readiness on READY_FD, then runs
 * the guest command chrooted in the overlay and exits with its status.
 */
function runGuestInit(specJson: string): void {
  const spec = JSON.parse(specJson) as GuestSpec;
  // As PID 1 of the namespace, kill(-1) reaches every other process in it.
  process.on('SIGTERM', () => {
    killQuietly(-1, 'SIGKILL');
    process.exit(128 + signalNumber('SIGTERM'));
  });
  try {
    mountGuestFileSystems(spec);
  } catch (error) {
    printStderr(`krunvm (test double): ${(error as Error).message}`);
    process.exit(EXIT_DOUBLE_FAILURE);
  }
  writeSync(READY_FD, READY_MESSAGE);
  closeSync(READY_FD);

  // 125 is libkrun's status for a failed guest init, and a working directory
  // that cannot be entered counts as one here.
  const workdir = join(spec.mergedDirectory, spec.workdir);
  if (!existsSync(workdir) || !statSync(workdir).isDirectory()) {
    printStderr(`chdir to ${spec.workdir} failed: No such file or directory`);
    process.exit(EXIT_INIT_FAILED);
  }

  // unshare(1) only changes root and directory here. Its execvp searches the
  // guest's PATH inside the new root, and it exits 127 for a command that is
  // not found and 126 for one that cannot run, as libkrun 1.12 does.
  // NOTE: Node does not reap orphaned processes, so as PID 1 this init leaves
  // zombies of orphaned guest processes until the guest command exits.
  const unshare = which.sync('unshare');
  const guest = spawn(unshare, ['--root', spec.mergedDirectory, '--wd', spec.workdir, '--', spec.command, ...spec.args], {
    stdio: 'inherit',
    env: spec.env,
  });
  guest.once('error', (error) => {
    printStderr(`krunvm (test double): starting the guest command failed: ${error.message}`);
    process.exit(EXIT_INIT_FAILED);
  });
  guest.once('exit', (code, signal) => {
    process.exit(code ?? 128 + signalNumber(signal ?? 'SIGKILL'));
  });
}

// ---------------------------------------------------------------------------
// Entry point

const TOP_LEVEL_USAGE = 'krunvm [OPTIONS] <COMMAND>';

function printHelp(spec: CommandSpec | undefined): void {
  if (spec === undefined) {
    printStdout('Create microVMs from OCI images (krunvm test double)');
    printStdout('');
    printStdout(`Usage: ${TOP_LEVEL_USAGE}`);
    printStdout('');
    printStdout('Commands:');
    for (const command of Object.values(COMMANDS)) {
      printStdout(`  ${command.name.padEnd(9)} ${command.about}`);
    }
    return;
  }
  printStdout(spec.about);
  printStdout('');
  printStdout(`Usage: ${spec.usage}`);
  if (spec.options.length > 0) {
    printStdout('');
    printStdout('Options:');
    for (const option of spec.options) {
      const short = option.short === undefined ? '    ' : `-${option.short}, `;
      printStdout(`  ${short}${describeOption(option)}`);
    }
  }
}

function printUsageError(error: UsageError): void {
  const lines = [`error: ${error.message}`, ''];
  if (error.tip !== undefined) {
    lines.push(`  tip: ${error.tip}`, '');
  }
  if (error.usage !== undefined) {
    lines.push(`Usage: ${error.usage}`, '');
  }
  lines.push("For more information, try '--help'.");
  printStderr(lines.join('\n'));
}

/** Splits the global options (`-v N`, `--version`, `--help`) from the subcommand and its arguments. */
function splitTopLevel(argv: string[]): { version: boolean; help: boolean; command?: string; rest: string[] } {
  for (let index = 0; index < argv.length; index++) {
    const token = argv[index]!;
    if (token === '--version' || token === '-V') {
      return { version: true, help: false, rest: [] };
    }
    if (token === '--help' || token === '-h' || token === 'help') {
      return { version: false, help: true, rest: [] };
    }
    if (token === '-v') {
      index++;
      continue;
    }
    if (/^-v\d+$/.test(token)) {
      continue;
    }
    if (token.startsWith('-')) {
      throw new UsageError(`unexpected argument '${token}' found`, TOP_LEVEL_USAGE);
    }
    return { version: false, help: false, command: token, rest: argv.slice(index + 1) };
  }
  return { version: false, help: false, rest: [] };
}

async function runKrunvm(argv: string[]): Promise<number> {
  const state = State.fromEnvironment();
  state.appendCall(argv);

  const topLevel = splitTopLevel(argv);
  if (topLevel.version) {
    printStdout(`krunvm ${reportedVersion()}`);
    return 0;
  }
  if (topLevel.help) {
    printHelp(undefined);
    return 0;
  }
  if (topLevel.command === undefined) {
    throw new UsageError("'krunvm' requires a subcommand but one was not provided", TOP_LEVEL_USAGE);
  }
  const spec = COMMANDS[topLevel.command];
  if (spec === undefined) {
    throw new UsageError(`unrecognized subcommand '${topLevel.command}'`, TOP_LEVEL_USAGE);
  }
  const parsed = parseArguments(spec, topLevel.rest);
  if (parsed.help) {
    printHelp(spec);
    return 0;
  }

  // krunvm parses its command line before it checks for a storage volume,
  // so value errors such as a bad volume come first.
  validateValues(spec, parsed);
  if (!existsSync(state.storageVolume)) {
    promptForStorageVolume(state);
  }

  switch (spec.name) {
    case 'create':
      return runCreate(state, parsed);
    case 'start':
      return runStart(state, parsed);
    case 'delete':
      return runDelete(state, parsed);
    case 'list':
      return runList(state);
    case 'changevm':
      return runChangeVm(state, parsed);
    default:
      return runConfig(state, parsed);
  }
}

/** Checks the values that clap converts while parsing (numbers, volumes and ports). */
function validateValues(spec: CommandSpec, parsed: ParsedArguments): void {
  for (const option of spec.options) {
    for (const value of parsed.values.get(option.id) ?? []) {
      if (option.id === 'cpus' || option.id === 'mem') {
        parseU32(value, describeOption(option));
      } else if (option.id === 'volumes') {
        parseVolume(value);
      } else if (option.id === 'ports') {
        parsePort(value);
      }
    }
  }
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === GUEST_INIT_ARGUMENT) {
    runGuestInit(argv[1] ?? '{}');
    return;
  }
  let exitCode: number;
  try {
    exitCode = await runKrunvm(argv);
  } catch (error) {
    if (error instanceof KrunvmFailure) {
      printStdout(error.message);
      exitCode = EXIT_KRUNVM_FAILURE;
    } else if (error instanceof UsageError) {
      printUsageError(error);
      exitCode = EXIT_USAGE;
    } else if (error instanceof DoubleFailure) {
      printStderr(`krunvm (test double): ${error.message}`);
      exitCode = EXIT_DOUBLE_FAILURE;
    } else {
      printStderr(`krunvm (test double): unexpected failure: ${(error as Error).stack ?? String(error)}`);
      exitCode = EXIT_DOUBLE_FAILURE;
    }
  }
  process.exit(exitCode);
}

await main(process.argv.slice(2));
