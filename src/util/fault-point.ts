/**
 * Test-only crash points. `faultPoint('modify.after-header')` kills this
 * process with SIGKILL when the environment variable `EBSD_TEST_FAULT`
 * names that point (a comma-separated list may name several), so the e2e
 * tests can crash the daemon between two steps a signal from outside cannot
 * hit reliably. Without the variable it does nothing: no production path
 * can reach the kill.
 *
 * The names in use, each beside the step it follows:
 *   attach.after-grant      volume-manager attach: CreateGrant returned, nothing recorded yet
 *   detach.after-retire     detach: the grant is retired, the catalog still says in-use
 *   op-grant.after-create   op-grants.ts: a create, restore or copy step's grant made, not yet used nor retired
 *   modify.after-header     modify: the LUKS2 header says the new size, the catalog the old
 *   gc.after-manifest-delete  snapshot gc: the manifest is gone, its blocks are not yet
 *   snapshot.after-pending  snapshot create: the pending manifest is written, no point in time yet
 *   snapshot.after-blocks   snapshot create: every block is durable, the manifest still says pending
 *   snapshot.after-completed-event  snapshot create: SnapshotCompleted is in the audit log, the manifest still says pending
 *   snapshot-store.after-pack-sync  directory store batch: the pack is durable, its index not yet written
 *
 * faultHang's points, where the step waits for ever instead:
 *   stop.drain               daemon stop: the FUSE drain never ends (src/daemon/stop-deadline.ts bounds it)
 */
export function faultPoint(name: string): void {
  const want = process.env.EBSD_TEST_FAULT;
  if (!want) return;
  if (!want.split(',').includes(name)) return;
  process.kill(process.pid, 'SIGKILL');
}

/**
 * Test-only hang: when `EBSD_TEST_FAULT` names the point, a promise that never settles and a
 * referenced timer holding the event loop, as a step awaiting a peer that never answers would;
 * otherwise resolved at once.
 */
export function faultHang(name: string): Promise<void> {
  const want = process.env.EBSD_TEST_FAULT;
  if (!want || !want.split(',').includes(name)) return Promise.resolve();
  setInterval(() => {}, 1 << 30);
  return new Promise<void>(() => {});
}
