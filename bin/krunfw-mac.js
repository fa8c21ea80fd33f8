#!/usr/bin/env node
// SPDX-License-Identifier: LGPL-2.1-only
import { main } from '../dist/src/cli/main.js';

await main(process.argv);
