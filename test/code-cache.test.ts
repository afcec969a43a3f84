import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { binCommand } from '../bench/node-flags.js';
import { cleanupTmp, ROOT, tmpDir } from './harness.js';

/** The CLI's start from V8's code cache (client/cli-start.ts), run as bin/cairn runs it. */

const CLI = binCommand(ROOT, 'cairn');
const START = path.join(ROOT, 'dist/client/cli-start.js');
const VERSION = (JSON.parse(await fs.readFile(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

afterAll(() => cleanupTmp());

/** `cairn --version`, and what the loader says it did with the cache. */
async function version(cacheDir: string, extraFlags: string[] = []): Promise<{ out: string; cache: string }> {
  return (await traced(cacheDir, extraFlags)).result;
}

async function traced(cacheDir: string, extraFlags: string[] = []): Promise<{ result: { out: string; cache: string }; file: string }> {
  const { stdout, stderr } = await promisify(execFile)(process.execPath, [...CLI.flags, ...extraFlags, START, '--version'], {
    env: { ...process.env, ...CLI.env, CAIRN_CACHE_DIR: cacheDir, CAIRN_TRACE_CODE_CACHE: '1' },
  });
  const m = /^cairn: code cache ([^:]*): (.*)$/m.exec(stderr);
  return { result: { out: stdout.trim(), cache: m?.[2] ?? stderr }, file: m?.[1] ?? '' };
}

async function cached(cacheDir: string): Promise<Array<{ name: string; bytes: Buffer; mtimeMs: number }>> {
  const dir = path.join(cacheDir, 'code');
  const names = (await fs.readdir(dir)).sort();
  return Promise.all(names.map(async (name) => ({ name, bytes: await fs.readFile(path.join(dir, name)), mtimeMs: (await fs.stat(path.join(dir, name))).mtimeMs })));
}

describe('the CLI code cache', () => {
  it('is written by the first command and used, unchanged, by the next', async () => {
    const dir = tmpDir();
    expect(await version(dir)).toEqual({ out: VERSION, cache: 'missing' });
    const [first, ...more] = await cached(dir);
    expect(more).toEqual([]);
    expect(first!.name).toMatch(/^cli-[0-9a-f]{40}\.v8$/);
    expect(first!.bytes.length).toBeGreaterThan(100_000);
    expect(await version(dir)).toEqual({ out: VERSION, cache: 'used' });
    const [again] = await cached(dir);
    expect(again!.name).toBe(first!.name);
    expect(again!.mtimeMs).toBe(first!.mtimeMs);
    expect(again!.bytes.equals(first!.bytes)).toBe(true);
  });

  it('a damaged or truncated cache is compiled past and written again', async () => {
    const dir = tmpDir();
    await version(dir);
    const [good] = await cached(dir);
    const file = path.join(dir, 'code', good!.name);
    for (const damage of [
      (b: Buffer) => Buffer.concat([b.subarray(0, 5000), Buffer.from([b[5000]! ^ 0xff]), b.subarray(5001)]),
      (b: Buffer) => b.subarray(0, b.length >> 1),
      () => Buffer.alloc(0),
    ]) {
      await fs.writeFile(file, damage(good!.bytes));
      // V8 itself takes a cache with a flipped byte (in release builds it checks lengths and
      // versions, not a checksum): only the loader's own checksum keeps it from running.
      expect(await version(dir)).toEqual({ out: VERSION, cache: 'damaged' });
      expect(await version(dir)).toEqual({ out: VERSION, cache: 'used' });
    }
  });

  it('other Node flags get a cache of their own, which replaces the old one', async () => {
    const dir = tmpDir();
    await version(dir);
    const [before] = await cached(dir);
    expect(await version(dir, ['--max-old-space-size=512'])).toEqual({ out: VERSION, cache: 'missing' });
    const after = await cached(dir);
    expect(after).toHaveLength(1);
    expect(after[0]!.name).not.toBe(before!.name);
    expect(await version(dir, ['--max-old-space-size=512'])).toEqual({ out: VERSION, cache: 'used' });
  });

  it('runs no cache another user could have written: foreign or shared files, shared directories and symlinks are passed over', async () => {
    const dir = tmpDir();
    const { file } = await traced(dir);
    // Someone else's file, or ours but writable by others: V8 would run whatever it holds.
    if (process.getuid?.() === 0) {
      await fs.chown(file, 65534, 65534);
      expect(await version(dir)).toEqual({ out: VERSION, cache: 'not private' });
      expect((await fs.stat(file)).uid).toBe(0);
      expect(await version(dir)).toEqual({ out: VERSION, cache: 'used' });
    }
    await fs.chmod(file, 0o666);
    expect(await version(dir)).toEqual({ out: VERSION, cache: 'not private' });
    expect((await fs.stat(file)).mode & 0o777).toBe(0o600);
    // A symlink where the cache should be is neither read nor written through.
    const victim = path.join(dir, 'victim');
    await fs.writeFile(victim, 'keep me');
    await fs.rm(file);
    await fs.symlink(victim, file);
    expect(await version(dir)).toEqual({ out: VERSION, cache: 'missing' });
    expect(await fs.readFile(victim, 'utf8')).toBe('keep me');
    expect((await fs.lstat(file)).isFile()).toBe(true);
    // A cache directory others can write to is not written at all.
    const shared = tmpDir();
    await fs.mkdir(path.join(shared, 'code'), { mode: 0o777 });
    await fs.chmod(path.join(shared, 'code'), 0o777);
    expect(await version(shared)).toEqual({ out: VERSION, cache: 'missing' });
    expect(await fs.readdir(path.join(shared, 'code'))).toEqual([]);
  });

  it('a cache directory that cannot be written costs nothing but the cache', async () => {
    const dir = tmpDir();
    const blocked = path.join(dir, 'a-file');
    await fs.writeFile(blocked, 'not a directory');
    expect(await version(blocked)).toEqual({ out: VERSION, cache: 'missing' });
    expect(await version(blocked)).toEqual({ out: VERSION, cache: 'missing' });
    expect(await fs.readFile(blocked, 'utf8')).toBe('not a directory');
  });
});
