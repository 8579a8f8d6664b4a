import type fc from 'fast-check';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { EbsdError } from '../../../src/util/errors.js';

/**
 * One parser under fuzz. A target opens whatever real component its parser
 * needs (a KMS core, a volume manager, a scratch directory), feeds it one
 * input per `run`, and says what it saw:
 *
 * - `run` returns normally: the input was accepted (`'accepted'`) or refused
 *   in a way the target already checked (`'refused'`); or the target's own
 *   oracle found an invalid input accepted (`{ invalid, why }`).
 * - `run` throws: the engine asks `isTyped` whether the error is a typed
 *   refusal; anything else is an untyped error (a defect).
 */
export type Verdict = 'accepted' | 'refused' | { invalid: string; why: string };

export interface FuzzTarget<I, C = unknown> {
  /** Short name used in reports and FUZZ_TARGETS, e.g. `luks2-json`. */
  readonly name: string;
  /** What the target feeds and to which function, one line. */
  readonly about: string;
  arbitrary(): fc.Arbitrary<I>;
  open(): Promise<C>;
  run(input: I, ctx: C): Promise<Verdict> | Verdict;
  close(ctx: C): Promise<void>;
  /** Typed refusal? Default: `isTypedError`. */
  isTyped?(e: unknown): boolean;
  /** A short, printable rendering of an input for reports (default: JSON, cut). */
  show?(input: I): string;
  /** Inputs between two `reset`s: targets that accumulate state (keys, volumes) start over. */
  readonly resetEvery?: number;
}

/**
 * A typed refusal: an EbsdError (KMS exceptions and volume errors are
 * EbsdErrors) with a stable string `code`; `needAwsName` also requires the
 * AWS exception name (what a control-socket client receives).
 */
export function isTypedError(e: unknown, needAwsName = false): boolean {
  if (!(e instanceof EbsdError) || typeof e.code !== 'string' || e.code === '') return false;
  return !needAwsName || (typeof e.awsName === 'string' && e.awsName !== '');
}

/** `Name: first line of the message`, the key untyped errors are grouped by. */
export function errorSignature(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    const msg = e.message.split('\n')[0]!.replace(/'\/[^']*'/g, "'<path>'").replace(/\d{3,}/g, 'N').slice(0, 120);
    const cause = (e as { cause?: unknown }).cause;
    const why = cause instanceof Error ? ` <- caused by ${errorSignature(cause)}` : '';
    return `${e.name}${typeof code === 'string' ? ` [${code}]` : ''}: ${msg}${why}`;
  }
  return `non-Error thrown: ${typeof e}`;
}

export function showInput(v: unknown, max = 600): string {
  let s: string;
  try {
    s = typeof v === 'string' ? JSON.stringify(v) : JSON.stringify(v, (_k, x) => (x instanceof Uint8Array ? `<${x.length} bytes: ${Buffer.from(x).toString('hex').slice(0, 160)}>` : typeof x === 'bigint' ? `${x}n` : x));
  } catch {
    s = String(v);
  }
  s ??= String(v);
  s = s.replace(/[A-Za-z0-9+/]{48,}={0,2}/g, (b) => `${b.slice(0, 12)}…(${b.length} base64 chars)`);
  return s.length > max ? `${s.slice(0, max)}… (${s.length} chars)` : s;
}

/**
 * Where targets make their scratch directories: the pool gives each run one
 * (EBSD_FUZZ_SCRATCH) and removes it afterwards, so a worker killed as stuck
 * leaves nothing behind. tmpfs when there is one.
 */
export function scratchRoot(): string {
  return process.env.EBSD_FUZZ_SCRATCH ?? (existsSync('/dev/shm') ? '/dev/shm' : tmpdir());
}
