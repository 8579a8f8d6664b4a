export { Daemon, runDaemon, VERSION, HOST_ROLE } from './daemon.js';
export { checkDaemonConfig, parseDuration, DEFAULT_MOUNT_DIR, DEFAULT_STATE_DIR } from './config.js';
export { statePaths, readPid, isAlive, SOCKET_FILE, PID_FILE } from './state-dir.js';
//# sourceMappingURL=index.js.map