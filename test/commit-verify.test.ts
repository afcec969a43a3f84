import { promises as fs } from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { CairnError, Code } from '../common/errors.js';
import { hash } from '../common/hash.js';
import type { Node } from '../common/messages.js';
import { emptyNode, encodeTree } from '../common/tree.js';
import { FileStore } from '../server/file-store.js';
import { Repository } from '../server/repository.js';
import { ALL_SESSIONS_TREE_BYTES, SESSION_TREE_BYTES, UploadedTrees } from '../server/sessions.js';
import { begin, commit, rawBlob, startInProcess, upload as uploadBlobs, type CheckOut } from './admin-helpers.js';
import { failure } from './auth-helpers.js';
import { cleanupTmp, cliJson, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';

afterAll(() => cleanupTmp());

async function openRepo(): Promise<{ repo: Repository; store: FileStore }> {
  const dir = tmpDir();
  const store = new FileStore(path.join(dir, 'store'));
  const repo = await Repository.open({ name: 'default', store, indexDir: path.join(dir, 'index'), log: pino({ level: 'silent' }) });
  return { repo, store };
}

/** Verifies and stores a blob as an Upload does, remembering it in `trees` if it is a tree. */
async function upload(repo: Repository, trees: UploadedTrees, kind: 'DATA' | 'TREE', data: Buffer): Promise<Buffer> {
  const id = hash(data);
  const received = repo.verifyBlob({ id, kind, compression: 'NONE', rawLength: data.length, data });
  if (received.refs) trees.remember(id.toString('hex'), received.refs);
  await repo.writer.add(received);
  return id;
}

function fileNode(name: string, chunks: Buffer[]): Node {
  return { ...emptyNode(name, 'FILE'), chunks, size: String(chunks.length) };
}

/** A root with one directory holding one file of two chunks; `stored` says which chunks are uploaded. */
async function snapshotTrees(repo: Repository, trees: UploadedTrees, stored = [true, true]): Promise<Buffer> {
  const chunks = [randomBytes(1000, 1), randomBytes(2000, 2)];
  const ids: Buffer[] = [];
  for (let i = 0; i < chunks.length; i++) ids.push(stored[i] ? await upload(repo, trees, 'DATA', chunks[i]!) : hash(chunks[i]!));
  const sub = await upload(repo, trees, 'TREE', encodeTree([fileNode('weights.bin', ids)]));
  const root = await upload(repo, trees, 'TREE', encodeTree([{ ...emptyNode('runs', 'DIR'), subtree: sub }]));
  await repo.writer.flush();
  return root;
}

describe('commit verification with the session\'s uploaded trees', () => {
  it('reads back none of the trees the session uploaded, and reads them without them', async () => {
    const plain = await openRepo();
    const rootA = await snapshotTrees(plain.repo, new UploadedTrees({ used: 0 }));
    const getsA = plain.store.counts().get;
    expect(await plain.repo.verifyComplete(rootA)).toBe(2);
    expect(plain.store.counts().get).toBeGreaterThan(getsA);

    const withTrees = await openRepo();
    const trees = new UploadedTrees({ used: 0 });
    const rootB = await snapshotTrees(withTrees.repo, trees);
    const getsB = withTrees.store.counts().get;
    expect(await withTrees.repo.verifyComplete(rootB, trees)).toBe(2);
    expect(withTrees.store.counts().get).toBe(getsB);
  });

  it('still refuses a remembered tree that names a chunk the repository lacks', async () => {
    const { repo } = await openRepo();
    const trees = new UploadedTrees({ used: 0 });
    const root = await snapshotTrees(repo, trees, [true, false]);
    const err = await repo.verifyComplete(root, trees).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CairnError);
    expect((err as CairnError).code).toBe(Code.FAILED_PRECONDITION);
    expect((err as CairnError).message).toMatch(/unknown chunk .* \(file \/runs\/weights\.bin\)/);
  });

  it('still refuses a root that is remembered but was never stored', async () => {
    const { repo } = await openRepo();
    const trees = new UploadedTrees({ used: 0 });
    const id = hash(encodeTree([fileNode('a', [])]));
    trees.remember(id.toString('hex'), { dirs: [], chunks: Buffer.alloc(0) });
    const err = await repo.verifyComplete(id, trees).catch((e: unknown) => e);
    expect((err as CairnError).code).toBe(Code.FAILED_PRECONDITION);
    expect((err as CairnError).message).toMatch(/unknown tree/);
  });
});

describe('UploadedTrees', () => {
  /** Refs whose chunk ids take `size` bytes: what they cost is that plus 256. */
  const tree = (i: number, size: number) => ({ hex: i.toString(16).padStart(64, '0'), refs: { dirs: [], chunks: Buffer.alloc(size, i) } });

  it('keeps a session\'s trees up to SESSION_TREE_BYTES, then reads the rest back', () => {
    const trees = new UploadedTrees({ used: 0 });
    const size = 1024 * 1024;
    const n = Math.floor(SESSION_TREE_BYTES / size) + 2;
    for (let i = 0; i < n; i++) trees.remember(tree(i, size).hex, tree(i, size).refs);
    expect(trees.get(tree(0, size).hex)).toBeDefined();
    expect(trees.get(tree(n - 1, size).hex)).toBeUndefined();
  });

  it('shares ALL_SESSIONS_TREE_BYTES between sessions and gets it back when one ends', () => {
    const shared = { used: 0 };
    // Trees that cost a quarter of a session's bound each.
    const size = SESSION_TREE_BYTES / 4 - 256;
    const full = Array.from({ length: ALL_SESSIONS_TREE_BYTES / SESSION_TREE_BYTES }, () => new UploadedTrees(shared));
    let i = 0;
    for (const s of full) for (let k = 0; k < 4; k++, i++) s.remember(tree(i, size).hex, tree(i, size).refs);
    expect(shared.used).toBe(ALL_SESSIONS_TREE_BYTES);
    const late = new UploadedTrees(shared);
    late.remember(tree(i, 1000).hex, tree(i, 1000).refs);
    expect(late.get(tree(i, 1000).hex)).toBeUndefined();
    full[0]!.release();
    late.remember(tree(i, 1000).hex, tree(i, 1000).refs);
    expect(late.get(tree(i, 1000).hex)).toBeDefined();
    for (const s of [...full, late]) s.release();
    expect(shared.used).toBe(0);
  });
});

describe('a file whose bytes are a tree encoding (a copied tree cache)', () => {
  /** The tree cache file of `root`, written by the snapshot that made it. */
  async function cachedTree(cacheDir: string, root: string): Promise<Buffer> {
    for (const f of await fs.readdir(cacheDir, { recursive: true })) if (path.basename(f) === root) return fs.readFile(path.join(cacheDir, f));
    throw new Error(`tree ${root} is not in ${cacheDir}`);
  }

  it('a commit naming a plain data chunk as its root is the client\'s mistake (FAILED_PRECONDITION), not damage', async () => {
    const srv = await startInProcess();
    try {
      const chunk = rawBlob(randomBytes(5000, 9));
      const s = await begin(srv.conn, 'x');
      await uploadBlobs(srv.conn, s.sessionId, [chunk]);
      expect(await failure(commit(srv.conn, s.sessionId, chunk))).toMatch(/^FAILED_PRECONDITION: tree [0-9a-f]{64}: /);
    } finally {
      await srv.stop();
    }
  });

  it('backs up, restores, prunes and checks, whether the tree or the file was stored first', async () => {
    const base = tmpDir();
    const src = path.join(base, 'src');
    await writeFile(path.join(src, 'f'), 'hello');
    const first = await startServer();
    let second: ServerHandle | undefined;
    try {
      const env = { CAIRN_CACHE_DIR: path.join(base, 'cache') };
      const made = await cliJson<{ snapshot: { rootTree: string } }>(['snapshot', src, '--dataset', 'src', '--host', 'h'], { server: first.addr, env });
      const copy = path.join(base, 'copy');
      await writeFile(path.join(copy, 'tree.bin'), await cachedTree(env.CAIRN_CACHE_DIR, made.snapshot.rootTree));

      // The tree first: the file's one chunk is the stored tree.
      for (let i = 0; i < 2; i++) await cliJson(['snapshot', copy, '--dataset', 'copy', '--host', 'h'], { server: first.addr, env });
      await cliJson(['restore', '--snapshot', 'latest', '--dataset', 'copy', path.join(base, 'r1')], { server: first.addr, env });
      expect(await describeTree(path.join(base, 'r1'))).toEqual(await describeTree(copy));

      // The file first: the tree of the later snapshot is the stored file chunk.
      second = await startServer();
      const opts = { server: second.addr, env: { CAIRN_CACHE_DIR: path.join(base, 'cache2') } };
      const copied = await cliJson<{ snapshot: { id: string } }>(['snapshot', copy, '--dataset', 'copy', '--host', 'h'], opts);
      const later = await cliJson<{ snapshot: { id: string; rootTree: string } }>(['snapshot', src, '--dataset', 'src', '--host', 'h'], opts);
      expect(later.snapshot.rootTree).toBe(made.snapshot.rootTree);
      const ls = await runCli(['ls', later.snapshot.id], opts);
      expect(ls.stdout).toContain('f');
      await cliJson(['forget', copied.snapshot.id], opts);
      await cliJson(['prune', '--max-unused', '0%'], opts);
      const checked = await cliJson<CheckOut>(['check', '--read-data'], opts);
      expect(checked.ok).toBe(true);
      await cliJson(['restore', '--snapshot', later.snapshot.id, path.join(base, 'r2')], opts);
      expect(await describeTree(path.join(base, 'r2'))).toEqual(await describeTree(src));
    } finally {
      await first.stop();
      await second?.stop();
    }
  }, 60_000);
});
