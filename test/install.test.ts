// SPDX-License-Identifier: LGPL-2.1-only
//
// install and uninstall with small real libraries: a raw bundle of a few
// bytes, linked with cc (Linux) or clang and lld (an arm64 macOS dylib).
import assert from 'node:assert/strict';
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { renderKernelSource } from '../src/bundle/c-source.js';
import { bundleRaw } from '../src/bundle/layout.js';
import { DARWIN_CROSS_TARGET } from '../src/cli/link.js';
import { LocalExecutor } from '../src/exec/local.js';
import { sha256, sha256File } from '../src/hash.js';
import { applyInstall, defaultLibdir, findBuiltLibrary, planInstall } from '../src/install.js';
import { type TargetOs, libraryNames } from '../src/library.js';
import { linkLibrary } from '../src/link.js';
import { type Provenance, writeProvenance } from '../src/provenance.js';
import { runSelfTest } from '../src/selftest/selftest.js';
import { ABI_VERSION, LIBRARY_MINOR_VERSION, LIBRARY_PATCH_VERSION } from '../src/versions.js';
import { CLI, runCli } from './support/cli.js';

const LOAD_ADDRESS = 0x80000000n;
const executor = new LocalExecutor();

interface FixtureBuild {
  directory: string;
  /** The raw kernel the bundle carries. */
  artifact: string;
  artifactLength: number;
  librarySha256: string;
}

/** Writes a build output directory as krunfw-mac build leaves it: kernel.c, the linked library and provenance.json. */
async function makeBuildOutput(directory: string, os: TargetOs, text: string): Promise<FixtureBuild> {
  await mkdir(directory, { recursive: true });
  const bytes = Buffer.from(text.repeat(64));
  const artifact = join(directory, 'Image');
  await writeFile(artifact, bytes);
  const bundle = bundleRaw(bytes, { loadAddress: LOAD_ADDRESS, entryAddress: LOAD_ADDRESS });
  const source = join(directory, 'kernel.c');
  await writeFile(source, renderKernelSource(bundle, { kernelVersion: '6.1.0-test' }));
  const version = { abi: ABI_VERSION, minor: LIBRARY_MINOR_VERSION, patch: LIBRARY_PATCH_VERSION };
  const names = libraryNames(os, 'generic', version);
  const cross = os === 'darwin' ? DARWIN_CROSS_TARGET : undefined;
  const library = await linkLibrary(
    { sources: [source], outputDirectory: directory, targetOs: os, version, names, cc: cross ? ['clang'] : ['cc'], crossTarget: cross },
    (command) => executor.run(command),
  );
  const librarySha256 = await sha256File(library);
  const provenance: Provenance = {
    tool: { name: 'krunfw-mac', version: 'test' },
    variant: 'generic',
    arch: 'aarch64',
    abi: ABI_VERSION,
    kernel: { version: '6.1.0-test', tarball: { name: '/nonexistent/linux.tar.xz', sha256: sha256('tarball') }, artifact: { name: 'Image', sha256: sha256(bytes) } },
    patches: [],
    config: { sha256: sha256('config'), maxCpus: 16, fragments: [] },
    bundle: { file: 'kernel.c', sha256: sha256(bundle.bytes), sourceSha256: await sha256File(source), loadAddress: '0x80000000', entryAddress: '0x80000000' },
    library: { file: names.fileName, soname: names.soname, sha256: librarySha256 },
  };
  await writeProvenance(join(directory, 'provenance.json'), provenance);
  return { directory, artifact, artifactLength: bytes.length, librarySha256 };
}

/** Loads a library through the given path, as libkrun does, and checks it returns the fixture's kernel. */
async function assertLoadable(library: string, build: FixtureBuild, workDirectory: string): Promise<void> {
  const report = await runSelfTest(
    {
      library,
      abi: ABI_VERSION,
      loadAddress: LOAD_ADDRESS,
      entryAddress: LOAD_ADDRESS,
      artifact: build.artifact,
      artifactOffset: 0,
      artifactLength: build.artifactLength,
      workDirectory,
      cc: ['cc'],
    },
    executor,
  );
  assert.doesNotMatch(report, /FAIL/);
}

/** Maps every path under a directory to what it is: a file's SHA-256, a symlink's target, or "directory". */
async function snapshot(directory: string): Promise<Record<string, string>> {
  const result: Record<string, string> = {};
  const entries = await readdir(directory, { recursive: true }).catch(() => [] as string[]);
  for (const entry of entries.sort()) {
    const path = join(directory, entry);
    const info = await lstat(path);
    result[entry] = info.isSymbolicLink() ? `-> ${await readlink(path)}` : info.isDirectory() ? 'directory' : await sha256File(path);
  }
  return result;
}

describe('install and uninstall', () => {
  let directory: string;
  let linuxBuild: FixtureBuild;
  let linuxBuildB: FixtureBuild;
  let darwinBuild: FixtureBuild;

  before(async () => {
    directory = await mkdtemp(join(tmpdir(), 'krunfw-install-'));
    // Readable by every user, for the test that runs as the unprivileged user nobody (uid 65534).
    await chmod(directory, 0o755);
    linuxBuild = await makeBuildOutput(join(directory, 'build-a'), 'linux', 'kernel A ');
    linuxBuildB = await makeBuildOutput(join(directory, 'build-b'), 'linux', 'kernel B, a newer one ');
    darwinBuild = await makeBuildOutput(join(directory, 'build-darwin'), 'darwin', 'kernel for macOS ');
  });

  after(async () => {
    await rm(directory, { recursive: true, force: true });
  });

  test('install linux layout into lib', async () => {
    const prefix = join(directory, 'linux-lib');
    const result = await runCli(['install', '--output-dir', linuxBuild.directory, '--prefix', prefix, '--libdir', 'lib']);
    assert.equal(result.exitCode, 0, result.stderr);
    const lib = join(prefix, 'lib');
    assert.equal(await sha256File(join(lib, 'libkrunfw.so.5.0.0')), linuxBuild.librarySha256);
    assert.equal(await readlink(join(lib, 'libkrunfw.so.5')), 'libkrunfw.so.5.0.0');
    assert.equal(await readlink(join(lib, 'libkrunfw.so')), 'libkrunfw.so.5');
    assert.equal((await lstat(join(lib, 'libkrunfw.so.5.0.0'))).mode & 0o777, 0o755);
    await assertLoadable(join(lib, 'libkrunfw.so.5'), linuxBuild, join(directory, 'selftest-lib'));
  });

  test('install linux layout into lib64', async () => {
    const prefix = join(directory, 'linux-lib64');
    const result = await runCli(['install', '--output-dir', linuxBuild.directory, '--prefix', prefix, '--libdir', 'lib64']);
    assert.equal(result.exitCode, 0, result.stderr);
    assert.equal(await readlink(join(prefix, 'lib64', 'libkrunfw.so.5')), 'libkrunfw.so.5.0.0');
    assert.equal(await sha256File(join(prefix, 'lib64', 'libkrunfw.so')), linuxBuild.librarySha256);
    await assert.rejects(lstat(join(prefix, 'lib')));
  });

  test('install macOS layout', async () => {
    const prefix = join(directory, 'darwin');
    const result = await runCli(['install', '--output-dir', darwinBuild.directory, '--prefix', prefix, '--json']);
    assert.equal(result.exitCode, 0, result.stderr);
    assert.equal(JSON.parse(result.stdout).library, join(prefix, 'lib', 'libkrunfw.5.dylib'));
    assert.equal(await sha256File(join(prefix, 'lib', 'libkrunfw.5.dylib')), darwinBuild.librarySha256);
    assert.equal(await readlink(join(prefix, 'lib', 'libkrunfw.dylib')), 'libkrunfw.5.dylib');
    const exports = await execa('llvm-nm', ['-g', join(prefix, 'lib', 'libkrunfw.dylib')]);
    assert.match(exports.stdout, /T _krunfw_get_version/);
  });

  test('defaultLibdir follows the distribution', async () => {
    const fedora = join(directory, 'root-fedora');
    await mkdir(join(fedora, 'usr', 'lib64'), { recursive: true });
    await writeFile(join(fedora, 'usr', 'lib64', 'libc.so.6'), '');
    const debian = join(directory, 'root-debian');
    await mkdir(join(debian, 'usr', 'lib64'), { recursive: true });
    await writeFile(join(debian, 'usr', 'lib64', 'ld-linux-x86-64.so.2'), '');
    const arch = join(directory, 'root-arch');
    await mkdir(join(arch, 'usr', 'lib'), { recursive: true });
    await writeFile(join(arch, 'usr', 'lib', 'libc.so.6'), '');
    await symlink('lib', join(arch, 'usr', 'lib64'));

    assert.equal(await defaultLibdir('linux', fedora), 'lib64');
    assert.equal(await defaultLibdir('linux', debian), 'lib');
    assert.equal(await defaultLibdir('linux', arch), 'lib');
    assert.equal(await defaultLibdir('darwin', fedora), 'lib');
  });

  test('install honours DESTDIR', async () => {
    const stage = join(directory, 'stage');
    const prefix = '/opt/krunfw-install-test';
    const result = await runCli(['install', '--output-dir', linuxBuild.directory, '--prefix', prefix, '--libdir', 'lib'], { env: { DESTDIR: stage } });
    assert.equal(result.exitCode, 0, result.stderr);
    assert.equal(await sha256File(join(stage, prefix, 'lib', 'libkrunfw.so.5.0.0')), linuxBuild.librarySha256);
    await assert.rejects(lstat(prefix));

    const removed = await runCli(['uninstall', '--prefix', prefix], { env: { DESTDIR: stage } });
    assert.equal(removed.exitCode, 0, removed.stderr);
    // The prefix is gone; the staging directories above it are not the install's to remove.
    assert.deepEqual(await readdir(join(stage, 'opt')), []);
  });

  test('install dry run changes nothing', async () => {
    const prefix = join(directory, 'dry-run');
    const result = await runCli(['install', '--output-dir', linuxBuild.directory, '--prefix', prefix, '--libdir', 'lib', '--dry-run']);
    assert.equal(result.exitCode, 0, result.stderr);
    assert.match(result.stdout, new RegExp(`would install ${join(prefix, 'lib', 'libkrunfw.so.5.0.0')}`));
    assert.match(result.stdout, /would link .*libkrunfw\.so\.5 -> libkrunfw\.so\.5\.0\.0/);
    await assert.rejects(lstat(prefix));
  });

  test('uninstall removes exactly what install added', async () => {
    const prefix = join(directory, 'round-trip');
    await mkdir(join(prefix, 'lib'), { recursive: true });
    await writeFile(join(prefix, 'lib', 'libother.so'), 'another library');
    const before = await snapshot(prefix);

    const installed = await runCli(['install', '--output-dir', linuxBuild.directory, '--prefix', prefix, '--libdir', 'lib']);
    assert.equal(installed.exitCode, 0, installed.stderr);
    assert.notDeepEqual(await snapshot(prefix), before);
    const removed = await runCli(['uninstall', '--prefix', prefix]);
    assert.equal(removed.exitCode, 0, removed.stderr);
    assert.deepEqual(await snapshot(prefix), before);
  });

  test('uninstall dry run removes nothing', async () => {
    const prefix = join(directory, 'uninstall-dry-run');
    assert.equal((await runCli(['install', '--output-dir', linuxBuild.directory, '--prefix', prefix, '--libdir', 'lib'])).exitCode, 0);
    const installed = await snapshot(prefix);
    const result = await runCli(['uninstall', '--prefix', prefix, '--dry-run']);
    assert.equal(result.exitCode, 0, result.stderr);
    assert.match(result.stdout, /would remove .*libkrunfw\.so\.5\.0\.0/);
    assert.deepEqual(await snapshot(prefix), installed);
  });

  test('uninstall leaves a changed library', async () => {
    const prefix = join(directory, 'changed');
    assert.equal((await runCli(['install', '--output-dir', linuxBuild.directory, '--prefix', prefix, '--libdir', 'lib'])).exitCode, 0);
    await writeFile(join(prefix, 'lib', 'libkrunfw.so.5.0.0'), 'replaced by someone else');
    const result = await runCli(['uninstall', '--prefix', prefix]);
    assert.equal(result.exitCode, 0, result.stderr);
    assert.match(result.stderr, /left .*libkrunfw\.so\.5\.0\.0: changed after the install/);
    assert.equal(await readFile(join(prefix, 'lib', 'libkrunfw.so.5.0.0'), 'utf8'), 'replaced by someone else');
    await assert.rejects(lstat(join(prefix, 'lib', 'libkrunfw.so.5')));
  });

  test('uninstall without install record fails', async () => {
    const prefix = join(directory, 'never-installed');
    const result = await runCli(['uninstall', '--prefix', prefix]);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /No install record found: .*never-installed\/share\/krunfw-mac\/libkrunfw\.install\.json/);
  });

  test('install of an edited library fails', async () => {
    const edited = join(directory, 'build-edited');
    await makeBuildOutput(edited, 'linux', 'kernel edited ');
    await writeFile(join(edited, 'libkrunfw.so.5.0.0'), 'not the library the build made');
    const result = await runCli(['install', '--output-dir', edited, '--prefix', join(directory, 'edited-prefix')]);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /is not the library the build recorded in provenance\.json/);
    await assert.rejects(lstat(join(directory, 'edited-prefix')));
  });

  test('install interrupted at each step keeps a loadable library', async () => {
    const request = (build: FixtureBuild, prefix: string) => ({
      libraryDirectory: build.directory,
      names: libraryNames('linux', 'generic', { abi: ABI_VERSION, minor: LIBRARY_MINOR_VERSION, patch: LIBRARY_PATCH_VERSION }),
      os: 'linux' as const,
      variant: 'generic' as const,
      prefix,
      libdir: 'lib',
    });
    let steps = Infinity;
    for (let stop = 0; stop < steps; stop++) {
      const prefix = join(directory, `interrupted-${stop}`);
      await applyInstall(await planInstall(request(linuxBuild, prefix)));
      const upgrade = await planInstall(request(linuxBuildB, prefix));
      steps = upgrade.actions.length;
      const controller = new AbortController();
      let step = 0;
      await assert.rejects(applyInstall(upgrade, { signal: controller.signal, onAction: () => step++ === stop && controller.abort() }), { name: 'AbortError' });

      const lib = join(prefix, 'lib');
      const current = await sha256File(join(lib, 'libkrunfw.so.5'));
      const installedFile = upgrade.actions.findIndex((action) => action.kind === 'file');
      assert.equal(current, stop <= installedFile ? linuxBuild.librarySha256 : linuxBuildB.librarySha256, `stopped before step ${stop}`);
      await assertLoadable(join(lib, 'libkrunfw.so.5'), stop <= installedFile ? linuxBuild : linuxBuildB, join(directory, `selftest-${stop}`));
      assert.deepEqual((await readdir(lib)).filter((name) => name.includes('.tmp-')), []);
    }
  });

  test('install into unwritable prefix fails with hint', async () => {
    const prefix = join(directory, 'read-only');
    await mkdir(prefix, { mode: 0o755 });
    // Root may write anywhere, so as root the command runs as uid 65534 (nobody). Any other user gets a read-only prefix.
    const asRoot = process.getuid?.() === 0;
    if (!asRoot) await chmod(prefix, 0o555);
    const argv = [process.execPath, CLI, 'install', '--output-dir', linuxBuild.directory, '--prefix', prefix, '--libdir', 'lib'];
    const command = asRoot ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--', ...argv] : argv;
    const result = await execa(command[0]!, command.slice(1), { reject: false, env: { NO_COLOR: '1' }, stdin: 'ignore' });
    assert.equal(result.exitCode, 1, result.stderr);
    assert.match(result.stderr, new RegExp(`Cannot write to ${prefix}: permission denied`));
    assert.match(result.stderr, /sudo/);
    assert.match(result.stderr, /export LD_LIBRARY_PATH="\$HOME\/\.local\/lib"/);
    assert.doesNotMatch(result.stderr, /\n\s+at /);
    assert.deepEqual(await readdir(prefix), []);
  });

  test('findBuiltLibrary reads names from provenance', async () => {
    const built = await findBuiltLibrary(darwinBuild.directory);
    assert.equal(built.os, 'darwin');
    assert.equal(built.names.fileName, 'libkrunfw.5.dylib');
    assert.deepEqual(built.names.links, [['libkrunfw.dylib', 'libkrunfw.5.dylib']]);
  });
});
