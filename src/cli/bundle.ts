// SPDX-License-Identifier: LGPL-2.1-only
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { renderKernelSource } from '../bundle/c-source.js';
import { bundleElfKernel, bundleRaw } from '../bundle/layout.js';
import { KrunfwError } from '../errors.js';
import { writeFileAtomic } from '../files.js';
import { sha256 } from '../hash.js';
import { type GlobalOptions, printJson, runCommand } from './output.js';

interface BundleArguments extends GlobalOptions {
  kernel: string;
  output: string;
  format: 'auto' | 'elf' | 'raw';
  kernelVersion: string;
  loadAddress: string;
}

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

export function bundleCommand(yargs: Argv): Argv {
  return yargs.command<BundleArguments>(
    'bundle <kernel>',
    'Turn a vmlinux (ELF) or an arm64 Image (raw) into kernel.c',
    (command) =>
      command
        .positional('kernel', { type: 'string', demandOption: true, description: 'vmlinux or arch/arm64/boot/Image' })
        .option('output', { alias: 'o', type: 'string', default: 'kernel.c', description: 'C file to write' })
        .option('format', { choices: ['auto', 'elf', 'raw'] as const, default: 'auto' as const, description: 'Bundle type; auto picks elf for an ELF file, raw otherwise' })
        .option('kernel-version', { type: 'string', default: 'unknown', description: 'Kernel version named in the C file\'s header' })
        .option('load-address', { type: 'string', default: '0x80000000', description: 'Guest load and entry address of a raw bundle' }),
    async (argv) => {
      await runCommand(argv, async () => {
        const path = resolve(argv.kernel);
        let data: Buffer;
        try {
          data = await readFile(path);
        } catch (error) {
          throw new KrunfwError(`Kernel file not found: ${path}`, { cause: error });
        }
        const isElf = data.subarray(0, 4).equals(ELF_MAGIC);
        let format = argv.format;
        if (format === 'auto') format = isElf ? 'elf' : 'raw';
        let address: bigint;
        try {
          address = BigInt(argv.loadAddress);
        } catch {
          throw new KrunfwError(`Invalid --load-address value: ${argv.loadAddress}`, { hint: 'Pass a number such as 0x80000000.' });
        }
        const bundle = format === 'elf' ? bundleElfKernel(data, path) : bundleRaw(data, { loadAddress: address, entryAddress: address });
        const output = resolve(argv.output);
        await writeFileAtomic(output, renderKernelSource(bundle, { kernelVersion: argv.kernelVersion }));
        const result = {
          output,
          format,
          size: bundle.bytes.length,
          bundleSha256: sha256(bundle.bytes),
          loadAddress: bundle.loadAddress,
          entryAddress: bundle.entryAddress,
          /** The artifact bytes the bundle starts with, for a self-test. */
          firstSegment: bundle.firstSegment,
        };
        if (argv.json) printJson(result);
        else process.stderr.write(`Wrote ${output}: ${format} bundle of ${bundle.bytes.length} bytes, load 0x${bundle.loadAddress.toString(16)}, entry 0x${bundle.entryAddress.toString(16)}\n`);
      });
    },
  );
}
