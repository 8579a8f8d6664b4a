import { defineConfig } from 'vitest/config';

/**
 * Real-component tests (FUSE mounts, loop devices, network namespaces, daemons)
 * share the kernel, so each file names what it creates uniquely (mkdtemp
 * directories, port 0, namespaces and links carrying the pid) and cleans it up;
 * that lets files run WORKERS at a time (docs/architecture.md §10). Most of
 * their time is spent waiting on daemons, mounts and child processes, so more
 * workers than cores shorten the run, a little: on this 2-core machine, with
 * 194 files, 2 workers took 622 s and 3 took 568 s and 618 s (two runs), every
 * test passing in all three; the files' own times grow by a third or more with
 * 3, so the cores are nearly busy and more would add nothing. Since then set-up
 * goes to the control socket rather than a CLI process per call (Env.api), and
 * the daemon starts without the AWS SDK: 344 s with 3 workers, same files.
 * EBSD_TEST_WORKERS overrides it.
 *
 * SERIAL files run one at a time, after the others, with nothing beside them:
 * the tmpfs run starts a vitest of its own (with its own workers), the control
 * socket floods hold thousands of connections (as the KMS listener's fair-share
 * test does, reconnecting each as it is cut), and runSpeed times the engines.
 */
const WORKERS = Number(process.env.EBSD_TEST_WORKERS ?? 3);
/**
 * UNIT files test code in this process only (no daemon, mount, child process,
 * environment variable or module-level state another file depends on): they
 * share worker processes (isolate: false), which saves a process start and
 * the module graph's load per file.
 */
const UNIT = [
  'test/cli/kms-args.test.ts',
  'test/crypto/xts-cross.test.ts',
  'test/crypto/xts-engine.test.ts',
  'test/crypto/xts-native.test.ts',
  'test/crypto/xts-node.test.ts',
  'test/crypto/xts-reference.test.ts',
  'test/crypto/xts-wipe.test.ts',
  'test/daemon/connection-guard.test.ts',
  'test/daemon/ec2-authz.test.ts',
  'test/daemon/ec2-requests.test.ts',
  'test/docs/citations.test.ts',
  'test/kms-authz/conditions.test.ts',
  'test/kms-authz/core-integration.test.ts',
  'test/kms-authz/core-refusal-audit.test.ts',
  'test/kms-authz/decision-table.test.ts',
  'test/kms-authz/grants.test.ts',
  'test/kms-authz/identities.test.ts',
  'test/kms-authz/parser-findings.test.ts',
  'test/kms-authz/policy-document.test.ts',
  'test/kms-authz/wildcard.test.ts',
  'test/kms-net/amz-date.test.ts',
  'test/kms-net/sigv4-fast-paths.test.ts',
  'test/kms-net/sigv4-vectors.test.ts',
  'test/kms-net/strict-base64.test.ts',
  'test/kms-net/sts-sessions.test.ts',
  'test/kms-net/trust-conditions.test.ts',
  'test/kms/audit-event.test.ts',
  'test/kms/blob-parse.test.ts',
  'test/kms/drbg.test.ts',
  'test/kms/kdf.test.ts',
  'test/kms/refusal-aggregator.test.ts',
  'test/kms/authorizer-seam.test.ts',
  'test/snapshot/manifest-check.test.ts',
  'test/snapshot/snapshot-cli-args.test.ts',
  'test/snapshot/source-snapshot-authz.test.ts',
  'test/snapshot/ebs-direct-key-cache.test.ts',
  'test/volume/resume-retry.test.ts',
  'test/util/strict-json.test.ts',
  'test/util/util.test.ts',
  'test/util/logger-redact.test.ts',
  'test/util/atomic-write-temps.test.ts',
  'test/util/retry-set.test.ts',
];
const SERIAL = [
  'test/volume/tmpfs.test.ts',
  'test/e2e/bounds.test.ts',
  'test/crypto/speed.test.ts',
  'test/fleet/kms-fair-share.test.ts',
];

export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    globalSetup: ['test/global-setup.ts'],
    maxWorkers: WORKERS,
    projects: [
      { extends: true, test: { name: 'unit', include: UNIT, isolate: false } },
      { extends: true, test: { name: 'shared', include: ['test/**/*.test.ts'], exclude: [...UNIT, ...SERIAL] } },
      // fileParallelism: false gives this project one worker; vitest runs such a
      // project's files after every other group, each on its own.
      { extends: true, test: { name: 'serial', include: SERIAL, fileParallelism: false } },
    ],
  },
});
