// SPDX-License-Identifier: LGPL-2.1-only
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { test } from 'node:test';
import { REPOSITORY } from './support/cli.js';

async function filesUnder(directory: string): Promise<string[]> {
  const entries = await readdir(directory, { withFileTypes: true, recursive: true }).catch(() => []);
  return entries.filter((entry) => entry.isFile()).map((entry) => join(entry.parentPath ?? entry.path, entry.name));
}

const EXPECTED: Array<{ directory: string; license: string }> = [
  { directory: 'src', license: 'LGPL-2.1-only' },
  { directory: 'bin', license: 'LGPL-2.1-only' },
  { directory: 'patches', license: 'GPL-2.0-only' },
  { directory: 'config-generic', license: 'GPL-2.0-only' },
  { directory: 'config-sev', license: 'GPL-2.0-only' },
];

for (const { directory, license } of EXPECTED) {
  test(`every file in ${directory}/ names ${license}`, async () => {
    const files = await filesUnder(join(REPOSITORY, directory));
    for (const file of files) {
      const text = await readFile(file, 'utf8');
      // Patches carry it in their description, after the mail headers; other files at the top.
      const head = file.endsWith('.patch') ? text.split('\n---\n')[0]! : text.split('\n').slice(0, 5).join('\n');
      assert.match(head, new RegExp(`SPDX-License-Identifier: ${license}\\b`), `${relative(REPOSITORY, file)} has no SPDX line for ${license}`);
    }
  });
}

test('license texts are the full standard texts', async () => {
  const lgpl = await readFile(join(REPOSITORY, 'LICENSES', 'LGPL-2.1-only.txt'), 'utf8');
  const gpl = await readFile(join(REPOSITORY, 'LICENSES', 'GPL-2.0-only.txt'), 'utf8');
  assert.match(lgpl, /GNU LESSER GENERAL PUBLIC LICENSE\s+Version 2\.1, February 1999/);
  assert.match(lgpl, /END OF TERMS AND CONDITIONS/);
  assert.match(gpl, /GNU GENERAL PUBLIC LICENSE\s+Version 2, June 1991/);
  assert.match(gpl, /END OF TERMS AND CONDITIONS/);
});

test('package.json declares LGPL-2.1-only', async () => {
  const manifest = JSON.parse(await readFile(join(REPOSITORY, 'package.json'), 'utf8')) as { license: string };
  assert.equal(manifest.license, 'LGPL-2.1-only');
});
