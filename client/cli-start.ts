/**
 * The CLI's entry point. It runs the bundled CLI (cli.bundle.cjs, made by `npm run build`)
 * from a V8 code cache kept in the cache directory, so that a command does not compile two
 * megabytes of JavaScript before it starts: `cairn --version` went from 0.21 to 0.16 s, and
 * every snapshot starts that much sooner (docs/benchmarks.md).
 *
 * V8 checks a cache against its own version and flags, and the source only by length, so the
 * file name carries everything else that must match (Node, the flags, the bundle's size,
 * mtime and inode), and the file a checksum of its payload: V8 does not verify one in release
 * builds, and a damaged cache must cost a compile, never run garbage. A missing, damaged or
 * rejected cache is written again as the command starts. The cache is an optimisation only:
 * nothing about it can make a command fail.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';
import { defaultCacheDir } from './cache-dir.js';

const CHECKSUM_BYTES = 20;
const PREFIX = 'cli-';
const SUFFIX = '.v8';

const bundle = fileURLToPath(new URL('./cli.bundle.cjs', import.meta.url));
const source = readFileSync(bundle, 'utf8');
const cache = cacheFile();
const found = cache ? readChecked(cache.file) : 'no cache directory';
const cachedData = typeof found === 'string' ? undefined : found;
const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, { filename: bundle, cachedData });
const outcome = cachedData === undefined ? found : script.cachedDataRejected === false ? 'used' : 'refused by V8';
// A diagnostic for a slow start: says whether this command ran from the cache.
if (process.env.CAIRN_TRACE_CODE_CACHE) process.stderr.write(`cairn: code cache ${cache?.file ?? ''}: ${outcome}\n`);
const module = { exports: {} };
(script.runInThisContext() as (...args: unknown[]) => void)(module.exports, createRequire(bundle), module, bundle, path.dirname(bundle));
// Taken once the bundle's top level has run and the command has started, which is what every
// start compiles. Taken at exit instead, after a snapshot, it lacked the start-up functions
// (V8 had flushed their bytecode as unused) and `--version` took 0.185 s from it, not 0.16.
if (cache && outcome !== 'used') save(cache.dir, cache.file, script.createCachedData());

function cacheFile(): { dir: string; file: string } | undefined {
  try {
    const st = statSync(bundle);
    const key = [process.version, process.arch, process.env.NODE_OPTIONS ?? '', ...process.execArgv, st.size, st.mtimeMs, st.ino].join('\0');
    const dir = path.join(defaultCacheDir(), 'code');
    return { dir, file: path.join(dir, `${PREFIX}${createHash('sha1').update(key).digest('hex')}${SUFFIX}`) };
  } catch {
    return undefined;
  }
}

/** The cached code, or why there is none to use. */
function readChecked(file: string): Buffer | 'missing' | 'damaged' {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch {
    return 'missing';
  }
  const payload = bytes.subarray(CHECKSUM_BYTES);
  return payload.length > 0 && createHash('sha1').update(payload).digest().equals(bytes.subarray(0, CHECKSUM_BYTES)) ? payload : 'damaged';
}

function save(dir: string, file: string, payload: Buffer): void {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileSync(tmp, Buffer.concat([createHash('sha1').update(payload).digest(), payload]));
    renameSync(tmp, file);
    // Caches of earlier builds or Node versions would otherwise pile up, ~1 MB each.
    for (const name of readdirSync(dir)) {
      if (name.startsWith(PREFIX) && name.endsWith(SUFFIX) && name !== path.basename(file)) rmSync(path.join(dir, name), { force: true });
    }
  } catch {
    try {
      rmSync(tmp, { force: true });
    } catch {
      // An unwritable cache directory: the next command compiles again, nothing worse.
    }
  }
}
