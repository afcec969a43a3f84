import { spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Level } from 'level';
import { afterAll, describe, expect, it } from 'vitest';
import { hash, toHex } from '../common/hash.js';
import { parsePack } from '../common/pack-format.js';
import { chunkKey, decodeLocation, encodeLocation } from '../server/index-db.js';
import { begin, rawBlob, restored, startInProcess, type CheckOut, type PruneOut } from './admin-helpers.js';
import { createRepo, createToken } from './auth-helpers.js';
import { cleanupTmp, cliJson, ROOT, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { describeTree, randomBytes, writeFile } from './tree-gen.js';

afterAll(() => cleanupTmp());

async function storeFiles(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { withFileTypes: true, recursive: true }).catch(() => []);
  return entries.filter((e) => e.isFile() && !e.name.includes('.tmp-')).map((e) => path.join(e.parentPath, e.name));
}

function rebuild(storeSpec: string, indexDir: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [path.join(ROOT, 'dist/server/main.js'), 'rebuild-index', '--store', storeSpec, '--index', indexDir, '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

async function snap(server: ServerHandle, dir: string, dataset: string, time: string): Promise<string> {
  return (await cliJson<{ snapshot: { id: string } }>(['snapshot', dir, '--dataset', dataset, '--host', 'h', '--time', time], { server: server.addr })).snapshot.id;
}

describe('check', () => {
  it('a flipped byte in a pack: --read-data names the pack, the chunk, and the snapshots and files it hurts', async () => {
    const base = tmpDir();
    const server = await startServer({ args: ['--pack-size', '256KiB'] });
    const opts = { server: server.addr };
    try {
      const data = path.join(base, 'data');
      const report = randomBytes(30_000, 5);
      await writeFile(path.join(data, 'docs/report.bin'), report);
      for (let i = 0; i < 10; i++) await writeFile(path.join(data, `runs/r${i}.bin`), randomBytes(60_000, 10 + i));
      const s1 = await snap(server, data, 'exp', '2024-06-01T00:00:00Z');
      await writeFile(path.join(data, 'runs/new.bin'), randomBytes(20_000, 50));
      const s2 = await snap(server, data, 'exp', '2024-06-02T00:00:00Z');
      const otherDir = path.join(base, 'other');
      await writeFile(path.join(otherDir, 'x.bin'), randomBytes(10_000, 60));
      await snap(server, otherDir, 'other', '2024-06-03T00:00:00Z');

      const clean = await cliJson<CheckOut>(['check', '--read-data'], opts);
      expect(clean).toMatchObject({ ok: true, snapshotsChecked: 3 });
      // n/m groups are disjoint and together read every pack; a share reads about that share.
      const part1 = await cliJson<CheckOut>(['check', '--read-data-subset', '1/2'], opts);
      const part2 = await cliJson<CheckOut>(['check', '--read-data-subset', '2/2'], opts);
      expect(part1.packsRead + part2.packsRead).toBe(clean.packsChecked);
      expect(part1.blobsRead + part2.blobsRead).toBe(clean.blobsRead);
      const half = await cliJson<CheckOut>(['check', '--read-data-subset', '50%'], opts);
      expect(half.packsRead).toBe(Math.ceil(clean.packsChecked / 2));

      const chunk = toHex(hash(report));
      let packFile = '';
      let offset = -1;
      for (const f of await storeFiles(path.join(server.storeSpec.slice('file:'.length), 'repos/default/packs'))) {
        const e = parsePack(await fs.readFile(f), f).find((x) => toHex(x.id) === chunk);
        if (e) [packFile, offset] = [f, e.offset + 1000];
      }
      expect(offset).toBeGreaterThan(0);
      const fh = await fs.open(packFile, 'r+');
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, offset);
      b[0] ^= 0x40;
      await fh.write(b, 0, 1, offset);
      await fh.close();
      const pack = path.basename(packFile);

      // The structure pass reads trees, not file data: the flip is invisible to it.
      expect((await cliJson<CheckOut>(['check'], opts)).ok).toBe(true);

      const r = await runCli(['--json', 'check', '--read-data'], opts);
      expect(r.code).toBe(1);
      const out = JSON.parse(r.stdout) as CheckOut;
      expect(out.ok).toBe(false);
      const corrupt = out.problems.find((p) => p.kind === 'blob-corrupt');
      expect(corrupt).toMatchObject({ pack, chunk, snapshots: [s1, s2].sort(), files: ['/docs/report.bin'] });
      expect(out.problems.find((p) => p.kind === 'pack-hash')).toMatchObject({ pack });
      expect(out.problems).toHaveLength(2);

      const human = await runCli(['check', '--read-data'], opts);
      expect(human.code).toBe(1);
      for (const s of [pack, chunk, '/docs/report.bin', s1.slice(0, 8), s2.slice(0, 8), 'blob-corrupt']) expect(human.stdout).toContain(s);
      const restore = await runCli(['restore', '--snapshot', s1, path.join(base, 'out')], opts);
      expect(restore.code).not.toBe(0);
      expect(restore.stderr).toContain(chunk);
    } finally {
      await server.stop();
    }
  });
});

/**
 * A repository whose index was damaged behind the server's back: `backup` fills it (files go
 * under `data`), the server stops, `damage` edits its LevelDB index as a disk fault or a bug
 * would, and `inspect` runs against a server started over the result.
 */
async function withDamagedIndex(
  serverArgs: string[],
  backup: (server: ServerHandle, data: string) => Promise<void>,
  damage: (db: Level<string, Buffer>) => Promise<void>,
  inspect: (server: ServerHandle) => Promise<void>,
): Promise<void> {
  const base = tmpDir();
  const where = { store: `file:${path.join(base, 'store')}`, indexDir: path.join(base, 'index') };
  let server = await startServer({ ...where, args: serverArgs });
  try {
    await backup(server, path.join(base, 'data'));
  } finally {
    await server.stop();
  }
  const db = new Level<string, Buffer>(path.join(where.indexDir, 'default'), { keyEncoding: 'utf8', valueEncoding: 'buffer' });
  try {
    await damage(db);
  } finally {
    await db.close();
  }
  server = await startServer(where);
  try {
    await inspect(server);
  } finally {
    await server.stop();
  }
}

describe('check of snapshot objects', () => {
  it('a snapshot object that no longer hashes to its id is reported, as a rebuild would drop it', async () => {
    const base = tmpDir();
    const server = await startServer();
    try {
      const data = path.join(base, 'data');
      await writeFile(path.join(data, 'a.txt'), 'alpha');
      const id = await snap(server, data, 'exp', '2024-06-01T00:00:00Z');
      const object = path.join(server.storeSpec.slice('file:'.length), 'repos/default/snapshots', id);
      const text = await fs.readFile(object, 'utf8');
      await fs.writeFile(object, text.replace('"exp"', '"exq"'));
      const r = await runCli(['--json', 'check'], { server: server.addr });
      expect(r.code).toBe(1);
      const out = JSON.parse(r.stdout) as CheckOut;
      expect(out.problems.map((p) => [p.kind, p.message])).toEqual([
        ['snapshot-object-corrupt', `snapshots/${id} does not hash to its name (rebuild-index would lose snapshot ${id})`],
      ]);
    } finally {
      await server.stop();
    }
  });
});

describe('check --read-data against the index', () => {
  it('an index entry pointing into a pack whose trailer does not list the blob is reported', async () => {
    const a = randomBytes(300_000, 71);
    const b = randomBytes(300_000, 72);
    let bPack = '';
    await withDamagedIndex(
      ['--pack-size', '256KiB'],
      async (server, data) => {
        await writeFile(path.join(data, 'a.bin'), a);
        await snap(server, data, 'exp', '2024-06-01T00:00:00Z');
        await writeFile(path.join(data, 'b.bin'), b);
        await snap(server, data, 'exp', '2024-06-02T00:00:00Z');
      },
      // a.bin's chunk re-pointed at b.bin's place: another pack, whose trailer never listed it.
      async (db) => {
        const aKey = chunkKey(hash(a));
        const bLoc = decodeLocation((await db.get(chunkKey(hash(b))))!);
        expect(toHex(decodeLocation((await db.get(aKey))!).pack)).not.toBe(toHex(bLoc.pack));
        bPack = toHex(bLoc.pack);
        await db.put(aKey, encodeLocation(bLoc));
      },
      async (server) => {
        const r = await runCli(['--json', 'check', '--read-data'], { server: server.addr });
        expect(r.code).toBe(1);
        const out = JSON.parse(r.stdout) as CheckOut;
        expect(out.problems.map((p) => [p.kind, p.chunk, p.pack])).toEqual([['index-mismatch', toHex(hash(a)), bPack]]);
        expect(out.problems[0]!.files).toEqual(['/a.bin']);
      },
    );
  });
});

describe('check of a badly damaged repository', () => {
  it('lists the first 1,000 problems and the first of each later kind, and counts them all by kind', async () => {
    const gone: string[] = [];
    let packs = '';
    await withDamagedIndex(
      [],
      async (server, data) => {
        for (let i = 0; i < 1200; i++) await writeFile(path.join(data, `d${i % 10}/f${i}.txt`), `file number ${i}`);
        await snap(server, data, 'exp', '2024-06-01T00:00:00Z');
        packs = path.join(server.storeSpec.slice('file:'.length), 'repos/default/packs');
      },
      // Every data chunk unindexed: one missing-chunk problem per file, found by the structure
      // pass. Then a byte of the data pack flipped: a pack-hash problem only --read-data finds, later.
      async (db) => {
        for await (const [key, value] of db.iterator({ gte: 'chunk/', lt: 'chunk/\xff' })) if (decodeLocation(value).kind === 'DATA') gone.push(key);
        await db.batch(gone.map((key) => ({ type: 'del' as const, key })));
        expect(gone).toHaveLength(1200);
        const dataPacks: string[] = [];
        for await (const [key, value] of db.iterator({ gte: 'pack/', lt: 'pack/\xff' })) if (JSON.parse(value.toString('utf8')).kind === 'DATA') dataPacks.push(key.slice('pack/'.length));
        expect(dataPacks).toHaveLength(1);
        const file = (await storeFiles(packs)).find((f) => path.basename(f) === dataPacks[0])!;
        const fh = await fs.open(file, 'r+');
        await fh.write(Buffer.from('!'), 0, 1, 0);
        await fh.close();
      },
      async (server) => {
        const out = await runCli(['--json', 'check', '--read-data'], { server: server.addr });
        expect(out.code).toBe(1);
        const r = JSON.parse(out.stdout) as CheckOut;
        expect(r.problemCounts).toEqual({ 'blob-corrupt': 1, 'missing-chunk': 1200, 'pack-hash': 1 });
        expect(r.problems).toHaveLength(1002);
        expect(r.problemsOmitted).toBe(200);
        expect(r.problems.slice(0, 1000).every((p) => p.kind === 'missing-chunk' && p.files.length === 1)).toBe(true);
        expect(r.problems.slice(1000).map((p) => p.kind).sort()).toEqual(['blob-corrupt', 'pack-hash']);
        const human = await runCli(['check', '--read-data'], { server: server.addr });
        expect(human.code).toBe(1);
        expect(human.stdout).toContain('1202 problems found (1 blob-corrupt, 1200 missing-chunk, 1 pack-hash); 1002 are listed, the first of each kind among them:');
      },
    );
  }, 60_000);

  it('lists at most 32 MiB of file paths across problems, and counts the rest', async () => {
    // Ten contents, each in 1,000 files under ~3.8 KB paths: ten problems of 1,000 files, 38 MB of paths.
    const deep = Array.from({ length: 15 }, (_, i) => `${String(i).padStart(2, '0')}${'d'.repeat(248)}`).join('/');
    await withDamagedIndex(
      [],
      async (server, data) => {
        for (let c = 0; c < 10; c++) {
          for (let i = 0; i < 1000; i++) await writeFile(path.join(data, `c${c}`, deep, `f${i}`), `content ${c}`);
        }
        await snap(server, data, 'exp', '2024-06-01T00:00:00Z');
      },
      (db) => db.batch(Array.from({ length: 10 }, (_, c) => ({ type: 'del' as const, key: chunkKey(hash(Buffer.from(`content ${c}`))) }))),
      async (server) => {
        const out = await runCli(['--json', 'check'], { server: server.addr });
        expect(out.code).toBe(1);
        const r = JSON.parse(out.stdout) as CheckOut;
        expect(r.problems).toHaveLength(10);
        const listed = r.problems.reduce((n, p) => n + p.files.reduce((m, f) => m + f.length - 1, 0), 0);
        expect(listed).toBeLessThanOrEqual(32 * 1024 * 1024);
        expect(listed).toBeGreaterThan(30 * 1024 * 1024);
        expect(r.problems.some((p) => / \(and \d+ more files\)$/.test(p.message))).toBe(true);
      },
    );
  }, 120_000);
});

/** Mount namespaces let an unprivileged test mount a small tmpfs; where they are off, the full-disk test cannot run. */
const canMountTmpfs = spawnSync('unshare', ['-rm', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs "$1"', 'sh', os.tmpdir()], { stdio: 'ignore' }).status === 0;

describe('scratch space', () => {
  it.skipIf(!canMountTmpfs)('on a full disk, prune says that its scratch index needs space, and where, whether it cannot start or runs out part way', () => {
    const dir = tmpDir();
    // The run writes ~3 MB of marks into the scratch index, as a prune's mark phase does.
    const script = `import { Scratch } from ${JSON.stringify(path.join(ROOT, 'dist/server/scratch.js'))};
      const marks = async (s) => { for (let i = 0; i < 50; i++) await s.db.putMarkers(Array.from({ length: 1000 }, (_, j) => 'm/' + i + '/' + j + '/' + 'f'.repeat(40))); return 'ran'; };
      await Scratch.run(process.argv[1] + '/default', 'prune', marks).then(console.log, (e) => console.log(e.code, e.message));`;
    // Filled whole, or with 64 KiB left: LevelDB then opens, and fails on a later write.
    for (const fill of ['bs=4k', 'bs=64k count=15']) {
      const r = spawnSync('unshare', ['-rm', 'sh', '-c', `mount -t tmpfs -o size=1m tmpfs "$1" && (dd if=/dev/zero of="$1/fill" ${fill} 2>/dev/null; exec "$2" --input-type=module -e "$3" "$1")`, 'sh', dir, process.execPath, script], { encoding: 'utf8' });
      expect(r.stdout.trim(), fill).toBe(`8 prune needs free space for its scratch index in ${dir}/.scratch, and that filesystem is full: free some space there (or move --index to a roomier disk) and run prune again; nothing was lost`);
    }
  });

  it('check and prune of one repository leave alone repositories named like their scratch directories', async () => {
    const base = tmpDir();
    const store = `file:${path.join(base, 'store')}`;
    const neighbours = ['default.scratch-check', 'default.scratch-prune'];
    for (const name of neighbours) await createRepo(store, name);
    const tokens: Record<string, string> = {};
    for (const name of ['default', ...neighbours]) tokens[name] = await createToken(store, name, 'admin', 'ops');
    const server = await startServer({ store, indexDir: path.join(base, 'index') });
    const as = (name: string) => ({ server: server.addr, env: { CAIRN_TOKEN: tokens[name] } });
    try {
      const data = path.join(base, 'data');
      await writeFile(path.join(data, 'x.bin'), randomBytes(300_000, 5));
      for (const name of ['default', ...neighbours]) await cliJson(['snapshot', data, '--dataset', 'exp', '--host', 'h'], as(name));
      expect((await cliJson<CheckOut>(['check'], as('default'))).ok).toBe(true);
      await cliJson<PruneOut>(['prune'], as('default'));
      for (const name of neighbours) {
        expect((await cliJson<CheckOut>(['check', '--read-data'], as(name))).ok).toBe(true);
        expect(await restored(server.addr, 'latest', as(name).env)).toEqual(await describeTree(data));
      }
    } finally {
      await server.stop();
    }
  }, 60_000);
});

describe('rebuild-index', () => {
  it('refuses while a server with an index elsewhere writes to the same store, and touches nothing of it', async () => {
    const base = tmpDir();
    const storeDir = path.join(base, 'store');
    const store = `file:${storeDir}`;
    const server = await startServer({ store, indexDir: path.join(base, 'index-a') });
    const data = path.join(base, 'data');
    await writeFile(path.join(data, 'a.bin'), randomBytes(50_000, 3));
    // What a pack write of the running server looks like between its write and its rename.
    const inFlight = path.join(storeDir, 'repos/default/in-flight.tmp-0123456789ab');
    const otherIndex = path.join(base, 'index-b');
    try {
      await snap(server, data, 'exp', '2024-07-01T00:00:00Z');
      await fs.writeFile(inFlight, 'a pack being written');
      const refused = await rebuild(store, otherIndex);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/FAILED_PRECONDITION: repository .* is held by another writer: .* pid \d+/);
      expect(await fs.readFile(inFlight, 'utf8')).toBe('a pack being written');
      expect(await fs.readdir(otherIndex).catch(() => [])).not.toContain('default');
    } finally {
      await server.stop();
    }
    // A store path with a typo is not a repository to initialise.
    const typo = await rebuild(`file:${storeDir}-typo`, otherIndex);
    expect(typo.code).toBe(1);
    expect(typo.stderr).toContain('NOT_FOUND: no repository default in this store (repos/default/ holds no config, snapshots, packs or index): nothing to rebuild');
    await expect(fs.access(`${storeDir}-typo/repos/default/config`)).rejects.toThrow();
    // A repository that lost only its config is rebuilt from the rest, and gets a new config.
    const config = path.join(storeDir, 'repos/default/config');
    await fs.rm(config);
    // Its lease released, the same rebuild goes ahead and clears what a crash would have left.
    const r = await rebuild(store, otherIndex);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ repository: 'default', snapshots: 1 });
    await fs.access(config);
    await expect(fs.access(inFlight)).rejects.toThrow();
  });

  it('LevelDB deleted: rebuilt from index segments, then from pack trailers alone; check passes and restores are byte-identical', async () => {
    const base = tmpDir();
    const storeDir = path.join(base, 'store');
    const where = { store: `file:${storeDir}`, indexDir: path.join(base, 'index') };
    let server = await startServer({ ...where, args: ['--pack-size', '256KiB'] });
    const dirs: string[] = [];
    const ids: string[] = [];
    for (let v = 0; v < 3; v++) {
      const d = path.join(base, `v${v}`);
      for (let i = 0; i < 8; i++) await writeFile(path.join(d, `f${i}.bin`), randomBytes(40_000, i < 4 ? 1 + i : 100 * v + i));
      dirs.push(d);
      ids.push(await snap(server, d, 'exp', `2024-07-0${v + 1}T00:00:00Z`));
    }
    let opts = { server: server.addr };
    await cliJson(['protect', ids[1]], opts);
    await cliJson(['policy', 'set', '--dataset', 'exp', '--keep-last', '5', '--keep-tag', 'release'], opts);
    // Rebuild must also cope with the index as prune leaves it: fresh segments, old ones gone.
    await cliJson(['forget', ids[0]], opts);
    expect((await cliJson<PruneOut>(['prune', '--max-unused', '0%'], opts)).chunksRemoved).toBeGreaterThan(0);

    const locked = await rebuild(where.store, where.indexDir);
    expect(locked.code).toBe(1);
    expect(locked.stderr).toContain('is in use: stop cairn-server');
    await server.stop();

    for (const round of ['segments', 'trailers']) {
      await fs.rm(where.indexDir, { recursive: true, force: true });
      if (round === 'trailers') for (const f of await storeFiles(path.join(storeDir, 'repos/default/index'))) await fs.rm(f);
      const r = await rebuild(where.store, where.indexDir);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ repository: 'default', snapshots: 2, policies: 1, protected: 1 });

      server = await startServer(where);
      opts = { server: server.addr };
      try {
        const check = await cliJson<CheckOut>(['check', '--read-data'], opts);
        expect(check).toMatchObject({ ok: true, snapshotsChecked: 2 });
        const hist = await runCli(['--json', 'history', '--dataset', 'exp'], opts);
        const listed = hist.stdout.trim().split('\n').map((l) => JSON.parse(l) as { id: string; protected: boolean });
        expect(listed.map((s) => [s.id, s.protected])).toEqual([
          [ids[2], false],
          [ids[1], true],
        ]);
        expect(await cliJson(['policy', 'show', '--dataset', 'exp'], opts)).toMatchObject({ keepLast: 5, keepTags: ['release'] });
        for (const i of [1, 2]) expect(await restored(server.addr, ids[i])).toEqual(await describeTree(dirs[i]));
      } finally {
        await server.stop();
      }
    }
  });
});

describe('rebuild-index of a pack with more entries than a call takes arguments', () => {
  it('indexes all 150,000 blobs of one pack from its segment', async () => {
    const srv = await startInProcess({ packSize: 64 * 1024 * 1024 });
    try {
      const repo = await srv.server.repository('default');
      const { sessionId } = await begin(srv.conn, 'tiny');
      // Small unique files fill one pack with more entries than Node passes as arguments (~125k).
      const blobs = Array.from({ length: 150_000 }, (_, i) => rawBlob(Buffer.from(`tiny file ${i}`)));
      const { call, result } = srv.conn.clientStream<unknown>('Upload');
      for (let i = 0; i < blobs.length; i += 5000) call.write({ sessionId, blobs: blobs.slice(i, i + 5000) });
      call.end();
      await result;
      await repo.writer.flush();
      const ids = blobs.map((b) => b.id);
      expect((await repo.present(ids)).every(Boolean)).toBe(true);
      await srv.conn.unary('AbortBackup', { sessionId });
      const rebuilt = await repo.rebuildIndex();
      expect(rebuilt.segments).toBe(1);
      expect(rebuilt.packsFromTrailers).toBe(0);
      expect((await repo.present(ids)).filter((p) => !p)).toEqual([]);
    } finally {
      await srv.stop();
    }
  }, 60_000);
});
