import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';

/** Deterministic bytes (xorshift32), so failures reproduce and no test depends on Math.random. */
export function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

export function randomBytes(len: number, seed: number): Buffer {
  const next = prng(seed);
  const buf = Buffer.allocUnsafe(len);
  let i = 0;
  for (; i + 4 <= len; i += 4) buf.writeUInt32LE(next(), i);
  for (; i < len; i++) buf[i] = next() & 0xff;
  return buf;
}

export interface Entry {
  path: string;
  type: 'file' | 'dir' | 'symlink';
  size?: number;
  mode?: number;
  mtimeMs?: number;
  sha?: string;
  target?: string;
}

/** What a tree holds, as comparable records: content hashes, modes, mtimes (ms), link targets. */
export async function describeTree(root: string): Promise<Entry[]> {
  const out: Entry[] = [];
  async function walk(dir: string, rel: string): Promise<void> {
    const names = (await fs.readdir(dir)).sort();
    for (const name of names) {
      const abs = path.join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await fs.lstat(abs);
      if (st.isSymbolicLink()) out.push({ path: r, type: 'symlink', target: await fs.readlink(abs) });
      else if (st.isDirectory()) {
        out.push({ path: r, type: 'dir', mode: st.mode & 0o7777, mtimeMs: Math.floor(st.mtimeMs) });
        await walk(abs, r);
      } else {
        const h = createHash('sha256');
        const fh = await fs.open(abs, 'r');
        const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
        for (;;) {
          const { bytesRead } = await fh.read(buf, 0, buf.length, null);
          if (bytesRead === 0) break;
          h.update(buf.subarray(0, bytesRead));
        }
        await fh.close();
        out.push({ path: r, type: 'file', size: st.size, mode: st.mode & 0o7777, mtimeMs: Math.floor(st.mtimeMs), sha: h.digest('hex') });
      }
    }
  }
  await walk(root, '');
  return out;
}

export async function writeFile(p: string, data: Buffer | string, opts: { mode?: number; mtime?: Date } = {}): Promise<void> {
  await fs.mkdir(path.dirname(p), { recursive: true });
  await fs.writeFile(p, data);
  if (opts.mode !== undefined) await fs.chmod(p, opts.mode);
  if (opts.mtime) await fs.utimes(p, opts.mtime, opts.mtime);
}
