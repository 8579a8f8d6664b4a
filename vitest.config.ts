import { defineConfig } from 'vitest/config';

// Real-component tests (FUSE mounts, loop devices, daemons) share the kernel's
// resources, so files run one at a time; 2 cores is the budget.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
  },
});
