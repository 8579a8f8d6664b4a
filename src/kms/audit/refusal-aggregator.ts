/**
 * Repeated refusals of one caller become one event with a count, so a flood
 * of refused requests costs a bounded number of audit bytes per window.
 *
 * The first `burst` refusals (default 5) of a (caller, operation, reason)
 * key in a window are written at once, exactly as unaggregated events, so an
 * occasional refusal reads as CloudTrail would record it. Further repeats
 * within the window are only counted; when the window closes (or on `flush()`: seal,
 * close), one more event records them, carrying
 * `additionalEventData.aggregated = { count, firstTime, lastTime, windowSeconds }`
 * in the way CloudTrail carries service-specific extras (CloudTrail record
 * contents, `additionalEventData`). `count` is the number of refusals that
 * event stands for, beyond those already written one by one.
 *
 * Keys are budgeted by whose refusal it is (`RefusalParty`), so that a flood
 * of refusals nobody can vouch for cannot take the keys a known caller's
 * refusal needs: an unauthenticated client can make a new key with every
 * request (a new made-up access key id each time), and with one table for
 * all, a real key's or a principal's refusal would then be only a count in
 * an anonymous overflow row.
 *
 * - Unauthenticated refusals (no party: no access key id, or one the daemon
 *   does not hold; a session key whose token did not authenticate) share
 *   `maxKeys` keys a window; refusals under further keys are folded into one
 *   overflow row (eventName `RefusalsOverflow`).
 * - A held access key whose request did not verify (`{ kind: 'access-key' }`:
 *   the key is real, the request not proven its holder's) has
 *   `maxKeysPerAccessKey` keys of its own, then an overflow row of its own,
 *   which names it (its first folded refusal's record, renamed).
 * - An authenticated principal's refusal (`{ kind: 'principal' }`: a denial
 *   after SigV4 verified, or of a local uid, which the kernel vouches for)
 *   has `maxKeysPerPrincipal` keys of its own, then its own overflow row. The
 *   party is the identity behind a session (src/kms/caller-party.ts): the
 *   sessions one user mints share that user's keys, or minting N sessions
 *   would give N budgets.
 *
 * Parties are what the daemon holds (access keys, IAM principals, mapped
 * local users), which a caller without credentials cannot multiply beyond
 * what exists. As a backstop for memory, each kind of party holds at most
 * `maxPartyRows` rows a window, past which that kind's new keys fold into an
 * overflow row of the kind's own: access key ids are no secret (they are in
 * audit records), so forged signatures under a hundred known ids could fill
 * a shared backstop, and must not push a principal's denial into it. So per
 * window the events written stay at most (burst + 1) x (maxKeys + 2 x
 * maxPartyRows) + 3, and under any flood of unauthenticated refusals
 * (burst + 1) x maxKeys + 1 of theirs, whatever is sent.
 */
import { randomUUID } from 'node:crypto';

export interface RefusalAggregatorOptions {
  windowMs?: number;
  maxKeys?: number;
  /** Refusals per key and window written one by one before counting starts. */
  burst?: number;
  clock?: () => number;
  /** Keys one held access key (RefusalParty `access-key`) has per window before its own overflow row. */
  maxKeysPerAccessKey?: number;
  /** Keys one principal (RefusalParty `principal`) has per window before its own overflow row. */
  maxKeysPerPrincipal?: number;
  /** Rows (keys and their overflow rows) of all parties of one kind together per window: a backstop for memory. */
  maxPartyRows?: number;
  /** Write one event (the audit log's droppable path). */
  write: (event: Record<string, unknown>) => Promise<void>;
}

interface Row {
  /** The newest refused event of this key: the summary repeats its fields. */
  last: Record<string, unknown>;
  count: number;
  /** Written one by one so far in this window. */
  written: number;
  firstTime: number;
  lastTime: number;
}

export const DEFAULT_REFUSAL_WINDOW_MS = 10_000;
export const DEFAULT_REFUSAL_KEYS = 64;
export const DEFAULT_REFUSAL_BURST = 5;
export const DEFAULT_REFUSAL_KEYS_PER_ACCESS_KEY = 8;
export const DEFAULT_REFUSAL_KEYS_PER_PRINCIPAL = 32;
export const DEFAULT_REFUSAL_PARTY_ROWS = 1024;
/** Every overflow row's key starts so: the unauthenticated one, a party's (`${OVERFLOW}\0${party}`) and the parties' backstop. */
const OVERFLOW = '\0overflow';
/** The backstop's overflow row of a kind of party. */
const overflowParties = (kind: RefusalParty['kind']): string => `\0overflow\0\0parties\0${kind}`;

/**
 * Whose refusal it is, for the key budgets; none: unauthenticated (the shared budget).
 * `access-key`: the access key id (held by the daemon: SigV4Error.keyHeld). `principal`: the
 * caller's party (callerParty: its ARN, or a session's origin), or `uid:N` for a local user.
 */
export type RefusalParty = { kind: 'access-key'; id: string } | { kind: 'principal'; id: string };

/** A party's use of its budget this window: its keys (its overflow row not counted). */
interface PartyUse { keys: number }

export class RefusalAggregator {
  private rows = new Map<string, Row>();
  /** This window's parties, and their rows together (keys and overflow rows). */
  private parties = new Map<string, PartyUse>();
  private partyRows = { 'access-key': 0, principal: 0 };
  /** Unauthenticated keys this window (the shared budget). */
  private sharedKeys = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly windowMs: number;
  private readonly maxKeys: number;
  private readonly maxKeysPerAccessKey: number;
  private readonly maxKeysPerPrincipal: number;
  private readonly maxPartyRows: number;
  private readonly burst: number;
  private readonly clock: () => number;

  constructor(private readonly o: RefusalAggregatorOptions) {
    this.windowMs = o.windowMs ?? DEFAULT_REFUSAL_WINDOW_MS;
    this.maxKeys = o.maxKeys ?? DEFAULT_REFUSAL_KEYS;
    this.maxKeysPerAccessKey = o.maxKeysPerAccessKey ?? DEFAULT_REFUSAL_KEYS_PER_ACCESS_KEY;
    this.maxKeysPerPrincipal = o.maxKeysPerPrincipal ?? DEFAULT_REFUSAL_KEYS_PER_PRINCIPAL;
    this.maxPartyRows = o.maxPartyRows ?? DEFAULT_REFUSAL_PARTY_ROWS;
    this.burst = o.burst ?? DEFAULT_REFUSAL_BURST;
    this.clock = o.clock ?? Date.now;
  }

  /**
   * Record one refusal of `party` (none: unauthenticated). Resolves when its event is written (within
   * the burst) or counted (a repeat past it). `event` is built only when it will be used.
   */
  add(key: string, event: () => Record<string, unknown>, party?: RefusalParty): Promise<void> {
    const now = this.clock();
    // A party's keys are apart from the shared ones and from other parties', whatever the caller put in `key`.
    const own = party ? _partyKey(party, key) : key;
    const k = this.rows.has(own) ? own : this.slot(own, party);
    const overflow = k.startsWith(OVERFLOW);
    const row = this.rows.get(k);
    if (row && !overflow && row.written < this.burst) {
      row.written++;
      return this.o.write(event());
    }
    if (row) {
      row.count++;
      row.lastTime = now;
      if (row.count % 64 === 1) row.last = event(); // refresh the sample now and then, not on every call
      return Promise.resolve();
    }
    const ev = event();
    this.arm();
    if (overflow) {
      ev.eventName = 'RefusalsOverflow';
      this.rows.set(k, { last: ev, count: 1, written: 0, firstTime: now, lastTime: now });
      return Promise.resolve();
    }
    this.rows.set(k, { last: ev, count: 0, written: 1, firstTime: now, lastTime: now });
    return this.o.write(ev);
  }

  /**
   * The row a new key (`own`, as add() names it) goes to: its own while its budget lasts, else its
   * budget's overflow row. Counts what it takes.
   */
  private slot(own: string, party: RefusalParty | undefined): string {
    if (!party) {
      if (this.sharedKeys >= this.maxKeys) return OVERFLOW;
      this.sharedKeys++;
      return own;
    }
    const id = `${party.kind}\0${party.id}`;
    const use = this.parties.get(id) ?? { keys: 0 };
    const full = use.keys >= (party.kind === 'access-key' ? this.maxKeysPerAccessKey : this.maxKeysPerPrincipal);
    const k = full ? `${OVERFLOW}\0${id}` : own;
    if (full && this.rows.has(k)) return k;
    // A new row: the party's next key, or its overflow row.
    if (this.partyRows[party.kind] >= this.maxPartyRows) return overflowParties(party.kind);
    this.partyRows[party.kind]++;
    if (!full) use.keys++;
    this.parties.set(id, use);
    return k;
  }

  /**
   * Write the summaries of the window now and start a new window. Every
   * write is handed to `write` before this returns (no await in between), so
   * a caller holding the log's write turn can write them itself.
   */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const rows = [...this.rows.entries()];
    this.rows = new Map();
    this.parties = new Map();
    this.partyRows = { 'access-key': 0, principal: 0 };
    this.sharedKeys = 0;
    const writes: Promise<void>[] = [];
    for (const [k, r] of rows) {
      if (r.count === 0) continue;
      const ev: Record<string, unknown> = { ...r.last, eventID: randomUUID() };
      if (k.startsWith(OVERFLOW)) ev.eventName = 'RefusalsOverflow';
      const extra = (ev.additionalEventData && typeof ev.additionalEventData === 'object' ? ev.additionalEventData : {}) as Record<string, unknown>;
      ev.additionalEventData = {
        ...extra,
        aggregated: {
          count: r.count,
          firstTime: new Date(r.firstTime).toISOString(),
          lastTime: new Date(r.lastTime).toISOString(),
          windowSeconds: this.windowMs / 1000,
        },
      };
      ev.eventTime = new Date(r.lastTime).toISOString().replace(/\.\d{3}Z$/, 'Z');
      writes.push(this.o.write(ev));
    }
    return Promise.all(writes).then(() => {});
  }

  /** Refusals counted but not yet written, for status and tests. */
  pending(): number {
    let n = 0;
    for (const r of this.rows.values()) n += r.count;
    return n;
  }

  private arm(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => { this.timer = undefined; void this.flush().catch(() => {}); }, this.windowMs);
    this.timer.unref();
  }
}

/** A party's key in the table: apart from the shared keys and from every other party's. */
function _partyKey(party: RefusalParty, key: string): string {
  return `\0${party.kind}\0${party.id}\0${key}`;
}
