import { promises as fs, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { cleanupTmp, cliJson, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';

const KiB = 1024;

interface SnapshotOut {
  snapshot: { id: string; summary: { newChunks: string; files: string } };
  stats: { files: number; bytesRead: number; filesReused: number; skipped: number };
}

interface DryRunOut {
  dryRun: true;
  parent: string | null;
  read: { files: number; bytes: number };
  unchanged: { files: number; bytes: number };
  skipped: number;
  upload: { chunks: number; bytes: number; trees: number; treeBytes: number };
}

describe('snapshot safety rails through the CLI', () => {
  let server: ServerHandle;
  const cli = (args: string[]) => runCli(args, { server: server.addr });
  const json = <T>(args: string[]) => cliJson<T>(args, { server: server.addr });

  async function history(dataset: string): Promise<string[]> {
    const r = await cli(['--json', 'history', '--dataset', dataset]);
    return r.stdout
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => (JSON.parse(l) as { id: string }).id);
  }

  async function packCount(): Promise<number> {
    let n = 0;
    async function walk(d: string): Promise<void> {
      for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) await walk(p);
        else if (p.includes(`${path.sep}packs${path.sep}`)) n++;
      }
    }
    await walk(server.storeSpec.slice('file:'.length));
    return n;
  }

  const sessionsStarted = (dataset: string) => server.logs.filter((l) => l.includes('"backup started"') && l.includes(`"dataset":"${dataset}"`)).length;

  beforeAll(async () => {
    // Small packs: any blob a refused snapshot let through would reach the store as a pack at once.
    server = await startServer({ args: ['--pack-size', '64KiB'] });
  });
  afterAll(async () => {
    await server?.stop();
    cleanupTmp();
  });

  it('applies gitignore rules end to end: anchored patterns, dir-only patterns, nested negations, defaults, CACHEDIR.TAG', async () => {
    const ws = path.join(tmpDir(), 'ws');
    const files = [
      'proj/data/big.bin',
      'proj/sub/data/deep.bin',
      'proj/reports/q1.csv',
      'proj/src/train.py',
      'proj/src/__pycache__/train.cpython-312.pyc',
      'proj/scratch/keep.txt',
      'other/data',
      'scratch/tmp.bin',
      'models/activations/m.npy',
      'extraction/run1/activations/a.npy',
      'extraction/run1/activations/a.npy.part',
      'extraction/run1/logits.npy',
      'notes/debug.log',
      'notes/keep.log',
      'node_modules/x/index.js',
      'cache/blob',
    ];
    for (const f of files) await writeFile(path.join(ws, f), f);
    await writeFile(path.join(ws, 'cache/CACHEDIR.TAG'), 'Signature: 8a477f597d28d172789f06886806bc55\n');
    const excludes = ['*/data/', '*/reports/', '/scratch/', 'activations/', '!extraction/*/activations/', '*.part', '*.log', '!keep.log'];
    const snap = await json<SnapshotOut>(['snapshot', ws, '--dataset', 'rules', '--host', 'h', ...excludes.flatMap((e) => ['--exclude', e])]);
    const ls = await cli(['--json', 'ls', '-R', snap.snapshot.id]);
    const listed = ls.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { path: string; type: string })
      .filter((e) => e.type === 'file')
      .map((e) => e.path);
    expect(listed.sort()).toEqual(
      [
        // '*/data/' has a slash in the middle, so it is anchored: depth 2 only, and directories only.
        'proj/sub/data/deep.bin',
        'other/data',
        'proj/src/train.py',
        // '/scratch/' is anchored at the root.
        'proj/scratch/keep.txt',
        // Re-included by the negation, because its parent directories were not excluded...
        'extraction/run1/activations/a.npy',
        'extraction/run1/logits.npy',
        'notes/keep.log',
      ].sort(),
    );
    // ...while a later rule still wins over the negation.
    expect(listed).not.toContain('extraction/run1/activations/a.npy.part');
  });

  it('--include keeps only matching files, still minus the excludes; a restore holds exactly those', async () => {
    const ws = path.join(tmpDir(), 'inc');
    for (const f of ['a/train.py', 'a/b/eval.py', 'a/__pycache__/eval.pyc', 'notes/todo.txt', 'data/x.bin', 'README.md']) await writeFile(path.join(ws, f), f);
    await json<SnapshotOut>(['snapshot', ws, '--dataset', 'inc', '--host', 'h', '--include', '*.py', '--include', '/notes/', '--include', '*.pyc']);
    const target = path.join(tmpDir(), 'inc-restored');
    expect((await cli(['restore', '--dataset', 'inc', target])).code).toBe(0);
    const restored = (await describeTree(target)).filter((e) => e.type === 'file').map((e) => e.path);
    // *.pyc is included but __pycache__/ is a default exclude, and excludes win.
    expect(restored.sort()).toEqual(['a/b/eval.py', 'a/train.py', 'notes/todo.txt']);
  });

  it('--max-size refuses before a session opens, names the largest directories, and uploads nothing', async () => {
    const ws = path.join(tmpDir(), 'big');
    await writeFile(path.join(ws, 'checkpoints/step1.bin'), randomBytes(300 * KiB, 1));
    await writeFile(path.join(ws, 'checkpoints/step2.bin'), randomBytes(300 * KiB, 2));
    await writeFile(path.join(ws, 'env/lib/site-packages/torch.so'), randomBytes(200 * KiB, 3));
    await writeFile(path.join(ws, 'reports/r.txt'), randomBytes(10 * KiB, 4));
    const packsBefore = await packCount();
    const r = await cli(['snapshot', ws, '--dataset', 'limited', '--host', 'h', '--max-size', '256KiB']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('FAILED_PRECONDITION: dataset limited: 810 KiB in 4 files is over its size limit of 256 KiB');
    expect(r.stderr).toContain('nothing was uploaded');
    // Largest first; env/ and env/lib/ are all site-packages, so the deepest of them stands for them.
    expect(r.stderr).toContain('Largest directories: checkpoints/ 600 KiB (2 files), env/lib/site-packages/ 200 KiB (1 files), reports/ 10.0 KiB (1 files)');
    expect(r.stderr).toContain("--exclude 'checkpoints/'");
    expect(sessionsStarted('limited')).toBe(0);
    expect(await history('limited')).toEqual([]);
    expect(await packCount()).toBe(packsBefore);
    // The limit counts what the excludes leave: without checkpoints/ it fits.
    const ok = await json<SnapshotOut>(['snapshot', ws, '--dataset', 'limited', '--host', 'h', '--max-size', '256KiB', '--exclude', 'checkpoints/']);
    expect(ok.stats.files).toBe(2);
  });

  it('the pre-scan of a directory of 120,000 files fits a 64 MB heap (an lstat result per entry took ~1.2 KB)', async () => {
    const dir = path.join(tmpDir(), 'flat');
    await fs.mkdir(dir, { recursive: true });
    for (let i = 0; i < 120_000; i++) writeFileSync(path.join(dir, `f${i}.json`), '{}');
    const r = await runCli(['snapshot', dir, '--dataset', 'flat', '--host', 'h', '--max-size', '1'], { server: server.addr, env: { NODE_OPTIONS: '--max-old-space-size=64' } });
    expect(r.stderr).toContain('FAILED_PRECONDITION: dataset flat: 234 KiB in 120000 files is over its size limit of 1 B');
    expect(r.code).toBe(1);
  }, 60_000);

  it('the shrink guard refuses a dataset that lost most of its files, aborts the session and uploads nothing; --allow-shrink records it', async () => {
    const ws = path.join(tmpDir(), 'shrink');
    for (let i = 0; i < 10; i++) await writeFile(path.join(ws, `run${i}.bin`), randomBytes(20 * KiB, 10 + i));
    const first = await json<SnapshotOut>(['snapshot', ws, '--dataset', 'shrinky', '--host', 'h']);
    for (let i = 0; i < 7; i++) await fs.rm(path.join(ws, `run${i}.bin`));
    // New data a leaking guard would upload: big enough to fill and seal a pack.
    await writeFile(path.join(ws, 'new.bin'), randomBytes(200 * KiB, 99));
    const packsBefore = await packCount();
    const r = await cli(['snapshot', ws, '--dataset', 'shrinky', '--host', 'h']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`FAILED_PRECONDITION: dataset shrinky@h shrank since its last snapshot ${first.snapshot.id.slice(0, 8)}`);
    expect(r.stderr).toContain('4 files, 260 KiB now against 10 files, 200 KiB then; 60% of the files and 0% of the bytes are gone, more than the 50% the shrink guard allows');
    expect(await history('shrinky')).toEqual([first.snapshot.id]);
    expect(await packCount()).toBe(packsBefore);
    const aborted = server.logs.filter((l) => l.includes('"backup aborted"')).length;
    expect(aborted).toBeGreaterThan(0);
    // A looser threshold lets the same change through.
    const loose = await runCli(['snapshot', ws, '--dataset', 'shrinky', '--host', 'h', '--max-shrink', '70%', '--dry-run'], { server: server.addr });
    expect(loose.code).toBe(0);
    const allowed = await json<SnapshotOut>(['snapshot', ws, '--dataset', 'shrinky', '--host', 'h', '--allow-shrink']);
    expect(allowed.stats.files).toBe(4);
    expect((await history('shrinky')).length).toBe(2);
    // The measure is sensitive: the same change, recorded, does add packs.
    expect(await packCount()).toBeGreaterThan(packsBefore);
  });

  it('a data dir that comes up empty (a failed mount) never becomes the newest snapshot, so retention keeps the good one', async () => {
    const mount = path.join(tmpDir(), 'mnt');
    for (let i = 0; i < 3; i++) await writeFile(path.join(mount, `games/g${i}.json`), `{"game":${i}}`);
    expect((await cli(['policy', 'set', '--dataset', 'selfplay', '--keep-last', '1'])).code).toBe(0);
    const good = await json<SnapshotOut>(['snapshot', mount, '--dataset', 'selfplay', '--host', 'h']);
    await fs.rm(path.join(mount, 'games'), { recursive: true });
    const r = await cli(['snapshot', mount, '--dataset', 'selfplay', '--host', 'h']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`FAILED_PRECONDITION: dataset selfplay: ${mount} holds no files to back up`);
    expect(sessionsStarted('selfplay')).toBe(1);
    expect(await history('selfplay')).toEqual([good.snapshot.id]);
    // Excluding everything is as empty as an unmounted volume, first snapshot or not.
    const fresh = path.join(tmpDir(), 'only-logs');
    await writeFile(path.join(fresh, 'a.log'), 'x');
    const r2 = await cli(['snapshot', fresh, '--dataset', 'logs', '--host', 'h', '--exclude', '*.log']);
    expect(r2.code).toBe(1);
    expect(r2.stderr).toContain('holds no files to back up (1 entries excluded)');
  });

  /**
   * A snapshot whose data goes away after the pre-scan (the volume unmounts, a job empties
   * it), by way of a real connection whose BeginBackup reply is held until the files are gone.
   */
  async function snapshotLosingData(root: string, dataset: string, lose: () => Promise<void>, allowShrink = false) {
    // From the build: a snapshot runs worker threads (`npm test` builds first).
    const { runBackup } = (await import('../dist/client/backup.js')) as typeof import('../client/backup.js');
    const { Connection } = (await import('../dist/client/connection.js')) as typeof import('../client/connection.js');
    const { ExcludeMatcher } = (await import('../dist/client/excludes.js')) as typeof import('../client/excludes.js');
    const conn = new Connection({ server: server.addr });
    const unary = conn.unary.bind(conn);
    conn.unary = (async (method: string, req: unknown, channel?: number) => {
      const reply = await unary(method, req, channel);
      if (method === 'BeginBackup') await lose();
      return reply;
    }) as typeof conn.unary;
    const excludes = await ExcludeMatcher.create({ excludes: [], includes: [], excludeFiles: [], defaultExcludes: true, excludeCaches: true });
    try {
      return await runBackup(conn, { paths: [root], dataset, host: 'h', tags: [], excludes, allowShrink });
    } finally {
      conn.close();
    }
  }

  it('data that goes away after the pre-scan is caught by the guards again before the commit: nothing recorded, retention keeps the good snapshot', async () => {
    const ws = path.join(tmpDir(), 'vanishing');
    await writeFile(path.join(ws, 'a/notes.txt'), 'kept');
    for (let i = 0; i < 20; i++) await writeFile(path.join(ws, `z/g${i}.bin`), randomBytes(3 * KiB, 300 + i));
    expect((await cli(['policy', 'set', '--dataset', 'vanish', '--keep-last', '1'])).code).toBe(0);
    const good = await json<SnapshotOut>(['snapshot', ws, '--dataset', 'vanish', '--host', 'h']);
    const aborted = () => server.logs.filter((l) => l.includes('"backup aborted"')).length;
    const abortedBefore = aborted();
    const emptyZ = async () => {
      await fs.rm(path.join(ws, 'z'), { recursive: true });
      await fs.mkdir(path.join(ws, 'z'));
    };
    const err = await snapshotLosingData(ws, 'vanish', emptyZ).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).toContain(`dataset vanish@h shrank since its last snapshot ${good.snapshot.id.slice(0, 8)}`);
    expect(err?.message).toContain('1 files, 4 B now against 21 files');
    expect(err?.message).toContain('the snapshot was not recorded');
    // The server logs asynchronously: its line may trail the refusal.
    await vi.waitFor(() => expect(aborted()).toBe(abortedBefore + 1));
    expect(await history('vanish')).toEqual([good.snapshot.id]);
    // The same loss, allowed, is recorded: the walk really did read one file.
    for (let i = 0; i < 20; i++) await writeFile(path.join(ws, `z/g${i}.bin`), randomBytes(3 * KiB, 300 + i));
    const allowed = await snapshotLosingData(ws, 'vanish', emptyZ, true);
    expect(allowed.stats.files).toBe(1);
    expect(await history('vanish')).toEqual([allowed.snapshot.id]);
  });

  it('a root that is emptied after the pre-scan of a first snapshot is refused as empty before the commit', async () => {
    const ws = path.join(tmpDir(), 'unmounting');
    for (let i = 0; i < 3; i++) await writeFile(path.join(ws, `games/g${i}.json`), `{"game":${i}}`);
    const err = await snapshotLosingData(ws, 'unmounting', () => fs.rm(path.join(ws, 'games'), { recursive: true })).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).toContain(`dataset unmounting: ${ws} holds no files to back up`);
    expect(err?.message).toContain('the snapshot was not recorded');
    expect(await history('unmounting')).toEqual([]);
  });

  it('--dry-run reports changed, unchanged, skipped and what would upload, records nothing, and predicts the real snapshot', async () => {
    const ws = path.join(tmpDir(), 'dry');
    for (let i = 0; i < 5; i++) await writeFile(path.join(ws, `f${i}.bin`), randomBytes(100 * KiB, 200 + i));
    await writeFile(path.join(ws, 'node_modules/x.js'), 'x');
    await json<SnapshotOut>(['snapshot', ws, '--dataset', 'dry', '--host', 'h']);
    await writeFile(path.join(ws, 'f0.bin'), randomBytes(300 * KiB, 300));
    await writeFile(path.join(ws, 'added.bin'), randomBytes(300 * KiB, 301));
    const packsBefore = await packCount();
    const dry = await json<DryRunOut>(['snapshot', ws, '--dataset', 'dry', '--host', 'h', '--dry-run']);
    expect(dry.read).toEqual({ files: 2, bytes: 600 * KiB });
    expect(dry.unchanged).toEqual({ files: 4, bytes: 400 * KiB });
    expect(dry.skipped).toBe(1);
    // Files under the chunker's 256 KiB minimum are one chunk; 300 KiB files are one or two.
    expect(dry.upload.chunks).toBeGreaterThanOrEqual(2);
    expect(dry.upload.bytes).toBe(600 * KiB);
    expect(dry.upload.trees).toBe(1);
    expect((await history('dry')).length).toBe(1);
    expect(await packCount()).toBe(packsBefore);
    const text = await cli(['snapshot', ws, '--dataset', 'dry', '--host', 'h', '--dry-run']);
    expect(text.stdout).toContain('read       2 new or changed files, 600 KiB');
    expect(text.stdout).toContain(`upload     ${dry.upload.chunks} chunks, 600 KiB new to the server`);
    const real = await json<SnapshotOut>(['snapshot', ws, '--dataset', 'dry', '--host', 'h']);
    expect(Number(real.snapshot.summary.newChunks)).toBe(dry.upload.chunks + dry.upload.trees);
    expect(real.stats.bytesRead).toBe(dry.read.bytes);
    expect(await packCount()).toBeGreaterThan(packsBefore);
  });
});
