export { BlockFileSystem, type BlockFileSystemOptions } from './block-file-system.js';
export { FuseMount, recoverStaleMount, MAX_IO, type MountOptions } from './mount.js';
export { toErrno } from './errno.js';
export { loopBackings, loopFileOf, type LoopBacking, type LoopFile } from './stale-loops.js';
export { readMountRecord, writeMountRecord, earlierDeadMounts, stillMounted, type MountRecord, type RecordedMount } from './mount-record.js';
