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
 * socket floods hold thousands of connections, and runSpeed times the engines.
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
  'test/docs/isolation.test.ts',
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
/**
 * Files that change what the process shares with the next file in its worker (process.env,
 * process.on handlers, vi.mock, fake timers, the umask or uid): each runs in a fresh worker
 * process (isolate: true). Every other file shares its worker with the files before it
 * (isolate: false): a fresh process per file cost ~0.6 s of CPU (vitest's runner and the
 * file's imports, the AWS SDK's among them, loaded again), measured on test/kms-net (33 files:
 * 118 s of CPU isolated, 99 s shared, every test passing both ways), and the suite is CPU-bound.
 * A file that starts something (a daemon, a mount, a server) stops it in its own afterAll, as
 * every file here does, so what a file leaves is only what its modules cache. A file that
 * begins to change process-wide state goes in this list (test/docs/isolation.test.ts checks it).
 */
export const ISOLATED = [
  'test/daemon/answer-progress.test.ts',
  'test/e2e/daemon-stop.test.ts',
  'test/e2e/volume-state.test.ts',
  'test/fleet/aws-key-service.test.ts',
  'test/fleet/short-grants.test.ts',
  'test/fleet/start-without-kms.test.ts',
  'test/ops/hardening.test.ts',
  'test/ops/systemd.test.ts',
  'test/snapshot/cow-daemon.test.ts',
  'test/snapshot/ebs-direct-sdk.test.ts',
  'test/snapshot/restore.test.ts',
  'test/snapshot/s3-crash-points.test.ts',
  'test/snapshot/s3-down-start.test.ts',
  'test/snapshot/s3-restore.test.ts',
  'test/snapshot/s3-settings.test.ts',
  'test/snapshot/s3-store.test.ts',
  'test/snapshot/snapshot-detached.test.ts',
  'test/snapshot/snapshot-no-hold.test.ts',
  'test/volume/key-service-reencrypt.test.ts',
];
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
      { extends: true, test: { name: 'unit', include: UNIT, isolate: false } },
      { extends: true, test: { name: 'shared', include: ['test/**/*.test.ts'], exclude: [...UNIT, ...SERIAL, ...ISOLATED], isolate: false } },
      { extends: true, test: { name: 'isolated', include: ISOLATED } },
      // fileParallelism: false gives this project one worker; vitest runs such a
      // project's files after every other group, each on its own.
      { extends: true, test: { name: 'serial', include: SERIAL, fileParallelism: false } },
    ],
  },
});
