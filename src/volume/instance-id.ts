import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { atomicWrite } from '../util/atomic-write.js';
import { VolumeError } from './errors.js';

/** `<state>/volumes/instance-id` (docs/format.md "State dir"): this host's InstanceId, made at its first start. */
export const INSTANCE_ID_FILE = 'instance-id';

const INSTANCE_ID = /^i-[0-9a-f]{17}$/;

/**
 * The InstanceId of the host that owns this volumes directory: read from
 * `instance-id`, or drawn at random (`i-` + 17 hex, as EC2 spells them) and
 * written atomically the first time. It must differ between hosts: attach
 * grants carry it in their name (`ebsd-attach-<instance>-<vol>`), which is
 * how hosts sharing one IAM role tell their grants apart
 * (docs/architecture.md §6.2). Before it, every host was `i-0ebsd00000000000`.
 */
export async function loadInstanceId(volumesDir: string): Promise<string> {
  const path = join(volumesDir, INSTANCE_ID_FILE);
  try {
    const id = (await fsp.readFile(path, 'utf8')).trim();
    if (!INSTANCE_ID.test(id)) throw new VolumeError('VOLUME_IO', `${path} does not hold an InstanceId (i- and 17 hex digits)`);
    return id;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const id = `i-${randomBytes(9).toString('hex').slice(0, 17)}`;
  await atomicWrite(path, `${id}\n`, 0o600);
  return id;
}
