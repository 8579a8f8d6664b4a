import type { FuzzTarget } from '../harness/target.js';

/** Every fuzz target by name; each module's default export is a FuzzTarget. */
const TARGETS: Record<string, () => Promise<{ default: FuzzTarget<any, any> }>> = {
  'luks2-json': () => import('./luks2-json.js'),
  'luks2-header': () => import('./luks2-header.js'),
  'kms-blob': () => import('./kms-blob.js'),
  'kms-blob-context': () => import('./kms-blob-context.js'),
  policy: () => import('./policy.js'),
  conditions: () => import('./conditions.js'),
  wildcard: () => import('./wildcard.js'),
  grants: () => import('./grants.js'),
  'kms-request': () => import('./kms-request.js'),
  'ec2-volume': () => import('./ec2-volume.js'),
  'cli-args': () => import('./cli-args.js'),
};

export const TARGET_NAMES: readonly string[] = Object.keys(TARGETS);

export async function loadTarget(name: string): Promise<FuzzTarget<any, any>> {
  const load = TARGETS[name];
  if (!load) throw new Error(`no fuzz target "${name}" (known: ${TARGET_NAMES.join(', ')})`);
  return (await load()).default;
}
