// SPDX-License-Identifier: LGPL-2.1-only
//
// The generated Homebrew formula: Ruby syntax (Debian's ruby), its fields,
// and its install and test steps run outside Homebrew by a small Ruby
// harness that provides the parts of Homebrew's formula API it uses.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { execa } from 'execa';
import { runCli } from './support/cli.js';
import { sharedBuild } from './support/shared-build.js';

const SHA256 = 'a'.repeat(64);

/**
 * Stands in for Homebrew: loads a formula, records its fields, and runs its
 * install step in the build directory and its test block in the test
 * directory. Arguments: MODE (fields or run), FORMULA, BUILD_DIR, PREFIX, TEST_DIR.
 */
const HARNESS = `
require "json"
require "pathname"

MODE, FORMULA_FILE, BUILD_DIRECTORY, PREFIX, TEST_DIRECTORY = ARGV

class Formula
  NodeFormula = Struct.new(:opt_bin)

  class << self
    attr_reader :test_block

    def fields
      @fields ||= { "depends_on" => [] }
    end

    %w[desc homepage url version sha256 license].each do |name|
      define_method(name) { |value| fields[name] = value }
    end

    def depends_on(value)
      fields["depends_on"] << value
    end

    def test(&block)
      @test_block = block
    end

    def [](name)
      raise "unexpected formula #{name}" unless name == "node"

      NodeFormula.new(Pathname(File.dirname(ENV.fetch("NODE"))))
    end
  end

  def prefix
    Pathname(PREFIX)
  end

  def opt_prefix
    prefix
  end

  def lib
    prefix/"lib"
  end

  def testpath
    Pathname(TEST_DIRECTORY)
  end

  def system(*args)
    Kernel.system(*args.map(&:to_s)) || raise("command failed: #{args.join(" ")}")
  end

  def shell_output(command)
    output = \`#{command}\`
    raise "command failed: #{command}" unless $?.success?

    output
  end

  def assert_equal(expected, actual)
    raise "expected #{expected.inspect}, got #{actual.inspect}" unless expected == actual
  end

  def run_test
    instance_eval(&self.class.test_block)
  end
end

def ENV.cc
  fetch("CC", "cc")
end

load FORMULA_FILE
if MODE == "run"
  formula = Libkrunfw.new
  Dir.chdir(BUILD_DIRECTORY) { formula.install }
  Dir.chdir(TEST_DIRECTORY) { formula.run_test }
end
puts JSON.generate(Libkrunfw.fields)
`;

describe('formula command', () => {
  let directory: string;
  let harness: string;

  before(async () => {
    directory = await mkdtemp(join(tmpdir(), 'krunfw-formula-'));
    harness = join(directory, 'harness.rb');
    await writeFile(harness, HARNESS);
  });

  after(async () => {
    if (directory) await rm(directory, { recursive: true, force: true });
  });

  async function writeFormula(name: string, args: string[]): Promise<string> {
    const result = await runCli(['formula', ...args]);
    assert.equal(result.exitCode, 0, result.stderr);
    const path = join(directory, `${name}.rb`);
    await writeFile(path, result.stdout);
    return path;
  }

  async function fields(formula: string): Promise<Record<string, unknown>> {
    const result = await execa('ruby', [harness, 'fields', formula]);
    return JSON.parse(result.stdout) as Record<string, unknown>;
  }

  test('formula passes ruby -c', async () => {
    const formula = await writeFormula('syntax', ['--url', 'https://example.org/v5.0.0/libkrunfw-prebuilt-aarch64.tar.gz', '--sha256', SHA256]);
    const result = await execa('ruby', ['-c', formula]);
    assert.equal(result.stdout.trim(), 'Syntax OK');
  });

  test('formula declares license, arch and source', async () => {
    const url = 'https://example.org/releases/libkrunfw-prebuilt-aarch64.tar.gz';
    const formula = await writeFormula('fields', ['--url', url, '--sha256', SHA256, '--version', '5.0.0']);
    const text = await readFile(formula, 'utf8');
    assert.match(text, /^class Libkrunfw < Formula$/m);
    assert.match(text, /krunfw_get_version\(\)/);
    const declared = await fields(formula);
    assert.deepEqual(declared.license, { all_of: ['GPL-2.0-only', 'LGPL-2.1-only'] });
    assert.deepEqual(declared.depends_on, [{ node: 'build' }, { arch: 'arm64' }]);
    assert.equal(declared.url, url);
    assert.equal(declared.sha256, SHA256);
    assert.equal(declared.version, '5.0.0');
  });

  test('formula reads version from URL', async () => {
    const formula = await writeFormula('url-version', ['--url', 'https://example.org/v5.1.2/libkrunfw-prebuilt-aarch64.tar.gz', '--sha256', SHA256]);
    // Homebrew reads it from the URL too and rejects a version line that repeats it.
    assert.doesNotMatch(await readFile(formula, 'utf8'), /^\s+version /m);
  });

  test('formula escapes Ruby string syntax', async () => {
    const url = 'https://example.org/v1.2.3/a"b\\#{system("false")}.tar.gz';
    const formula = await writeFormula('escaped', ['--url', url, '--sha256', SHA256]);
    await execa('ruby', ['-c', formula]);
    assert.equal((await fields(formula)).url, url);
  });

  test('formula rejects invalid sha256', async () => {
    const result = await runCli(['formula', '--url', 'https://example.org/v5.0.0/x.tar.gz', '--sha256', 'abc']);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /Invalid --sha256 value: abc/);
  });

  test('formula without version fails', async () => {
    const result = await runCli(['formula', '--url', 'https://example.org/libkrunfw-prebuilt-aarch64.tar.gz', '--sha256', SHA256]);
    assert.equal(result.exitCode, 1);
    assert.match(result.stderr, /contains no version number/);
    assert.match(result.stderr, /--version/);
  });

  test('formula install and test steps succeed', async () => {
    const build = await sharedBuild('x86_64');
    const archives = join(directory, 'archives');
    const dist = await runCli(['dist', '--json', '--output-dir', join(build.provenance, '..'), '--archive-dir', archives]);
    assert.equal(dist.exitCode, 0, dist.stderr);
    const prebuilt = JSON.parse(dist.stdout).prebuilt as { path: string; sha256: string; directory: string };
    await execa('tar', ['-xzf', prebuilt.path, '-C', archives]);

    const formula = await writeFormula('install', ['--url', `file://${prebuilt.path}`, '--sha256', prebuilt.sha256, '--version', '5.0.0']);
    const log = join(directory, 'cc.log');
    const wrapper = join(directory, 'cc-wrapper');
    await writeFile(wrapper, `#!/bin/sh\nprintf '%s\\n' "$*" >> '${log}'\nexec cc "$@"\n`, { mode: 0o755 });
    const prefix = join(directory, 'Cellar', 'libkrunfw', '5.0.0');
    const testDirectory = join(directory, 'testpath');
    await mkdir(testDirectory);

    const result = await execa('ruby', [harness, 'run', formula, join(archives, prebuilt.directory), prefix, testDirectory], {
      env: { CC: wrapper, NODE: process.execPath, NO_COLOR: '1' },
      reject: false,
    });
    assert.equal(result.exitCode, 0, `${result.stdout}\n${result.stderr}`);
    assert.equal(await readlink(join(prefix, 'lib', 'libkrunfw.so')), 'libkrunfw.so.5');
    const calls = await readFile(log, 'utf8');
    assert.match(calls, /kernel\.c/, 'the install step did not compile with CC');
    assert.match(calls, /version\.c .*-lkrunfw/, 'the test step did not compile with CC');
  });
});
