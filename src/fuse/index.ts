export { BlockFileSystem, type BlockFileSystemOptions } from './block-file-system.js';
export { FuseMount, recoverStaleMount, MAX_IO, type MountOptions } from './mount.js';
export { toErrno } from './errno.js';
export { staleLoopDevices } from './stale-loops.js';
