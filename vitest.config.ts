import os from 'node:os';
import path from 'node:path';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    fileParallelism: true,
    maxWorkers: 2,
    // Every CLI the tests start keeps its tree cache here, not in the user's ~/.cache.
    env: { CAIRN_CACHE_DIR: path.join(os.tmpdir(), 'cairn-test-cache') },
  },
});
