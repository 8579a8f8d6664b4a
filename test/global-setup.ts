import { chmodSync } from 'node:fs';
import { CLI, ensureBuilt } from './e2e/helpers.js';

/**
 * Runs once in vitest's main process before any worker starts: builds dist/
 * if a source is newer (npm test has built it already) and makes the CLI
 * executable, as scripts/setup.sh does. The files also call ensureBuilt(),
 * which then finds dist/ fresh; without this, two workers could run tsc at
 * once and rewrite dist/ under a daemon another file started.
 */
export default function setup(): void {
  ensureBuilt();
  chmodSync(CLI, 0o755);
}
