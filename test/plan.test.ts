// SPDX-License-Identifier: LGPL-2.1-only
//
// Plan resolution: where a build runs for each host, guest arch defaults and
// cross-compiling, library names, the builder VM's size, and the options
// rejected before any work starts.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';
import { type LoadedBuilder, loadBuilderFile } from '../src/builders/definition.js';
import { KrunfwError } from '../src/errors.js';
import type { Host } from '../src/host.js';
import { type BuildRequest, buildMode, defaultVmSize, resolvePlan } from '../src/plan.js';
import { vmNameFor } from '../src/vm.js';
import { REPOSITORY } from './support/cli.js';

const LINUX_X86: Host = { os: 'linux', cpu: 'x86_64', cpus: 4, memoryMiB: 16384 };
const LINUX_ARM: Host = { os: 'linux', cpu: 'aarch64', cpus: 8, memoryMiB: 32768 };
const MAC_ARM: Host = { os: 'darwin', cpu: 'aarch64', cpus: 10, memoryMiB: 24576 };
const MAC_INTEL: Host = { os: 'darwin', cpu: 'x86_64', cpus: 8, memoryMiB: 16384 };

const WORK = '/tmp/krunfw-plan-work';
/** A plan's environment: nothing that changes the cross prefix, the compiler or the cache. */
const ENV: NodeJS.ProcessEnv = { KRUNFW_CACHE_DIR: '/tmp/krunfw-plan-cache' };

let builder: LoadedBuilder;

function plan(request: BuildRequest, host: Host = LINUX_X86, env: NodeJS.ProcessEnv = ENV) {
  return resolvePlan({ workDirectory: WORK, kernelTarball: 'linux.tar.xz', ...request }, host, env);
}

/** Returns a request for a VM build, which needs a builder and krunvm. */
function vmRequest(request: BuildRequest = {}): BuildRequest {
  return { vm: true, builder, krunvm: '/opt/homebrew/bin/krunvm', ...request };
}

/** Asserts that `run` throws a KrunfwError whose message matches. */
function assertRejects(run: () => unknown, message: RegExp): KrunfwError {
  let caught: unknown;
  try {
    run();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof KrunfwError, `expected a KrunfwError matching ${message}, got ${String(caught)}`);
  assert.match(caught.message, message);
  return caught;
}

before(async () => {
  builder = await loadBuilderFile(join(REPOSITORY, 'builders', 'debian.json'), 'built-in');
});

describe('build mode', () => {
  test('darwin arm64 builds in a VM', () => {
    assert.equal(buildMode(MAC_ARM, false), 'vm');
  });

  test('darwin x86_64 rejected naming Intel', () => {
    const error = assertRejects(() => buildMode(MAC_INTEL, false), /^macOS on Intel \(x86_64\) is not supported: .*Apple Silicon/);
    assert.match(error.hint ?? '', /link --target-os darwin/);
  });

  test('linux builds natively', () => {
    assert.equal(buildMode(LINUX_X86, false), 'native');
  });

  test('linux with --vm builds in a VM', () => {
    assert.equal(buildMode(LINUX_X86, true), 'vm');
  });

  test('other OS rejected', () => {
    assertRejects(() => buildMode({ ...LINUX_X86, os: 'freebsd' }, false), /^Unsupported host operating system: freebsd$/);
  });

  test('plan mode follows the host', () => {
    assert.equal(plan({}).mode, 'native');
    assert.equal(plan(vmRequest()).mode, 'vm');
    assert.equal(plan(vmRequest({ vm: false }), MAC_ARM).mode, 'vm');
  });
});

describe('guest arch', () => {
  test('defaults to the host arch', () => {
    assert.equal(plan({}).guestArch, 'x86_64');
    assert.equal(plan({}, LINUX_ARM).guestArch, 'aarch64');
  });

  test('native x86_64 is not cross-compiled', () => {
    const resolved = plan({});
    assert.equal(resolved.kernel.crossCompile, undefined);
    assert.deepEqual(
      { makeArch: resolved.kernel.makeArch, makeTarget: resolved.kernel.makeTarget, artifact: resolved.kernel.artifact, format: resolved.kernel.artifactFormat },
      { makeArch: 'x86_64', makeTarget: 'vmlinux', artifact: 'vmlinux', format: 'elf' },
    );
  });

  test('aarch64 on x86_64 cross-compiles', () => {
    const resolved = plan({ arch: 'aarch64' });
    assert.equal(resolved.kernel.crossCompile, 'aarch64-linux-gnu-');
    assert.deepEqual(
      { makeArch: resolved.kernel.makeArch, makeTarget: resolved.kernel.makeTarget, artifact: resolved.kernel.artifact, format: resolved.kernel.artifactFormat },
      { makeArch: 'arm64', makeTarget: 'Image', artifact: 'arch/arm64/boot/Image', format: 'raw' },
    );
  });

  test('x86_64 on aarch64 cross-compiles', () => {
    assert.equal(plan({ arch: 'x86_64' }, LINUX_ARM).kernel.crossCompile, 'x86_64-linux-gnu-');
  });

  test('CROSS_COMPILE replaces the prefix', () => {
    assert.equal(plan({ arch: 'aarch64' }, LINUX_X86, { ...ENV, CROSS_COMPILE: 'aarch64-none-linux-gnu-' }).kernel.crossCompile, 'aarch64-none-linux-gnu-');
  });

  test('host CPU without a guest arch', () => {
    const error = assertRejects(() => plan({}, { ...LINUX_X86, cpu: 'riscv64' }), /^Unsupported guest architecture: riscv64$/);
    assert.match(error.hint ?? '', /--arch with one of: x86_64, aarch64/);
  });

  test('unknown --arch', () => {
    assertRejects(() => plan({ arch: 'mips' }), /^Unsupported guest architecture: mips$/);
  });

  test('VM for another arch on linux', () => {
    const error = assertRejects(() => plan(vmRequest({ arch: 'aarch64' })), /^A builder VM builds for the host's own architecture \(x86_64\), not aarch64\.$/);
    assert.match(error.hint ?? '', /Drop --vm to cross-compile on the host/);
  });

  test('VM for another arch on a Mac', () => {
    const error = assertRejects(() => plan(vmRequest({ arch: 'x86_64' }), MAC_ARM), /builds for the host's own architecture \(aarch64\), not x86_64/);
    assert.equal(error.hint, 'Drop --arch.');
  });
});

describe('library names', () => {
  test('linux shared object', () => {
    const resolved = plan({});
    assert.equal(resolved.targetOs, 'linux');
    assert.deepEqual(resolved.library.names, {
      fileName: 'libkrunfw.so.5.0.0',
      soname: 'libkrunfw.so.5',
      links: [['libkrunfw.so.5', 'libkrunfw.so.5.0.0'], ['libkrunfw.so', 'libkrunfw.so.5']],
    });
  });

  test('darwin dylib', () => {
    const resolved = plan(vmRequest(), MAC_ARM);
    assert.equal(resolved.targetOs, 'darwin');
    assert.deepEqual(resolved.library.names, {
      fileName: 'libkrunfw.5.dylib',
      soname: 'libkrunfw.5.dylib',
      links: [['libkrunfw.dylib', 'libkrunfw.5.dylib']],
    });
  });

  test('linux VM build still makes a .so', () => {
    assert.equal(plan(vmRequest()).library.names.fileName, 'libkrunfw.so.5.0.0');
  });
});

describe('builder VM plan', () => {
  test('default size: all CPUs, half the memory', () => {
    assert.deepEqual(defaultVmSize({ ...MAC_ARM, cpus: 8, memoryMiB: 16384 }), { cpus: 8, memoryMiB: 8192 });
  });

  test('default memory at least 2048 MiB', () => {
    assert.equal(defaultVmSize({ ...MAC_ARM, memoryMiB: 3000 }).memoryMiB, 2048);
  });

  test('default memory at most 16384 MiB', () => {
    assert.equal(defaultVmSize({ ...MAC_ARM, memoryMiB: 131072 }).memoryMiB, 16384);
  });

  test('VM fields from the request', () => {
    const vm = plan(vmRequest({ cpus: 3, memoryMiB: 4096, keepVm: true }), MAC_ARM).vm!;
    assert.equal(vm.name, vmNameFor(WORK));
    assert.equal(vm.cpus, 3);
    assert.equal(vm.memoryMiB, 4096);
    assert.equal(vm.keep, true);
    assert.equal(vm.builder, builder);
    assert.equal(vm.krunvm, '/opt/homebrew/bin/krunvm');
    assert.equal(vm.recordFile, join(WORK, '.krunfw', 'vm', `${vm.name}.json`));
  });

  test('VM defaults from the host', () => {
    const resolved = plan(vmRequest(), MAC_ARM);
    assert.equal(resolved.vm!.cpus, 10);
    assert.equal(resolved.vm!.memoryMiB, 12288);
    assert.equal(resolved.vm!.keep, false);
    assert.equal(resolved.jobs, 10, 'make runs one job per VM CPU');
  });

  test('VM state directory apart from native', () => {
    assert.equal(plan(vmRequest()).paths.stateDirectory, join(WORK, '.krunfw', 'vm-x86_64-generic'));
    assert.equal(plan({}).paths.stateDirectory, join(WORK, '.krunfw', 'x86_64-generic'));
  });

  test('native plan has no VM', () => {
    assert.equal(plan({}).vm, undefined);
  });

  test('VM name from the work directory', () => {
    assert.match(vmNameFor(WORK), /^krunfw-[0-9a-f]{12}$/);
    assert.equal(vmNameFor(WORK), vmNameFor(WORK));
    assert.notEqual(vmNameFor(WORK), vmNameFor(`${WORK}-other`));
  });

  test('work directory with colon rejected for a VM', () => {
    assertRejects(() => plan(vmRequest({ workDirectory: '/tmp/a:b' })), /^The work directory's path contains ':', which krunvm cannot map into a VM: \/tmp\/a:b$/);
  });

  test('work directory with colon fine natively', () => {
    assert.equal(plan({ workDirectory: '/tmp/a:b' }).paths.workDirectory, '/tmp/a:b');
  });

  test('invalid --cpus', () => {
    assertRejects(() => plan(vmRequest({ cpus: 0 })), /^Invalid --cpus value: 0$/);
  });

  test('invalid --mem', () => {
    const error = assertRejects(() => plan(vmRequest({ memoryMiB: 256 })), /^Invalid --mem value: 256$/);
    assert.match(error.hint ?? '', /at least 512/);
  });
});

describe('option validation', () => {
  test('--max-cpus below 2', () => {
    assertRejects(() => plan({ maxCpus: 1 }), /^Invalid --max-cpus value: 1$/);
  });

  test('--max-cpus not whole', () => {
    assertRejects(() => plan({ maxCpus: 2.5 }), /^Invalid --max-cpus value: 2\.5$/);
  });

  test('--max-cpus accepted', () => {
    assert.equal(plan({ maxCpus: 8 }).maxCpus, 8);
  });

  test('--jobs 0', () => {
    assertRejects(() => plan({ jobs: 0 }), /^Invalid --jobs value: 0$/);
  });

  test('--jobs default is the host CPU count', () => {
    assert.equal(plan({}).jobs, LINUX_X86.cpus);
  });

  test('--kernel-sha256 not hex', () => {
    assertRejects(() => plan({ kernelSha256: 'abc123' }), /^Invalid --kernel-sha256 value: abc123$/);
  });

  test('--kernel-sha256 upper case accepted', () => {
    const digest = 'AB'.repeat(32);
    const source = plan({ kernelSha256: digest }).kernelSource;
    assert.equal(source.expectedSha256, digest.toLowerCase());
  });

  test('--kernel-version not a release', () => {
    assertRejects(() => plan({ kernelTarball: undefined, kernelVersion: 'latest' }), /^Invalid kernel version: latest$/);
  });

  test('--kernel-version release candidate', () => {
    const error = assertRejects(() => plan({ kernelTarball: undefined, kernelVersion: '6.13-rc1' }), /6\.13-rc1/);
    assert.match(error.hint ?? '', /Release candidates are not published as tarballs/);
  });

  test('--kernel-version releases', () => {
    for (const version of ['6.12.44', '6.13']) {
      const source = plan({ kernelTarball: undefined, kernelVersion: version }).kernelSource;
      assert.equal(source.kind, 'download');
      assert.equal(source.kind === 'download' && source.version, version);
    }
  });

  test('download URL from mirror', () => {
    const source = plan({ kernelTarball: undefined, kernelVersion: '6.12.44', mirror: 'http://127.0.0.1:8080/pub/' }).kernelSource;
    assert.equal(source.kind === 'download' && source.url, 'http://127.0.0.1:8080/pub/v6.x/linux-6.12.44.tar.xz');
  });

  test('tarball resolved against the current directory', () => {
    const source = plan({ kernelTarball: 'src/linux.tar.xz' }).kernelSource;
    assert.equal(source.kind === 'tarball' && source.path, join(process.cwd(), 'src', 'linux.tar.xz'));
  });
});
