/**
 * The environment a child process of the daemon runs with (fusermount, umount,
 * systemd-notify): the daemon's own, less the variables that hold a secret
 * (docs/architecture.md §5.10). The AWS SDK reads its environment credentials
 * lazily and again when it refreshes them, so the daemon keeps them in its
 * own environment for its SDK clients (a remote KMS, an S3 store); none of its
 * children needs them, and a child's environment is readable by whoever may
 * read that child's /proc/<pid>/environ (the child is not non-dumpable).
 * EBSD_HSM_PASSPHRASE is not listed: hardenProcess has already taken it out
 * of the environment.
 */
export const SECRET_ENV_NAMES: readonly string[] = Object.freeze([
  // AWS SDKs and CLI, "Environment variables to configure the AWS CLI" / SDK credential providers.
  'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_SECURITY_TOKEN', 'AWS_CONTAINER_AUTHORIZATION_TOKEN',
]);

/** `env` without SECRET_ENV_NAMES, with `extra` set; `env` itself is left as it was. */
export function childEnv(extra: Readonly<Record<string, string>> = {}, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = { ...env, ...extra };
  for (const k of SECRET_ENV_NAMES) delete out[k];
  return out;
}
