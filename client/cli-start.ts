/**
 * The CLI's entry point. It runs the bundled CLI (cli.bundle.cjs, made by `npm run build`)
 * from a V8 code cache kept in the cache directory, so that a command does not compile two
 * megabytes of JavaScript before it starts: `cairn --version` went from 0.21 to 0.16 s, and
 * every snapshot starts that much sooner (docs/benchmarks.md).
 *
 * V8 checks a cache against its own version and flags, and the source only by length, so the
 * file name carries everything else that must match (Node, the flags, a hash of the bundle),
 * and the file a checksum of its payload: V8 does not verify one in release builds, and a
 * damaged cache must cost a compile, never run garbage. Only a file of our own that nobody
 * else can write is used, as V8 would run whatever code it holds. A missing, damaged,
 * foreign or rejected cache is written again as the command starts. The cache is an
 * optimisation only: nothing about it can make a command fail.
 */
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';
import { defaultCacheDir } from './cache-dir.js';

const CHECKSUM_BYTES = 20;
const PREFIX = 'cli-';
const SUFFIX = '.v8';
/** A temporary file this old was left by a process that died before renaming it. */
const ABANDONED_TMP_MS = 60_000;

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
    // The bundle's own hash: V8 checks a cache against the source's length only.
    const key = [process.version, process.arch, process.env.NODE_OPTIONS ?? '', ...process.execArgv, createHash('sha1').update(source).digest('hex')].join('\0');
    const dir = path.join(defaultCacheDir(), 'code');
    return { dir, file: path.join(dir, `${PREFIX}${createHash('sha1').update(key).digest('hex')}${SUFFIX}`) };
  } catch {
    return undefined;
  }
}

/**
 * Compiled code runs as this user, so only a file this user wrote counts: owned by us and
 * writable by nobody else. Anyone who can write the cache could otherwise make the next
 * command run their code (the checksum only catches damage).
 */
function privateTo(st: { uid: number; mode: number }): boolean {
  return st.uid === process.geteuid?.() && (st.mode & 0o022) === 0;
}

/** The cached code, or why there is none to use. */
function readChecked(file: string): Buffer | 'missing' | 'damaged' | 'not private' {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch {
    return 'missing';
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || !privateTo(st)) return 'not private';
    const bytes = readFileSync(fd);
    const payload = bytes.subarray(CHECKSUM_BYTES);
    return payload.length > 0 && createHash('sha1').update(payload).digest().equals(bytes.subarray(0, CHECKSUM_BYTES)) ? payload : 'damaged';
  } catch {
    return 'missing';
  } finally {
    closeSync(fd);
  }
}

function save(dir: string, file: string, payload: Buffer): void {
  const tmp = `${file}.${randomBytes(8).toString('hex')}.tmp`;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // Nobody else may rename or plant files in it, so what we write stays what we read.
    const st = lstatSync(dir);
    if (!st.isDirectory() || !privateTo(st)) return;
    // O_EXCL and O_NOFOLLOW: a name planted in the directory is never written through.
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      writeFileSync(fd, Buffer.concat([createHash('sha1').update(payload).digest(), payload]));
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
    // Caches of earlier builds or Node versions would otherwise pile up, ~1 MB each.
    for (const name of readdirSync(dir)) {
      const other = path.join(dir, name);
      const stale = name.startsWith(PREFIX) && (name.endsWith(SUFFIX) ? other !== file : name.endsWith('.tmp') && Date.now() - lstatSync(other).mtimeMs > ABANDONED_TMP_MS);
      if (stale) rmSync(other, { force: true });
    }
  } catch {
    try {
      rmSync(tmp, { force: true });
    } catch {
      // An unwritable cache directory: the next command compiles again, nothing worse.
    }
  }
}
