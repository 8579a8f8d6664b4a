/**
 * Whose turn in the KMS core (fair-gate.ts) and whose refusal budget in the audit log
 * (audit/refusal-aggregator.ts) a call is: the identity behind it (docs/architecture.md §5.7).
 *
 * A long-term principal (a user, the root, a local uid's principal) is its own party. A session
 * belongs to its origin, the identity that minted it (Caller.origin): a principal allowed to assume
 * a role can mint as many sessions as it likes, each with an ARN of its own, and were each session
 * a party, N sessions would take N turns for every one of another caller's, and N refusal budgets.
 */
import type { Caller } from './types.js';

/** The party of `caller`: its origin if it is a session that has one, else its own ARN. */
export function callerParty(caller: Caller): string {
  return caller.origin ?? caller.arn;
}
