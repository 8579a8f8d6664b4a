#!/usr/bin/env node
// Builds the N-API addon (native/) with node-gyp into native/build/Release/ebsd_native.node.
// It is the package's `install` script. If the build fails it warns and exits 0, so
// `npm install` still completes: the library, `ebsd speed` and the tests that need no
// daemon then use the `node` XTS engine (node:crypto). The daemon does NOT fall back:
// it refuses to start without the addon, which is how it reads a control-socket
// caller's uid (SO_PEERCRED; docs/architecture.md §2.8, §5.1). With
// EBSD_REQUIRE_NATIVE=1 a failed build exits non-zero instead (CI, scripts/setup.sh).
//
// With --if-stale it builds only when the addon is missing, a C source, header or
// binding.gyp is newer than it, or it was built for another Node ABI
// (process.versions.modules) or libuv major.minor (io.c reads one of libuv's
// private fields): the build leaves that in native/build/Release/ebsd_native.abi.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = join(root, 'native');
const required = process.env.EBSD_REQUIRE_NATIVE === '1';
const output = join(nativeDir, 'build', 'Release', 'ebsd_native.node');

const stamp = join(nativeDir, 'build', 'Release', 'ebsd_native.abi');
/** What the addon depends on besides its sources: Node's module ABI and libuv's major.minor. */
const runtime = `node-abi ${process.versions.modules} libuv ${process.versions.uv.split('.').slice(0, 2).join('.')}\n`;

/** Why the addon must be (re)built, or null when it is up to date. */
function staleReason() {
  if (!existsSync(output)) return 'not built';
  const built = statSync(output).mtimeMs;
  const sources = [join(nativeDir, 'binding.gyp'), ...readdirSync(join(nativeDir, 'src')).map((f) => join(nativeDir, 'src', f))];
  const newer = sources.find((f) => /\.(c|h|gyp)$/.test(f) && statSync(f).mtimeMs > built);
  if (newer) return `${newer} changed`;
  let was = '';
  try { was = readFileSync(stamp, 'utf8'); } catch { /* built before stamps existed */ }
  if (was !== runtime) return `built for ${was.trim() || 'an unknown runtime'}, running ${runtime.trim()}`;
  return null;
}

if (process.argv.includes('--if-stale')) {
  const why = staleReason();
  if (why === null) process.exit(0);
  console.log(`ebsd: native addon stale (${why})`);
}

function fail(msg) {
  if (required) {
    console.error(`ebsd: native addon build FAILED: ${msg}`);
    process.exit(1);
  }
  console.warn(`ebsd: WARNING: native addon not built (${msg}).`);
  console.warn('ebsd: `ebsd daemon` will refuse to start without it (it identifies callers with SO_PEERCRED);');
  console.warn('ebsd: only the library and `ebsd speed` fall back to the node:crypto XTS engine (much slower).');
  console.warn('ebsd: to retry: npm run build:native   (needs python3, make, a C compiler and libgcrypt20-dev)');
  process.exit(0);
}

function findNodeGyp() {
  // Run node-gyp's JS with this very node, so PATH need not hold `node`.
  for (const p of [join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js')]) {
    if (existsSync(p)) return { cmd: process.execPath, pre: [p] };
  }
  try {
    const require = createRequire(import.meta.url);
    return { cmd: process.execPath, pre: [require.resolve('node-gyp/bin/node-gyp.js')] };
  } catch {
    return null;
  }
}

// Node's headers usually ship with the distribution's node under
// <prefix>/include/node. Point node-gyp there so it never needs to download a
// header tarball (machines here have no route to it).
function localNodeDir() {
  if (process.env.npm_config_nodedir) return null; // the user chose one
  const prefix = resolve(dirname(process.execPath), '..');
  const hdr = join(prefix, 'include', 'node');
  if (existsSync(join(hdr, 'node_api.h')) && existsSync(join(hdr, 'common.gypi'))) {
    return prefix;
  }
  return null;
}

const gyp = findNodeGyp();
if (!gyp) fail('node-gyp not found; run npm install first');

const args = [...gyp.pre, 'rebuild', '-C', nativeDir];
const nodedir = localNodeDir();
if (nodedir) args.push(`--nodedir=${nodedir}`);
console.log(`ebsd: building native addon: node-gyp ${args.slice(gyp.pre.length).join(' ')}`);
const r = spawnSync(gyp.cmd, args, { stdio: 'inherit', env: process.env });
if (r.error) fail(`could not run node-gyp: ${r.error.message}`);
if (r.status !== 0) fail(`node-gyp exited with status ${r.status ?? r.signal}`);
if (!existsSync(output)) fail(`${output} missing after the build`);

// Prove it links (libgcrypt) and loads.
const check = spawnSync(
  process.execPath,
  ['-e', `const a=require(${JSON.stringify(output)});if(typeof a.createContext!=='function')process.exit(2);if(a.cipherLibrary===null)process.exit(3);console.log('ebsd: native addon OK (AES-XTS on '+a.cipherLibrary+')')`],
  { stdio: 'inherit' },
);
if (check.status !== 0) fail('the built addon does not load');
writeFileSync(stamp, runtime);
