/**
 * Prune at scale: `npx tsc && node dist/bench/prune-bench.js [--chunks 100000] [--snapshots 100] [--heap-mib 64]`.
 *
 * Synthesises a repository through the repository and pack-writer APIs (gRPC would only add
 * upload time; the subject is the collector): `chunks` small chunks in blocks of
 * chunks/snapshots, one directory tree per block, snapshot i referencing the 20 blocks up to
 * block i, so neighbouring snapshots share most of their data as real histories do. Then the
 * older half of the snapshots is forgotten and prune runs (max-unused 5%), then a structure
 * check, in a fresh process (as a server would run them) whose memory is sampled throughout; run
 * it at two sizes to see that memory does not follow the number of chunks (the mark set
 * lives in a scratch LevelDB); --heap-mib caps that process's V8 heap, which shows what prune
 * needs rather than what the garbage collector lazily let it grow to.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { hash, toHex } from '../common/hash.js';
import { createLogger } from '../common/log.js';
import type { Node } from '../common/messages.js';
import { emptyNode, encodeTree } from '../common/tree.js';
import { formatBytes } from '../common/units.js';
import { check } from '../server/checker.js';
import { FileStore } from '../server/file-store.js';
import { forget } from '../server/forget.js';
import { prune } from '../server/prune.js';
import { Repository } from '../server/repository.js';

const CHUNK_BYTES = 256;
const CHUNKS_PER_FILE = 10;
const WINDOW = 20;

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}

interface Memory {
  /** Anonymous resident memory: heap, buffers, LevelDB's own allocations. What the process costs. */
  anon: number;
  /** File-backed resident pages: LevelDB maps its table files, and pages it read count here until the kernel reclaims them. */
  file: number;
}

function memory(): Memory {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
    return { anon: kib('RssAnon'), file: kib('RssFile') };
  } catch {
    return { anon: process.memoryUsage().rss, file: 0 };
  }
}

/** Runs `fn`, sampling memory every 20 ms; returns its result, seconds, and memory at the start and at its peak. */
async function measured<T>(fn: () => Promise<T>): Promise<{ value: T; seconds: number; start: Memory; peak: Memory }> {
  (globalThis as { gc?: () => void }).gc?.();
  const start = memory();
  const peak = { ...start };
  const sample = () => {
    const m = memory();
    peak.anon = Math.max(peak.anon, m.anon);
    peak.file = Math.max(peak.file, m.file);
  };
  const timer = setInterval(sample, 20);
  const started = process.hrtime.bigint();
  try {
    const value = await fn();
    sample();
    return { value, seconds: Number(process.hrtime.bigint() - started) / 1e9, start, peak };
  } finally {
    clearInterval(timer);
  }
}

const describeMemory = (m: { start: Memory; peak: Memory }) =>
  `RSS anon ${formatBytes(m.start.anon)} at start, peak ${formatBytes(m.peak.anon)} (+${formatBytes(m.peak.anon - m.start.anon)}); file-backed peak ${formatBytes(m.peak.file)}`;

async function synthesise(repo: Repository, chunks: number, snapshots: number): Promise<void> {
  const perBlock = Math.ceil(chunks / snapshots);
  const blockTrees: Node[] = [];
  for (let b = 0; b < snapshots; b++) {
    const files: Node[] = [];
    for (let f = 0; f * CHUNKS_PER_FILE < perBlock; f++) {
      const node = emptyNode(`f${String(f).padStart(5, '0')}.bin`, 'FILE');
      for (let c = 0; c < CHUNKS_PER_FILE && f * CHUNKS_PER_FILE + c < perBlock; c++) {
        const data = randomBytes(CHUNK_BYTES);
        const id = hash(data);
        await repo.writer.add({ id, kind: 'DATA', compressed: false, rawLength: data.length, data });
        node.chunks.push(id);
      }
      node.size = String(node.chunks.length * CHUNK_BYTES);
      files.push(node);
    }
    const tree = encodeTree(files);
    await repo.writer.add({ id: hash(tree), kind: 'TREE', compressed: false, rawLength: tree.length, data: tree });
    const dirNode = emptyNode(`block${String(b).padStart(4, '0')}`, 'DIR');
    dirNode.subtree = hash(tree);
    blockTrees.push(dirNode);
  }
  const roots: Buffer[] = [];
  for (let s = 0; s < snapshots; s++) {
    const root = encodeTree(blockTrees.slice(Math.max(0, s - WINDOW + 1), s + 1));
    roots.push(hash(root));
    await repo.writer.add({ id: hash(root), kind: 'TREE', compressed: false, rawLength: root.length, data: root });
  }
  await repo.writer.flush();
  for (let s = 0; s < snapshots; s++) {
    const time = new Date(Date.UTC(2024, 0, 1) + s * 3_600_000).toISOString();
    const summary = { files: '0', dirs: '0', bytes: '0', bytesRead: '0', newBytes: '0', newChunks: '0', durationSeconds: 0, errors: '0', symlinks: '0' };
    await repo.writeSnapshot({ version: 1, dataset: 'bench', host: 'h', paths: ['/data'], tags: [], time, parent: '', rootTree: toHex(roots[s]), summary, clientVersion: 'bench' });
  }
}

function open(dir: string): Promise<Repository> {
  return Repository.open({ name: 'bench', store: new FileStore(path.join(dir, 'store')), indexDir: path.join(dir, 'index'), log: createLogger('warn', 'bench'), packSize: 1024 * 1024 });
}

/** The measured half, in a process of its own so that synthesis leaves nothing in its memory. */
async function pruneOnly(dir: string, snapshots: number): Promise<void> {
  const repo = await open(dir);
  try {
    const removed = (await forget(repo, { policy: { last: Math.ceil(snapshots / 2), hourly: 0, daily: 0, weekly: 0, monthly: 0, yearly: 0, tags: [] }, dataset: 'bench' })).filter((d) => !d.keep).length;
    const p = await measured(() => prune(repo, { maxUnused: 0.05 }));
    const c = await measured(() => check(repo));
    const r = p.value;
    console.log(`forgot ${removed} snapshots`);
    console.log(`prune: ${p.seconds.toFixed(2)} s, ${describeMemory(p)}`);
    console.log(`  ${r.chunksRemoved} blobs removed, ${r.packsDeleted} packs deleted, ${r.packsRewritten} rewritten, ${formatBytes(r.bytesFreed)} freed, ${formatBytes(r.bytesUnusedKept)} unused kept`);
    console.log(`  requests ${JSON.stringify(r.requests)}`);
    console.log(`check (structure): ${c.seconds.toFixed(2)} s, ${c.value.treesChecked} trees, ${c.value.problems.length} problems, ${describeMemory(c)}`);
    console.log(`process peak RSS, anon + file (getrusage): ${formatBytes(process.resourceUsage().maxRSS * 1024)}`);
    if (c.value.problems.length > 0) process.exitCode = 1;
  } finally {
    await repo.close();
  }
}

async function main(): Promise<void> {
  const chunks = arg('chunks', 100_000);
  const snapshots = arg('snapshots', 100);
  const only = process.argv.indexOf('--prune-only');
  if (only >= 0) return pruneOnly(process.argv[only + 1], snapshots);
  const dir = await mkdtemp(path.join(tmpdir(), 'cairn-prune-bench-'));
  try {
    const repo = await open(dir);
    const started = Date.now();
    await synthesise(repo, chunks, snapshots);
    await repo.close();
    console.log(`repository: ${chunks} chunks of ${CHUNK_BYTES} B, ${snapshots} snapshots, synthesised in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    const heap = arg('heap-mib', 0);
    const flags = ['--expose-gc', ...(heap > 0 ? [`--max-old-space-size=${heap}`] : [])];
    const child = spawnSync(process.execPath, [...flags, fileURLToPath(import.meta.url), '--prune-only', dir, '--snapshots', String(snapshots)], { stdio: 'inherit' });
    process.exitCode = child.status ?? 1;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
