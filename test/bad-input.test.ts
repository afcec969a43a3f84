import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Connection } from '../client/connection.js';
import { BlobCompressor } from '../common/compression.js';
import { hash, toHex } from '../common/hash.js';
import type { BeginBackupReply, Blob, Snapshot, UploadReply } from '../common/messages.js';
import { emptyNode, encodeTree } from '../common/tree.js';
import { cleanupTmp, cliJson, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { failure, rawBlob } from './auth-helpers.js';
import { randomBytes, writeFile } from './tree-gen.js';

async function upload(conn: Connection, sessionId: string, blobs: Blob[]): Promise<UploadReply> {
  const { call, result } = conn.clientStream<UploadReply>('Upload');
  call.write({ sessionId, blobs });
  call.end();
  return result;
}

function fileTree(name: string, chunks: Buffer[], size: number): Buffer {
  const node = emptyNode(name, 'FILE');
  node.chunks = chunks;
  node.size = String(size);
  node.mode = 0o644;
  return encodeTree([node]);
}

describe('the server refuses bad input with a status code and stores nothing', () => {
  let server: ServerHandle;
  let conn: Connection;
  const begin = (dataset = 'bad') => conn.unary<BeginBackupReply>('BeginBackup', { dataset, host: 'h', paths: ['/x'], tags: [], time: '' });

  beforeAll(async () => {
    server = await startServer();
    conn = new Connection({ server: server.addr });
  });
  afterAll(async () => {
    conn?.close();
    await server?.stop();
    cleanupTmp();
  });

  it('refuses a blob whose bytes do not hash to its id (INVALID_ARGUMENT), and nothing is stored', async () => {
    const { sessionId } = await begin();
    const data = Buffer.from('honest bytes');
    const forged: Blob = { ...rawBlob(data), data: Buffer.from('poisoned!!!!') };
    expect(await failure(upload(conn, sessionId, [forged]))).toMatch(/^INVALID_ARGUMENT: blob [0-9a-f]{64}: content does not hash to its id; nothing stored$/);
    const { sessionId: s2 } = await begin();
    const reply = await conn.unary<{ missing: Buffer[] }>('FindMissing', { sessionId: s2, ids: [forged.id] });
    expect(reply.missing.map(toHex)).toEqual([toHex(forged.id)]);
  });

  it('refuses a zstd blob that inflates to other bytes than it claims', async () => {
    const { sessionId } = await begin();
    const real = randomBytes(4096, 9).toString('hex');
    const packed = { data: Buffer.from(new BlobCompressor().pack(Buffer.from(real))!) };
    const lie: Blob = { id: hash(Buffer.from(real)), kind: 'DATA', compression: 'ZSTD', rawLength: real.length + 10, data: packed.data };
    expect(await failure(upload(conn, sessionId, [lie]))).toMatch(/^INVALID_ARGUMENT: blob [0-9a-f]{64}: zstd frame declares \d+ bytes but the blob says \d+$/);
  });

  it('refuses a zstd blob with bytes after its frame (padding frames would be stored and served at any size)', async () => {
    const { sessionId } = await begin();
    const real = Buffer.from(randomBytes(4096, 10).toString('hex'));
    const frame = Buffer.from(new BlobCompressor().pack(real)!);
    // A skippable frame: magic 0x184D2A50, a 4-byte length, then that many bytes zstd ignores.
    const pad = Buffer.alloc(8 + 64 * 1024);
    pad.writeUInt32LE(0x184d2a50, 0);
    pad.writeUInt32LE(64 * 1024, 4);
    const padded: Blob = { id: hash(real), kind: 'DATA', compression: 'ZSTD', rawLength: real.length, data: Buffer.concat([frame, pad]) };
    expect(await failure(upload(conn, sessionId, [padded]))).toBe(`INVALID_ARGUMENT: blob ${toHex(hash(real))}: ${pad.length} bytes follow its zstd frame of ${frame.length} bytes`);
    // The frame alone is accepted.
    await upload(conn, sessionId, [{ ...padded, data: frame }]);
  });

  it('refuses an empty DATA blob, which would take the id of every empty directory', async () => {
    const { sessionId } = await begin();
    const empty: Blob = { id: hash(Buffer.alloc(0)), kind: 'DATA', compression: 'NONE', rawLength: 0, data: Buffer.alloc(0) };
    expect(await failure(upload(conn, sessionId, [empty]))).toBe(`INVALID_ARGUMENT: blob ${toHex(empty.id)}: an empty DATA blob is not a chunk (empty files have none)`);
    // The empty tree itself is still taken, and a commit of an empty directory goes through.
    const emptyTree: Blob = { ...empty, kind: 'TREE' };
    await upload(conn, sessionId, [emptyTree]);
    await conn.unary('CommitBackup', { sessionId, rootTree: emptyTree.id, clientVersion: 'test' });
  });

  it('refuses a blob whose declared raw length passes the chunker maximum, before inflating it', async () => {
    const { sessionId } = await begin();
    const bomb: Blob = { id: hash(Buffer.from('x')), kind: 'DATA', compression: 'ZSTD', rawLength: 1 << 30, data: Buffer.from('not even zstd') };
    expect(await failure(upload(conn, sessionId, [bomb]))).toMatch(/^INVALID_ARGUMENT: blob [0-9a-f]{64}: raw length 1073741824 passes the limit of 4194304 bytes for DATA blobs$/);
  });

  it('refuses a commit that references an unknown chunk (FAILED_PRECONDITION naming it)', async () => {
    const { sessionId } = await begin();
    const ghost = hash(Buffer.from('never uploaded'));
    const tree = fileTree('ghost.bin', [ghost], 14);
    await upload(conn, sessionId, [rawBlob(tree, 'TREE')]);
    const msg = await failure(conn.unary('CommitBackup', { sessionId, rootTree: hash(tree), clientVersion: 't' }));
    expect(msg).toBe(`FAILED_PRECONDITION: commit references unknown chunk ${toHex(ghost)} (file /ghost.bin); upload it first`);
  });

  it('checks every directory of a wide, deep commit: a missing chunk or subtree anywhere is named, and a complete tree commits', async () => {
    // 20 directories of 3 subdirectories each: more than one batch of trees per level, three
    // levels. Each case has its own bytes: what one upload stored, the next would find.
    const build = (salt: string, hole?: { dir: number; sub: number; what: 'chunk' | 'tree' }) => {
      const blobs: Blob[] = [];
      const dirs = [];
      for (let d = 0; d < 20; d++) {
        const subs = [];
        for (let k = 0; k < 3; k++) {
          const data = Buffer.from(`${salt} ${d}/${k}`);
          const missing = hole?.dir === d && hole.sub === k;
          if (!(missing && hole.what === 'chunk')) blobs.push(rawBlob(data));
          const leaf = fileTree('f.txt', [hash(data)], data.length);
          if (!(missing && hole.what === 'tree')) blobs.push(rawBlob(leaf, 'TREE'));
          const sub = emptyNode(`s${k}`, 'DIR');
          sub.subtree = hash(leaf);
          subs.push(sub);
        }
        const dirTree = encodeTree(subs);
        blobs.push(rawBlob(dirTree, 'TREE'));
        const dir = emptyNode(`d${String(d).padStart(2, '0')}`, 'DIR');
        dir.subtree = hash(dirTree);
        dirs.push(dir);
      }
      const root = encodeTree(dirs);
      blobs.push(rawBlob(root, 'TREE'));
      return { blobs, root: hash(root) };
    };
    const commit = async (t: { blobs: Blob[]; root: Buffer }) => {
      const { sessionId } = await begin('wide');
      await upload(conn, sessionId, t.blobs);
      return conn.unary<Snapshot>('CommitBackup', { sessionId, rootTree: t.root, clientVersion: 't' });
    };
    const noChunk = build('a', { dir: 17, sub: 2, what: 'chunk' });
    expect(await failure(commit(noChunk))).toBe(`FAILED_PRECONDITION: commit references unknown chunk ${toHex(hash(Buffer.from('a 17/2')))} (file /d17/s2/f.txt); upload it first`);
    const noTree = build('b', { dir: 11, sub: 0, what: 'tree' });
    expect(await failure(commit(noTree))).toMatch(/^FAILED_PRECONDITION: commit references unknown tree [0-9a-f]{64} \(directory \/d11\/s0\); upload it first$/);
    const snap = await commit(build('c'));
    expect(snap.dataset).toBe('wide');
  });

  it('refuses a commit whose root tree was never uploaded', async () => {
    const { sessionId } = await begin();
    const root = hash(Buffer.from('no such tree'));
    expect(await failure(conn.unary('CommitBackup', { sessionId, rootTree: root, clientVersion: 't' }))).toBe(
      `FAILED_PRECONDITION: commit references unknown tree ${toHex(root)} (directory /); upload it first`,
    );
  });

  it('refuses unknown and finished sessions', async () => {
    expect(await failure(conn.unary('FindMissing', { sessionId: 'deadbeef', ids: [] }))).toBe('FAILED_PRECONDITION: backup session deadbeef is unknown, finished or expired; start a new backup');
    const { sessionId } = await begin('finished');
    const data = Buffer.from('content');
    const tree = fileTree('f', [hash(data)], data.length);
    await upload(conn, sessionId, [rawBlob(data), rawBlob(tree, 'TREE')]);
    const snap = await conn.unary<Snapshot>('CommitBackup', { sessionId, rootTree: hash(tree), clientVersion: 't' });
    expect(snap.dataset).toBe('finished');
    expect(await failure(conn.unary('CommitBackup', { sessionId, rootTree: hash(tree), clientVersion: 't' }))).toMatch(/^FAILED_PRECONDITION: backup session [0-9a-f]+ is unknown, finished or expired/);
    expect(await failure(upload(conn, sessionId, [rawBlob(Buffer.from('late'))]))).toMatch(/^FAILED_PRECONDITION: backup session/);
  });

  it('takes only RFC 3339 times with a four-digit year, and says which field is wrong', async () => {
    const list = (req: object) => (async () => {
      for await (const _ of conn.stream('ListSnapshots', { dataset: '', host: '', tag: '', since: '', until: '', limit: 0, ...req }));
    })();
    const at = (time: string) => conn.unary<BeginBackupReply>('BeginBackup', { dataset: 'times', host: 'h', paths: ['/x'], tags: [], time });
    // Date() alone reads "1" as 2001 and "June 1" as a date of this year.
    expect(await failure(list({ since: '1' }))).toBe('INVALID_ARGUMENT: since "1" is not an RFC 3339 time such as 2026-11-01T12:00:00Z');
    expect(await failure(list({ until: 'June 1' }))).toBe('INVALID_ARGUMENT: until "June 1" is not an RFC 3339 time such as 2026-11-01T12:00:00Z');
    expect(await failure((async () => { for await (const _ of conn.stream('Find', { pattern: '*', dataset: '', host: '', since: '2026-11-01', limit: 0 })); })())).toMatch(/^INVALID_ARGUMENT: since "2026-11-01" is not an RFC 3339 time/);
    // A year past 9999 prints as "+010000-…", which would sort before every real snapshot.
    expect(await failure(at('+010000-01-01T00:00:00Z'))).toMatch(/^INVALID_ARGUMENT: time "\+010000-01-01T00:00:00Z" is not an RFC 3339 time/);
    expect(await failure(at('9999-12-31T23:00:00-02:00'))).toMatch(/^INVALID_ARGUMENT: time "9999-12-31T23:00:00-02:00" is not an RFC 3339 time/);
    // Date() would roll these over to 2026-03-02 and the next day.
    expect(await failure(at('2026-02-30T00:00:00Z'))).toMatch(/^INVALID_ARGUMENT: time "2026-02-30T00:00:00Z" is not an RFC 3339 time/);
    expect(await failure(at('2026-11-01T24:00:00Z'))).toMatch(/^INVALID_ARGUMENT: time "2026-11-01T24:00:00Z" is not an RFC 3339 time/);
    const ok = await at('2026-11-01T14:00:00+02:00');
    await conn.unary('AbortBackup', { sessionId: ok.sessionId });
    // A leap second is valid RFC 3339: the next second's first instant.
    const leap = await at('2016-12-31T23:59:60Z');
    await conn.unary('AbortBackup', { sessionId: leap.sessionId });
    await list({ since: '2026-11-01T12:00:00.5z' });
  });

  it('refuses a tree blob with entries that would escape a restore target', async () => {
    const { sessionId } = await begin();
    // encodeTree validates, so build the hostile bytes with the raw protobuf type.
    const { protoRoot } = await import('../common/proto.js');
    const Tree = protoRoot.lookupType('cairn.v1.Tree');
    for (const name of ['..', 'a/b', '', 'nul\0byte']) {
      const bytes = Buffer.from(Tree.encode(Tree.fromObject({ nodes: [{ name, type: 'FILE' }] })).finish());
      expect(await failure(upload(conn, sessionId, [rawBlob(bytes, 'TREE')]))).toMatch(/^INVALID_ARGUMENT: tree [0-9a-f]{64}: /);
    }
  });

  it('refuses malformed ids and oversized requests', async () => {
    const { sessionId } = await begin();
    expect(await failure(conn.unary('FindMissing', { sessionId, ids: [Buffer.alloc(5)] }))).toBe('INVALID_ARGUMENT: chunk id must be a 32-byte id, got 5 bytes');
    const many = Array.from({ length: 10_001 }, (_, i) => hash(Buffer.from(String(i))));
    expect(await failure(conn.unary('FindMissing', { sessionId, ids: many }))).toBe('INVALID_ARGUMENT: FindMissing takes at most 10000 ids per call, got 10001');
    const huge = Buffer.alloc(70 * 1024 * 1024);
    expect(await failure(upload(conn, sessionId, [rawBlob(huge)]))).toMatch(/^RESOURCE_EXHAUSTED: .*(larger than max|message)/i);
  });

  it('stops a restore of a corrupted pack with DATA_LOSS naming the file and chunk, and writes no wrong bytes', async () => {
    const dir = path.join(tmpDir(), 'corrupt');
    await writeFile(path.join(dir, 'weights.bin'), randomBytes(300 * 1024, 5));
    const snap = await cliJson<{ snapshot: Snapshot }>(['snapshot', dir, '--dataset', 'corrupt', '--host', 'h'], { server: server.addr });
    const storeDir = server.storeSpec.slice('file:'.length);
    const packs: string[] = [];
    async function walk(d: string): Promise<void> {
      for (const e of await fs.readdir(d, { withFileTypes: true })) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) await walk(p);
        else if (p.includes('/packs/')) packs.push(p);
      }
    }
    await walk(storeDir);
    // The data pack is the big one; flip a byte in the middle of its blob area.
    const sizes = await Promise.all(packs.map(async (p) => (await fs.stat(p)).size));
    const dataPack = packs[sizes.indexOf(Math.max(...sizes))];
    const bytes = await fs.readFile(dataPack);
    bytes[1000] ^= 0xff;
    await fs.writeFile(dataPack, bytes);
    const target = path.join(tmpDir(), 'corrupt-restore');
    const r = await runCli(['restore', '--snapshot', snap.snapshot.id, target], { server: server.addr });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/DATA_LOSS: file .*weights\.bin: .*chunk [0-9a-f]{64} .*corrupt/);
    const left = await fs.readdir(target);
    expect(left).toEqual([]);
  });
});
