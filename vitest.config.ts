import { defineConfig } from 'vitest/config';

/**
 * Real-component tests (FUSE mounts, loop devices, network namespaces, daemons)
 * share the kernel, so each file names what it creates uniquely (mkdtemp
 * directories, port 0, namespaces and links carrying the pid) and cleans it up;
 * that lets files run WORKERS at a time (docs/architecture.md §10). Most of
 * their time is spent waiting on daemons, mounts and child processes, so two
 * workers on two cores shorten the run without starving anyone.
 *
 * SERIAL files run one at a time, after the others, with nothing beside them:
 * the tmpfs run starts a vitest of its own (with its own workers), the control
 * socket floods hold thousands of connections, and runSpeed times the engines.
 */
const WORKERS = Number(process.env.EBSD_TEST_WORKERS ?? 2);
const SERIAL = [
  'test/volume/tmpfs.test.ts',
  'test/e2e/bounds.test.ts',
  'test/crypto/speed.test.ts',
];

export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    globalSetup: ['test/global-setup.ts'],
    maxWorkers: WORKERS,
    projects: [
      { extends: true, test: { name: 'shared', include: ['test/**/*.test.ts'], exclude: SERIAL } },
      // fileParallelism: false gives this project one worker; vitest runs such a
      // project's files after every other group, each on its own.
      { extends: true, test: { name: 'serial', include: SERIAL, fileParallelism: false } },
    ],
  },
});
