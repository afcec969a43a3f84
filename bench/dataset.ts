/**
 * A deterministic, ML-experiment-like dataset for the benchmarks, and the "day of changes"
 * applied to it in place. Same seed, same options: the same bytes (mtimes are set relative to
 * now, so they look like a few days of work).
 *
 * Content, by share of --mib after the small files:
 *   runs/run-NNN/activations/layer-NN.npy   float32 activations, tens of MiB each (~65%);
 *                                           gaussian floats: zstd -3 saves only ~7-8%
 *   embeddings/shard-NN/vec-NNNNN.npy       float32 vectors of ~1 MiB (~10%)
 *   db/*.db                                 SQLite-like files: 4 KiB pages of records (~8%)
 *   images/cls-NN/img-NNNNN.png             incompressible image-like files (~17%)
 *   runs/run-NNN/metrics/*.json,            small JSON files (--small, ~1.2 KB each)
 *   games/batch-NNN/*.json
 *   node_modules/, tools/__pycache__/       excluded noise: no tool backs these up
 *
 * Randomness: bulk bytes come from AES-128-CTR keyed by BLAKE3(seed, path) (GB/s, and
 * reproducible), records from xoshiro128**. Math.random is never used.
 */
import { createCipheriv } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Blake3Hasher, blake3 } from '@napi-rs/blake-hash';

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4096;
const SMALL_PER_DIR = 500;

/** Directory names that every tool is told to skip (cairn skips them by default). */
export const EXCLUDED_DIRS = ['node_modules', '__pycache__'];

export interface DatasetOptions {
  /** Total size of the backed-up files, MiB (the excluded noise comes on top, ~1%). */
  mib: number;
  /** Number of small JSON files. */
  small: number;
  seed: number;
}

export interface DatasetSummary {
  files: number;
  bytes: number;
  noiseFiles: number;
  noiseBytes: number;
  parts: Record<string, { files: number; bytes: number }>;
  seconds: number;
}

export interface ChangeSummary {
  smallEdited: number;
  smallDeleted: number;
  dbPagesRewritten: number;
  dbBytesAppended: number;
  filesAdded: number;
  filesDeleted: number;
  bytesAdded: number;
  seconds: number;
}

// ---------------------------------------------------------------------------------------------
// Randomness

/** xoshiro128**, seeded from BLAKE3 of a label: small, fast, and reproducible everywhere. */
export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  constructor(label: string) {
    const h = blake3(Buffer.from(label));
    this.s0 = h.readUInt32LE(0) | 1;
    this.s1 = h.readUInt32LE(4);
    this.s2 = h.readUInt32LE(8);
    this.s3 = h.readUInt32LE(12);
  }

  u32(): number {
    const r = Math.imul(rotl(Math.imul(this.s1, 5), 7), 9) >>> 0;
    const t = this.s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return r;
  }

  /** Uniform in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }

  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.float() * xs.length)];
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = 1 - this.float();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * this.float());
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** A reproducible byte stream: AES-128-CTR over zeros, keyed by BLAKE3(label). */
export class ByteStream {
  private readonly cipher;
  constructor(label: string) {
    const key = blake3(Buffer.from(label));
    this.cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  }
  next(n: number): Buffer {
    return this.cipher.update(Buffer.alloc(n));
  }
}

/** Inverse normal CDF (Acklam's approximation), tabulated for fast gaussian-ish floats. */
const NORMAL_TABLE = (() => {
  const n = 4097;
  const t = new Float64Array(n + 1);
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const inv = (p: number): number => {
    const pl = 0.02425;
    if (p < pl) {
      const q = Math.sqrt(-2 * Math.log(p));
      return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    if (p > 1 - pl) {
      const q = Math.sqrt(-2 * Math.log(1 - p));
      return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
    }
    const q = p - 0.5;
    const r = q * q;
    return ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q) / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  };
  for (let i = 0; i <= n; i++) t[i] = inv((Math.min(i, n - 1) + 0.5) / n);
  return t;
})();

/** Fills `out` with gaussian floats (scale, mean) from the byte stream. */
function gaussianFloats(bytes: ByteStream, out: Float32Array, scale: number, mean: number): void {
  const rnd = bytes.next(out.length * 4);
  const u = new Uint32Array(rnd.buffer, rnd.byteOffset, out.length);
  const t = NORMAL_TABLE;
  for (let i = 0; i < out.length; i++) {
    const r = u[i];
    const j = r >>> 20;
    const frac = (r & 0xfffff) / 1048576;
    out[i] = mean + (t[j] + (t[j + 1] - t[j]) * frac) * scale;
  }
}

// ---------------------------------------------------------------------------------------------
// File kinds

/** A .npy header for a float32 array of `rows` x `cols`, padded to 64 bytes as numpy does. */
function npyHeader(rows: number, cols: number): Buffer {
  let dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (${rows}, ${cols}), }`;
  const total = Math.ceil((10 + dict.length + 1) / 64) * 64;
  dict = dict.padEnd(total - 10 - 1, ' ') + '\n';
  const h = Buffer.alloc(10);
  h.write('\x93NUMPY', 0, 'latin1');
  h[6] = 1;
  h[7] = 0;
  h.writeUInt16LE(dict.length, 8);
  return Buffer.concat([h, Buffer.from(dict, 'latin1')]);
}

/** Writes a float32 .npy file of about `size` bytes, streaming 8 MiB at a time. */
async function writeFloatFile(file: string, size: number, label: string): Promise<number> {
  const rng = new Rng(`${label}/params`);
  const cols = 1024;
  const rows = Math.max(1, Math.floor((size - 128) / 4 / cols));
  const header = npyHeader(rows, cols);
  const bytes = new ByteStream(label);
  const scale = 0.05 + rng.float() * 1.5;
  const mean = (rng.float() - 0.5) * 0.2;
  const fh = await open(file, 'w');
  try {
    await fh.write(header);
    let left = rows * cols;
    const block = new Float32Array(2 * MiB);
    while (left > 0) {
      const n = Math.min(left, block.length);
      const view = block.subarray(0, n);
      gaussianFloats(bytes, view, scale, mean);
      await fh.write(Buffer.from(view.buffer, view.byteOffset, n * 4));
      left -= n;
    }
  } finally {
    await fh.close();
  }
  return header.length + rows * cols * 4;
}

/** Incompressible image-like bytes with a PNG signature and an IHDR-like chunk. */
async function writeImageFile(file: string, size: number, label: string): Promise<number> {
  const bytes = new ByteStream(label);
  const head = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 0x49, 0x48, 0x44, 0x52]);
  const fh = await open(file, 'w');
  try {
    await fh.write(head);
    let left = size - head.length;
    while (left > 0) {
      const n = Math.min(left, 8 * MiB);
      await fh.write(bytes.next(n));
      left -= n;
    }
  } finally {
    await fh.close();
  }
  return size;
}

const METRICS = ['loss', 'val_loss', 'acc', 'val_acc', 'lr', 'grad_norm', 'throughput', 'gpu_mem', 'kl', 'entropy', 'reward', 'elo'];
const WORDS = ['resnet', 'vit', 'adamw', 'cosine', 'warmup', 'baseline', 'ablation', 'sweep', 'seed', 'mixup', 'cutmix', 'fp16', 'bf16', 'selfplay', 'mcts'];

/** A small JSON document (metrics record or a self-play game) of about `target` bytes. */
function smallJson(i: number, version: number, seed: number): string {
  const rng = new Rng(`${seed}/small/${i}/${version}`);
  const target = Math.floor(200 + Math.pow(rng.float(), 2) * 2800);
  const game = i % 5 >= 3;
  const doc: Record<string, unknown> = game
    ? { game: i, version, players: [`agent-${rng.int(0, 40)}`, `agent-${rng.int(0, 40)}`], result: rng.pick(['1-0', '0-1', '1/2-1/2']), moves: [] as string[] }
    : { step: i * 100 + version, run: `run-${String(Math.floor(i / SMALL_PER_DIR)).padStart(3, '0')}`, time: new Date(1_700_000_000_000 + i * 60_000 + version * 86_400_000).toISOString(), tags: [rng.pick(WORDS), rng.pick(WORDS)], metrics: {} as Record<string, number>, history: [] as number[] };
  if (!game) for (const m of METRICS) (doc.metrics as Record<string, number>)[m] = Math.round(rng.normal() * 1e6) / 1e6;
  let s = JSON.stringify(doc, null, 1);
  const list = (game ? doc.moves : doc.history) as unknown[];
  while (s.length < target) {
    for (let k = 0; k < 16; k++) list.push(game ? `${String.fromCharCode(97 + rng.int(0, 7))}${rng.int(1, 8)}${String.fromCharCode(97 + rng.int(0, 7))}${rng.int(1, 8)}` : Math.round(rng.normal() * 1e5) / 1e5);
    s = JSON.stringify(doc, null, 1);
  }
  return s + '\n';
}

function smallPath(i: number): string {
  const dirIdx = Math.floor(i / SMALL_PER_DIR);
  const name = String(i).padStart(7, '0');
  // Interleave: 3 of 5 are run metrics, 2 of 5 self-play games, in directories of up to 500.
  return i % 5 >= 3
    ? `games/batch-${String(dirIdx).padStart(4, '0')}/game-${name}.json`
    : `runs/run-${String(dirIdx % 64).padStart(3, '0')}/metrics/part-${String(Math.floor(dirIdx / 64)).padStart(3, '0')}/m-${name}.json`;
}

/** One 4 KiB page of a SQLite-like table b-tree leaf: header, cell pointers, records from the end. */
function dbPage(seed: number, db: string, pageNo: number, version: number): Buffer {
  const page = Buffer.alloc(PAGE);
  const rng = new Rng(`${seed}/db/${db}/${pageNo}/${version}`);
  let start = 0;
  if (pageNo === 0) {
    page.write('SQLite format 3\0', 0, 'latin1');
    page.writeUInt16BE(PAGE, 16);
    page[18] = 1;
    page[19] = 1;
    page[21] = 64;
    page[22] = 32;
    page[23] = 32;
    start = 100;
  }
  page[start] = 0x0d; // leaf table b-tree page
  let content = PAGE;
  const pointers: number[] = [];
  let rowid = pageNo * 40 + 1;
  for (;;) {
    const rec = Buffer.from(
      [
        String(rowid++),
        `run-${String(rng.int(0, 63)).padStart(3, '0')}`,
        String(rng.int(0, 500_000)),
        rng.pick(METRICS),
        (rng.normal() * 10).toFixed(6),
        new Date(1_700_000_000_000 + rng.int(0, 90 * 86_400) * 1000).toISOString(),
        rng.float() < 0.3 ? `${rng.pick(WORDS)} ${rng.pick(WORDS)} ${rng.pick(WORDS)}` : '',
      ].join('\x1f'),
      'latin1',
    );
    const cell = rec.length + 4;
    if (content - cell < start + 8 + (pointers.length + 1) * 2 + 16) break;
    content -= cell;
    page.writeUInt16BE(rec.length, content);
    page.writeUInt16BE(version, content + 2);
    rec.copy(page, content + 4);
    pointers.push(content);
  }
  page.writeUInt16BE(pointers.length, start + 3);
  page.writeUInt16BE(content, start + 5);
  pointers.forEach((p, k) => page.writeUInt16BE(p, start + 8 + k * 2));
  return page;
}

async function writeDbFile(file: string, pages: number, seed: number, db: string): Promise<number> {
  const fh = await open(file, 'w');
  try {
    for (let p = 0; p < pages; p += 256) {
      const n = Math.min(256, pages - p);
      await fh.write(Buffer.concat(Array.from({ length: n }, (_, k) => dbPage(seed, db, p + k, 0))));
    }
  } finally {
    await fh.close();
  }
  return pages * PAGE;
}

// ---------------------------------------------------------------------------------------------
// Layout

interface Plan {
  activations: Array<{ rel: string; size: number }>;
  vectors: Array<{ rel: string; size: number }>;
  images: Array<{ rel: string; size: number }>;
  dbs: Array<{ rel: string; pages: number; name: string }>;
}

const SMALL_AVG = 1200;

function plan(opts: DatasetOptions): Plan {
  const total = opts.mib * MiB;
  const rest = Math.max(8 * MiB, total - opts.small * SMALL_AVG);
  const rng = new Rng(`${opts.seed}/plan`);
  const p: Plan = { activations: [], vectors: [], images: [], dbs: [] };

  const dbBytes = rest * 0.08;
  const dbShares: Array<[string, number]> = [['experiments', 0.5], ['metrics', 0.35], ['queue', 0.15]];
  for (const [name, share] of dbShares) p.dbs.push({ rel: `db/${name}.db`, name, pages: Math.max(8, Math.round((dbBytes * share) / PAGE)) });

  let vecBytes = rest * 0.1;
  for (let i = 0; vecBytes > 0; i++) {
    const size = Math.round(MiB * (0.75 + rng.float() * 0.5));
    p.vectors.push({ rel: `embeddings/shard-${String(Math.floor(i / 100)).padStart(2, '0')}/vec-${String(i).padStart(5, '0')}.npy`, size });
    vecBytes -= size;
  }

  let imgBytes = rest * 0.17;
  for (let i = 0; imgBytes > 0; i++) {
    const size = Math.round(256 * KiB * Math.pow(12, rng.float()));
    p.images.push({ rel: `images/cls-${String(i % 10).padStart(2, '0')}/img-${String(i).padStart(5, '0')}.png`, size });
    imgBytes -= size;
  }

  const actBytes = rest - p.dbs.reduce((s, d) => s + d.pages * PAGE, 0) - p.vectors.reduce((s, v) => s + v.size, 0) - p.images.reduce((s, v) => s + v.size, 0);
  const count = Math.max(2, Math.round(actBytes / (32 * MiB)));
  const size = Math.max(MiB, Math.floor(actBytes / count / PAGE) * PAGE);
  for (let i = 0; i < count; i++) p.activations.push({ rel: `runs/run-${String(i % 8).padStart(3, '0')}/activations/layer-${String(i).padStart(2, '0')}.npy`, size });
  return p;
}

// ---------------------------------------------------------------------------------------------
// Generate, change, manifest

async function writeRel(dir: string, rel: string, data: string | Buffer): Promise<void> {
  const file = path.join(dir, rel);
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, data);
}

async function ensureParent(dir: string, rel: string): Promise<string> {
  const file = path.join(dir, rel);
  await mkdir(path.dirname(file), { recursive: true });
  return file;
}

/** Runs `fn` over `items` with at most `n` in flight. */
async function pool<T>(items: T[], n: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i], i);
      }
    }),
  );
}

/** Sets every file's and directory's mtime to a plausible time in the last few days. */
async function ageTree(dir: string, seed: number): Promise<void> {
  const now = Date.now() / 1000;
  const rng = new Rng(`${seed}/mtimes`);
  const walk = async (d: string): Promise<void> => {
    const entries = await readdir(d, { withFileTypes: true });
    await pool(entries, 32, async (e) => {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      const t = now - 3 * 86_400 + rng.float() * 2 * 86_400;
      await utimes(p, t, t);
    });
  };
  await walk(dir);
  const t = now - 86_400;
  await utimes(dir, t, t);
}

/** Generates the dataset into `dir` (which must not exist or be empty). */
export async function generateDataset(dir: string, opts: DatasetOptions): Promise<DatasetSummary> {
  const started = Date.now();
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  const p = plan(opts);
  const parts: DatasetSummary['parts'] = {};
  const add = (part: string, bytes: number) => {
    parts[part] ??= { files: 0, bytes: 0 };
    parts[part].files++;
    parts[part].bytes += bytes;
  };

  await pool(p.activations, 2, async (a) => add('activations', await writeFloatFile(await ensureParent(dir, a.rel), a.size, `${opts.seed}/${a.rel}`)));
  await pool(p.vectors, 4, async (v) => add('vectors', await writeFloatFile(await ensureParent(dir, v.rel), v.size, `${opts.seed}/${v.rel}`)));
  await pool(p.images, 4, async (v) => add('images', await writeImageFile(await ensureParent(dir, v.rel), v.size, `${opts.seed}/${v.rel}`)));
  for (const d of p.dbs) add('databases', await writeDbFile(await ensureParent(dir, d.rel), d.pages, opts.seed, d.name));
  await writeSmallFiles(dir, opts.small, opts.seed, Infinity, (bytes) => add('small json', bytes));
  for (let r = 0; r < 8; r++) {
    const rel = `runs/run-${String(r).padStart(3, '0')}/config.json`;
    const s = JSON.stringify({ run: r, model: WORDS[r % WORDS.length], lr: 3e-4 * (r + 1), batch: 256, seed: opts.seed + r }, null, 2) + '\n';
    await writeRel(dir, rel, s);
    add('small json', s.length);
  }

  // Excluded noise: a node_modules tree and Python bytecode caches.
  let noiseFiles = 0;
  let noiseBytes = 0;
  const noise = new ByteStream(`${opts.seed}/noise`);
  const noiseCount = Math.max(50, Math.round(opts.small / 20));
  for (let i = 0; i < noiseCount; i++) {
    const pkg = `pkg-${i % 40}`;
    const rel = i % 4 === 3 ? `tools/__pycache__/mod${i}.cpython-311.pyc` : `node_modules/${pkg}/lib/file-${i}.js`;
    const size = 200 + (i % 17) * 300;
    await writeRel(dir, rel, rel.endsWith('.js') ? `// ${pkg}\nmodule.exports = ${JSON.stringify(noise.next(size / 2).toString('hex'))};\n` : noise.next(size));
    noiseFiles++;
    noiseBytes += size;
  }
  await writeRel(dir, 'node_modules/big-dep/dist/bundle.js', noise.next(Math.min(8 * MiB, Math.max(64 * KiB, opts.mib * 8 * KiB))).toString('base64'));
  noiseFiles++;
  const script = 'import torch\n\nif __name__ == "__main__":\n    print("train")\n';
  await writeRel(dir, 'tools/train.py', script);
  add('code', script.length);

  await ageTree(dir, opts.seed);
  const files = Object.values(parts).reduce((s, x) => s + x.files, 0);
  const bytes = Object.values(parts).reduce((s, x) => s + x.bytes, 0);
  return { files, bytes, noiseFiles, noiseBytes, parts, seconds: (Date.now() - started) / 1000 };
}

/**
 * A day of work, in place: ~5% of the small files rewritten, a few pages of each database
 * rewritten and some appended, one new activation file, a few files deleted. Files written get
 * the current time as mtime, as a training job would leave them.
 */
export async function applyDayOfChanges(dir: string, opts: DatasetOptions): Promise<ChangeSummary> {
  const started = Date.now();
  const rng = new Rng(`${opts.seed}/day1`);
  const p = plan(opts);
  const s: ChangeSummary = { smallEdited: 0, smallDeleted: 0, dbPagesRewritten: 0, dbBytesAppended: 0, filesAdded: 0, filesDeleted: 0, bytesAdded: 0, seconds: 0 };

  // Small files: ~5% edited (rewritten in place: same inode, new content, new mtime).
  const edit = new Set<number>();
  const editCount = Math.round(opts.small * 0.05);
  while (edit.size < Math.min(editCount, opts.small)) edit.add(rng.int(0, opts.small - 1));
  await pool([...edit], 16, async (i) => {
    await writeFile(path.join(dir, smallPath(i)), smallJson(i, 1, opts.seed));
    s.smallEdited++;
  });
  // ... and a few deleted.
  const del = new Set<number>();
  const delCount = Math.min(opts.small - edit.size, Math.max(5, Math.round(opts.small * 0.002)));
  while (del.size < delCount) {
    const i = rng.int(0, opts.small - 1);
    if (!edit.has(i)) del.add(i);
  }
  for (const i of del) {
    await rm(path.join(dir, smallPath(i)));
    s.smallDeleted++;
    s.filesDeleted++;
  }

  // Databases: a few pages rewritten at random offsets, the header page updated, pages appended.
  for (const d of p.dbs) {
    const fh = await open(path.join(dir, d.rel), 'r+');
    try {
      const rewrite = Math.max(3, Math.round(d.pages * 0.002));
      for (let k = 0; k < rewrite; k++) {
        const pageNo = rng.int(1, d.pages - 1);
        await fh.write(dbPage(opts.seed, d.name, pageNo, 1), 0, PAGE, pageNo * PAGE);
        s.dbPagesRewritten++;
      }
      const append = Math.max(4, Math.round(d.pages * 0.01));
      const header = dbPage(opts.seed, d.name, 0, 0);
      header.writeUInt32BE(1, 24); // file change counter
      header.writeUInt32BE(d.pages + append, 28); // database size in pages
      await fh.write(header, 0, PAGE, 0);
      s.dbPagesRewritten++;
      const pages = Array.from({ length: append }, (_, k) => dbPage(opts.seed, d.name, d.pages + k, 1));
      await fh.write(Buffer.concat(pages), 0, append * PAGE, d.pages * PAGE);
      s.dbBytesAppended += append * PAGE;
    } finally {
      await fh.close();
    }
  }

  // One new activation file (a new checkpoint's activations), same size as the others.
  const act = p.activations[0];
  const rel = `runs/run-${String(p.activations.length % 8).padStart(3, '0')}/activations/layer-${String(p.activations.length).padStart(2, '0')}.npy`;
  s.bytesAdded += await writeFloatFile(await ensureParent(dir, rel), act.size, `${opts.seed}/day1/${rel}`);
  s.filesAdded++;

  // A few large files deleted: images culled, a stale vector shard.
  const victims = [p.images[0], p.images[Math.floor(p.images.length / 2)], p.images[p.images.length - 1], p.vectors[p.vectors.length - 1]];
  for (const v of new Set(victims.map((x) => x.rel))) {
    await rm(path.join(dir, v));
    s.filesDeleted++;
  }
  s.seconds = (Date.now() - started) / 1000;
  return s;
}

/** `count` small JSON documents at smallPath(i), at most `maxLength` characters each, 32 written at once. */
async function writeSmallFiles(dir: string, count: number, seed: number, maxLength: number, written: (bytes: number) => void): Promise<void> {
  const dirsMade = new Map<string, Promise<void>>();
  await pool(
    Array.from({ length: count }, (_, i) => i),
    32,
    async (i) => {
      const rel = smallPath(i);
      const parent = path.dirname(rel);
      let made = dirsMade.get(parent);
      if (!made) {
        made = mkdir(path.join(dir, parent), { recursive: true }).then(() => undefined);
        dirsMade.set(parent, made);
      }
      await made;
      const s = smallJson(i, 0, seed).slice(0, maxLength);
      await writeFile(path.join(dir, rel), s);
      written(Buffer.byteLength(s));
    },
  );
}

/** Many small files only, for the scaling runs: `count` JSON files in directories of 500. */
export async function generateSmallTree(dir: string, count: number, seed: number): Promise<{ files: number; bytes: number; seconds: number }> {
  const started = Date.now();
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  let bytes = 0;
  // Shorter documents than the main dataset: the scaling runs are about file count.
  await writeSmallFiles(dir, count, seed, 400, (n) => (bytes += n));
  await ageTree(dir, seed);
  return { files: count, bytes, seconds: (Date.now() - started) / 1000 };
}

export interface ManifestEntry {
  size: number;
  hash: string;
}

export type Manifest = Map<string, ManifestEntry>;

async function hashFile(file: string, size: number): Promise<string> {
  const h = new Blake3Hasher();
  if (size <= 4 * MiB) {
    const { readFile } = await import('node:fs/promises');
    h.update(await readFile(file));
    return h.digest('hex');
  }
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * MiB })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Every regular file under `dir` (skipping EXCLUDED_DIRS at any depth): relative path -> size + BLAKE3. */
export async function buildManifest(dir: string): Promise<Manifest> {
  const m: Manifest = new Map();
  const files: Array<{ rel: string; abs: string }> = [];
  const walk = async (d: string, relDir: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const rel = relDir ? `${relDir}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (!EXCLUDED_DIRS.includes(e.name)) await walk(path.join(d, e.name), rel);
      } else if (e.isFile()) files.push({ rel, abs: path.join(d, e.name) });
      else m.set(rel, { size: -1, hash: `not a regular file` });
    }
  };
  await walk(dir, '');
  await pool(files, 8, async (f) => {
    const st = await stat(f.abs);
    m.set(f.rel, { size: st.size, hash: await hashFile(f.abs, st.size) });
  });
  return m;
}

export function manifestBytes(m: Manifest): number {
  let n = 0;
  for (const e of m.values()) n += Math.max(0, e.size);
  return n;
}

/** Compares a restored tree with the expected manifest; throws listing the first differences. */
export async function verifyTree(expected: Manifest, restoredDir: string, what: string): Promise<{ files: number; bytes: number }> {
  const actual = await buildManifest(restoredDir);
  const problems: string[] = [];
  for (const [rel, e] of expected) {
    const a = actual.get(rel);
    if (!a) problems.push(`missing: ${rel}`);
    else if (a.size !== e.size) problems.push(`size differs: ${rel}: ${a.size} != ${e.size}`);
    else if (a.hash !== e.hash) problems.push(`content differs: ${rel}`);
  }
  for (const rel of actual.keys()) if (!expected.has(rel)) problems.push(`unexpected: ${rel}`);
  if (problems.length > 0) {
    throw new Error(`RESTORE VERIFICATION FAILED for ${what}: ${problems.length} differences in ${restoredDir}:\n  ${problems.slice(0, 20).join('\n  ')}`);
  }
  return { files: actual.size, bytes: manifestBytes(actual) };
}
