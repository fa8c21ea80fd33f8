// SPDX-License-Identifier: LGPL-2.1-only
//
// Builder definitions: validation of each field, where builders are found
// and which one wins, `krunfw-mac builders`, and the exact krunvm commands of
// the shipped Fedora builder (through the krunvm test double, which cannot
// run Fedora but records every call).
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type BuilderDefinition, loadBuilderFile, validateBuilder } from '../src/builders/definition.js';
import { discoverBuilders, selectBuilder } from '../src/builders/registry.js';
import { KrunfwError } from '../src/errors.js';
import { STATUS_MARKER } from '../src/exec/krunvm.js';
import { vmNameFor } from '../src/vm.js';
import { REPOSITORY, runCli } from './support/cli.js';
import { readKrunvmCalls } from './support/krunvm-double.js';
import { type VmHarness, guestArgv, listVmNames, makeVmHarness, writeFakeKernelTarball } from './support/vm-harness.js';

const VALID = {
  name: 'example',
  description: 'An example builder',
  image: 'docker.io/library/debian:bookworm-20251117',
  env: { DEBIAN_FRONTEND: 'noninteractive' },
  provision: [['/usr/bin/apt-get', 'update']],
};

const FEDORA_IMAGE = 'registry.fedoraproject.org/fedora:41';
const FEDORA_PROVISION = [
  '/usr/bin/dnf', 'install', '-y', '--setopt=install_weak_deps=False',
  'make', 'gcc', 'bc', 'bison', 'flex', 'elfutils-libelf-devel', 'openssl-devel',
  'xz', 'patch', 'perl', 'tar', 'diffutils', 'findutils', 'coreutils',
];

/** Asserts that validating `value` fails naming the file and the field, and returns the message. */
function rejection(value: unknown, field: string): string {
  let caught: unknown;
  try {
    validateBuilder(value, '/builders/example.json');
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof KrunfwError, `expected a KrunfwError for field ${field}`);
  assert.ok(caught.message.startsWith(`Invalid builder definition /builders/example.json: field "${field}" must be `), caught.message);
  return caught.message;
}

describe('builder validation', () => {
  test('valid definition is returned', () => {
    const definition: BuilderDefinition = validateBuilder(VALID, '/builders/example.json');
    assert.deepEqual(definition, VALID);
  });

  test('optional fields get defaults', () => {
    const definition = validateBuilder({ name: 'bare', image: 'quay.io/org/image@sha256:' + 'a'.repeat(64), provision: [] }, 'x.json');
    assert.equal(definition.description, '');
    assert.deepEqual(definition.env, {});
  });

  test('registry with port and digest accepted', () => {
    const image = `registry.example:5000/team/builder:1.2@sha256:${'0'.repeat(64)}`;
    assert.equal(validateBuilder({ ...VALID, image }, 'x.json').image, image);
  });

  test('top level must be an object', () => {
    assert.match(rejection([VALID], '(top level)'), /must be a JSON object$/);
  });

  test('unknown field rejected', () => {
    assert.match(rejection({ ...VALID, packages: ['make'] }, 'packages'), /must be absent \(known fields: name, description, image, env, provision\)/);
  });

  test('name missing', () => {
    const { name: _name, ...rest } = VALID;
    assert.match(rejection(rest, 'name'), /a lowercase name/);
  });

  test('name with capitals', () => {
    rejection({ ...VALID, name: 'Debian' }, 'name');
  });

  test('description not a string', () => {
    assert.match(rejection({ ...VALID, description: 5 }, 'description'), /must be a string$/);
  });

  test('image without registry', () => {
    assert.match(rejection({ ...VALID, image: 'debian:bookworm' }, 'image'), /with a registry and a tag or digest/);
  });

  test('image without tag or digest', () => {
    rejection({ ...VALID, image: 'docker.io/library/debian' }, 'image');
  });

  test('image missing', () => {
    const { image: _image, ...rest } = VALID;
    rejection(rest, 'image');
  });

  test('env as array', () => {
    assert.match(rejection({ ...VALID, env: ['A=1'] }, 'env'), /an object of string values/);
  });

  test('env with non-string value', () => {
    rejection({ ...VALID, env: { JOBS: 4 } }, 'env');
  });

  test('env with option-like name', () => {
    assert.match(rejection({ ...VALID, env: { '-i': 'x' } }, 'env'), /variable names .* not "-i"/);
  });

  test('env with = in name', () => {
    rejection({ ...VALID, env: { 'A=B': 'x' } }, 'env');
  });

  test('provision missing', () => {
    const { provision: _provision, ...rest } = VALID;
    assert.match(rejection(rest, 'provision'), /an array of commands/);
  });

  test('provision command empty', () => {
    assert.match(rejection({ ...VALID, provision: [['/bin/true'], []] }, 'provision[1]'), /a non-empty array of strings/);
  });

  test('provision command as string', () => {
    rejection({ ...VALID, provision: ['/usr/bin/apt-get update'] }, 'provision[0]');
  });

  test('provision argument not a string', () => {
    rejection({ ...VALID, provision: [['/usr/bin/apt-get', 1]] }, 'provision[0]');
  });

  test('provision program not absolute', () => {
    assert.match(rejection({ ...VALID, provision: [['apt-get', 'update']] }, 'provision[0][0]'), /an absolute program path/);
  });
});

describe('builder files and discovery', () => {
  let root: string;
  let env: NodeJS.ProcessEnv;
  let work: string;
  let userDirectory: string;

  /** Writes a valid definition with the given name and description, and returns its path. */
  async function writeDefinition(directory: string, fileName: string, name: string, description: string): Promise<string> {
    await mkdir(directory, { recursive: true });
    const path = join(directory, fileName);
    await writeFile(path, JSON.stringify({ ...VALID, name, description }));
    return path;
  }

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'krunfw-builders-'));
    env = { ...process.env, XDG_CONFIG_HOME: join(root, 'config'), NO_COLOR: '1' };
    delete env.BUILDER;
    userDirectory = join(root, 'config', 'krunfw-mac', 'builders');
    work = join(root, 'work');
    await mkdir(work);
  });

  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('missing file named', async () => {
    const path = join(root, 'absent.json');
    await assert.rejects(loadBuilderFile(path, 'file'), { message: `Builder definition not found: ${path}` });
  });

  test('invalid JSON named', async () => {
    const path = join(root, 'broken.json');
    await writeFile(path, '{ "name": "broken", ');
    await assert.rejects(loadBuilderFile(path, 'file'), (error: Error) => error.message.startsWith(`Invalid builder definition ${path}: not valid JSON (`));
  });

  test('built-ins are debian and fedora', async () => {
    const builders = await discoverBuilders({ workDirectory: work, env });
    assert.deepEqual(builders.map((builder) => [builder.definition.name, builder.origin]), [['debian', 'built-in'], ['fedora', 'built-in']]);
    assert.equal(builders[0]!.path, join(REPOSITORY, 'builders', 'debian.json'));
  });

  test('user directory from XDG_CONFIG_HOME', async () => {
    const path = await writeDefinition(userDirectory, 'mine.json', 'mine', 'user');
    try {
      const builders = await discoverBuilders({ workDirectory: work, env });
      const mine = builders.find((builder) => builder.definition.name === 'mine');
      assert.equal(mine?.origin, 'user');
      assert.equal(mine?.path, path);
    } finally {
      await rm(path);
    }
  });

  test('later origins replace earlier ones', async () => {
    await writeDefinition(userDirectory, 'debian.json', 'debian', 'user');
    await writeDefinition(join(work, 'builders'), 'debian.json', 'debian', 'work directory');
    await writeDefinition(userDirectory, 'fedora.json', 'fedora', 'user');
    const file = await writeDefinition(join(root, 'elsewhere'), 'any-name.json', 'debian', 'file');
    try {
      const withoutFile = await discoverBuilders({ workDirectory: work, env });
      assert.deepEqual(withoutFile.map((builder) => [builder.definition.name, builder.origin]), [['debian', 'work directory'], ['fedora', 'user']]);
      const withFile = await discoverBuilders({ workDirectory: work, env, builderFile: file });
      assert.deepEqual(withFile.map((builder) => [builder.definition.name, builder.origin]), [['debian', 'file'], ['fedora', 'user']]);
    } finally {
      await rm(userDirectory, { recursive: true });
      await rm(join(work, 'builders'), { recursive: true });
    }
  });

  test('--builder-file alone selects its builder', async () => {
    const file = await writeDefinition(join(root, 'elsewhere'), 'special.json', 'special', 'file');
    const builders = await discoverBuilders({ workDirectory: work, env, builderFile: file });
    assert.equal(selectBuilder(builders, undefined, file).definition.name, 'special');
    assert.equal(selectBuilder(builders, 'debian', file).definition.name, 'debian');
  });

  test('no request selects fedora', async () => {
    const builders = await discoverBuilders({ workDirectory: work, env });
    assert.equal(selectBuilder(builders, undefined).definition.name, 'fedora');
  });

  test('invalid work directory plugin fails discovery', async () => {
    const plugin = join(work, 'builders', 'bad.json');
    await mkdir(join(work, 'builders'), { recursive: true });
    await writeFile(plugin, JSON.stringify({ ...VALID, provision: [['make']] }));
    try {
      await assert.rejects(discoverBuilders({ workDirectory: work, env }), {
        message: `Invalid builder definition ${plugin}: field "provision[0][0]" must be an absolute program path (old krunvm versions ignore the image's PATH)`,
      });
    } finally {
      await rm(join(work, 'builders'), { recursive: true });
    }
  });

  test('builders command lists name, image, origin', async () => {
    const path = await writeDefinition(userDirectory, 'mine.json', 'mine', 'A builder of my own');
    try {
      const result = await runCli(['builders', '--work-dir', work], { env });
      assert.equal(result.exitCode, 0, result.stderr);
      assert.match(result.stdout, /^debian\n {2}Debian 12 \(bookworm\)[^\n]*\n {2}image: {2}docker\.io\/library\/debian:bookworm-20251117\n {2}from: {3}built-in \(/m);
      assert.match(result.stdout, /^fedora\n[^\n]*\n {2}image: {2}registry\.fedoraproject\.org\/fedora:41\n/m);
      assert.ok(result.stdout.includes(`mine\n  A builder of my own\n  image:  ${VALID.image}\n  from:   user (${path})\n`), result.stdout);
      assert.ok(result.stdout.includes(`Add a builder as JSON in builders/ of the work directory or in ${userDirectory}.`), result.stdout);
    } finally {
      await rm(path);
    }
  });

  test('builders command --json', async () => {
    const result = await runCli(['builders', '--json', '--work-dir', work], { env });
    assert.equal(result.exitCode, 0, result.stderr);
    const listed = JSON.parse(result.stdout) as Array<{ name: string; origin: string; path: string; image: string }>;
    assert.deepEqual(
      listed.map((builder) => [builder.name, builder.origin, builder.image]),
      [['debian', 'built-in', 'docker.io/library/debian:bookworm-20251117'], ['fedora', 'built-in', FEDORA_IMAGE]],
    );
  });
});

describe('fedora builder through krunvm', () => {
  let harness: VmHarness;
  let work: string;
  let calls: string[][];
  let result: { exitCode: number; stdout: string; stderr: string };

  before(async () => {
    harness = await makeVmHarness();
    work = join(harness.root, 'work dir');
    await mkdir(work);
    const tarball = await writeFakeKernelTarball(harness.root);
    const env = { ...harness.env, KRUNVM_DOUBLE_ACCEPT_ANY_IMAGE: '1' };
    result = await runCli(
      ['build', '--vm', '--builder', 'fedora', '--cpus', '2', '--mem', '3072', '--kernel-tarball', tarball, '--no-patches', '--work-dir', work],
      { env, timeoutMs: 10 * 60 * 1000 },
    );
    calls = await readKrunvmCalls(harness.bin.stateDirectory);
  });

  after(async () => {
    await harness?.remove();
  });

  test('create argv', () => {
    const creates = calls.filter((call) => call[0] === 'create');
    assert.deepEqual(creates, [
      ['create', '--name', vmNameFor(work), '--cpus', '2', '--mem', '3072', '-v', `${work}:/work`, '-w', '/work', FEDORA_IMAGE],
    ]);
  });

  test('provisioning argv', () => {
    const starts = calls.filter((call) => call[0] === 'start');
    const first = starts[0]!;
    assert.deepEqual(first.slice(0, 8), ['start', vmNameFor(work), '/usr/bin/env', '--', '-C', '/', '/bin/sh', '-c']);
    assert.ok(first[8]!.includes(STATUS_MARKER), 'the guest shell prints the status line');
    assert.deepEqual(guestArgv(first), FEDORA_PROVISION);
  });

  test('shipped definition matches the tested argv', async () => {
    const shipped = JSON.parse(await readFile(join(REPOSITORY, 'builders', 'fedora.json'), 'utf8')) as BuilderDefinition;
    assert.equal(shipped.image, FEDORA_IMAGE);
    assert.deepEqual(shipped.provision, [FEDORA_PROVISION]);
  });

  test('silent guest fails the build', () => {
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /error: The guest command reported no exit status: \/usr\/bin\/dnf install -y/);
  });

  test('VM deleted after the failure', async () => {
    assert.deepEqual(calls.at(-1), ['delete', vmNameFor(work)]);
    assert.deepEqual(await listVmNames(harness.env), []);
  });
});
