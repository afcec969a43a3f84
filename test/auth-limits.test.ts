import http2 from 'node:http2';
import net from 'node:net';
import binding from 'zstd-napi/binding.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Connection } from '../client/connection.js';
import { UploadStream } from '../client/upload-stream.js';
import { BlobCompressor } from '../common/compression.js';
import { hash, toHex } from '../common/hash.js';
import type { BeginBackupReply, Blob } from '../common/messages.js';
import { emptyNode, encodeTree, MAX_TREE_BLOB_BYTES, MAX_TREE_ENTRIES } from '../common/tree.js';
import { createToken, failure, peakRss, rawBlob, resetPeakRss, upload } from './auth-helpers.js';
import { cleanupTmp, startServer, type ServerHandle } from './harness.js';

const MiB = 1024 * 1024;

/** `count` zstd frames of `frameBytes` zeros each, with or without the content size in their headers. */
function zeroFrames(frameBytes: number, count: number, withSize: boolean): Buffer {
  const cctx = new binding.CCtx();
  cctx.setParameter(binding.CParameter.contentSizeFlag, withSize ? 1 : 0);
  const out = Buffer.alloc(binding.compressBound(frameBytes));
  const frame = Buffer.from(out.subarray(0, cctx.compress2(out, Buffer.alloc(frameBytes))));
  return Buffer.concat(Array.from({ length: count }, () => frame));
}

/** A tree of one file naming the same chunk `refs` times: 34 raw bytes per ref, compressed ~10,000 times. */
function compressibleTree(name: string, refs: number): Blob {
  const chunk = hash(Buffer.from('x'));
  const raw = encodeTree([{ ...emptyNode(name, 'FILE'), mode: 0o644, size: '1', chunks: Array<Buffer>(refs).fill(chunk) }]);
  return { id: hash(raw), kind: 'TREE', compression: 'ZSTD', rawLength: raw.length, data: Buffer.from(new BlobCompressor().pack(raw)!) };
}

async function readChunk(conn: Connection, id: Buffer): Promise<number> {
  let n = 0;
  for await (const _ of conn.stream('ReadChunks', { ids: [id] })) n++;
  return n;
}

describe('limits: sessions and Upload streams per token, session expiry, decompression bombs, tree size', () => {
  let server: ServerHandle;
  let agent: Connection;
  let agentToken: string;
  let other: Connection;
  let admin: Connection;
  const begin = (conn: Connection, host: string) => conn.unary<BeginBackupReply>('BeginBackup', { dataset: 'lim', host, paths: ['/x'], tags: [] });

  beforeAll(async () => {
    server = await startServer({ args: ['--max-sessions-per-token', '2', '--max-uploads-per-token', '2', '--session-timeout', '3s'] });
    const [a, o, ad] = await Promise.all([
      createToken(server.storeSpec, 'default', 'agent', 'gpu-1'),
      createToken(server.storeSpec, 'default', 'agent', 'gpu-2'),
      createToken(server.storeSpec, 'default', 'admin', 'ops'),
    ]);
    agentToken = a;
    agent = new Connection({ server: server.addr, token: a });
    other = new Connection({ server: server.addr, token: o });
    admin = new Connection({ server: server.addr, token: ad });
  });
  afterAll(async () => {
    for (const c of [agent, other, admin]) c?.close();
    await server?.stop();
    cleanupTmp();
  });

  it('caps the backup sessions one token holds open, naming the limit, without starving other tokens', async () => {
    const held = [await begin(agent, 'gpu-1'), await begin(agent, 'gpu-1')];
    expect(await failure(begin(agent, 'gpu-1'))).toBe('RESOURCE_EXHAUSTED: default/gpu-1 has 2 backup sessions open, the limit is 2 per token');
    const theirs = await begin(other, 'gpu-2');
    for (const s of [...held, theirs]) await (s === theirs ? other : agent).unary('AbortBackup', { sessionId: s.sessionId });
    await agent.unary('AbortBackup', { sessionId: (await begin(agent, 'gpu-1')).sessionId });
  });

  it('caps the Upload streams one token holds open, reading nothing from the one refused, without starving other tokens', async () => {
    const { sessionId } = await begin(agent, 'gpu-1');
    const theirs = await begin(other, 'gpu-2');
    const missing = async (id: Buffer) => (await agent.unary<{ missing: Buffer[] }>('FindMissing', { sessionId, ids: [id] })).missing.length;
    const open = async (tag: string) => {
      const blob = rawBlob(Buffer.from(`upload stream ${tag} ${Date.now()}`));
      const stream = agent.clientStream<{ blobsStored: string }>('Upload');
      stream.call.write({ sessionId, blobs: [blob] });
      // Admitted once its message has been read: the server then knows the blob.
      while ((await missing(blob.id)) > 0) await new Promise((r) => setTimeout(r, 20));
      return stream;
    };
    const held = [await open('a'), await open('b')];
    const refused = agent.clientStream('Upload');
    const extra = rawBlob(Buffer.from(`refused upload ${Date.now()}`));
    refused.call.write({ sessionId, blobs: [extra] });
    refused.call.end();
    expect(await failure(refused.result)).toBe("RESOURCE_EXHAUSTED: default/gpu-1 has 2 Upload streams open, the limit is 2 per token (a backup opens one per channel): use fewer --channels or concurrent backups, or raise the server's --max-uploads-per-token");
    expect(await missing(extra.id)).toBe(1);
    expect((await upload(other, theirs.sessionId, [rawBlob(Buffer.from(`their upload ${Date.now()}`))])).blobsStored).toBe('1');
    // A stream that ends gives its place back.
    held[0].call.end();
    expect((await held[0].result).blobsStored).toBe('1');
    expect((await upload(agent, sessionId, [extra])).blobsStored).toBe('1');
    held[1].call.end();
    await held[1].result;
    await agent.unary('AbortBackup', { sessionId });
    await other.unary('AbortBackup', { sessionId: theirs.sessionId });
  });

  it('gives back the place of a stream cancelled while its caller was being checked', async () => {
    const { sessionId } = await begin(agent, 'gpu-1');
    const h2 = http2.connect(`http://${server.addr}`);
    await new Promise((resolve) => h2.once('connect', resolve));
    for (let i = 0; i < 2; i++) {
      const req = h2.request({ ':method': 'POST', ':path': '/cairn.v1.Cairn/Upload', 'content-type': 'application/grpc', te: 'trailers', authorization: `Bearer ${agentToken}` });
      req.on('error', () => undefined);
      setImmediate(() => req.close(http2.constants.NGHTTP2_CANCEL));
    }
    // Long enough for the server to finish checking both callers; a place they took stays taken.
    await new Promise((resolve) => setTimeout(resolve, 500));
    h2.close();
    expect((await upload(agent, sessionId, [rawBlob(Buffer.from(`after cancels ${Date.now()}`))])).blobsStored).toBe('1');
    await agent.unary('AbortBackup', { sessionId });
  });

  it('closes a connection that stopped answering, giving back its Upload places', async () => {
    // Its own server: pings after 1 s idle would drop the other tests' connections whenever
    // this process is busy compressing a tree for longer than that.
    const pinging = await startServer({ args: ['--max-uploads-per-token', '2', '--keepalive', '1s'] });
    const near = new Connection({ server: pinging.addr, token: await createToken(pinging.storeSpec, 'default', 'agent', 'gpu-1') });
    const { sessionId } = await begin(near, 'gpu-1');
    // A proxy that goes silent, as a client behind a NAT that forgot the flow: no FIN, no RST.
    let frozen = false;
    const sockets: net.Socket[] = [];
    const proxy = net.createServer((client) => {
      const upstream = net.connect(pinging.port, '127.0.0.1');
      sockets.push(client, upstream);
      for (const s of [client, upstream]) s.on('error', () => undefined);
      client.on('data', (d) => void (frozen || upstream.write(d)));
      upstream.on('data', (d) => void (frozen || client.write(d)));
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const far = new Connection({ server: `127.0.0.1:${(proxy.address() as net.AddressInfo).port}`, token: near.opts.token });
    try {
      for (let i = 0; i < 2; i++) {
        const blob = rawBlob(Buffer.from(`through the proxy ${i} ${Date.now()}`));
        const stream = far.clientStream('Upload');
        // Ended by the server's close or ours; either way this test asks nothing of it.
        stream.result.catch(() => undefined);
        stream.call.write({ sessionId, blobs: [blob] });
        while ((await near.unary<{ missing: Buffer[] }>('FindMissing', { sessionId, ids: [blob.id] })).missing.length > 0) await new Promise((r) => setTimeout(r, 20));
      }
      frozen = true;
      expect(await failure(upload(near, sessionId, [rawBlob(Buffer.from('while the proxy is silent'))]))).toMatch(/has 2 Upload streams open/);
      // The server pings after 1 s idle and gives up 1 s later; until then the places stay taken.
      let stored = '';
      for (let tries = 0; tries < 100 && !stored; tries++) {
        await new Promise((r) => setTimeout(r, 200));
        stored = await upload(near, sessionId, [rawBlob(Buffer.from(`after the silence ${tries}`))]).then((r) => r.blobsStored, () => '');
      }
      expect(stored).toBe('1');
    } finally {
      far.close();
      for (const s of sockets) s.destroy();
      proxy.close();
      await near.unary('AbortBackup', { sessionId });
      near.close();
      await pinging.stop();
    }
  });

  it('expires an idle session: its calls are refused and garbage collection may take what only it pinned', async () => {
    const orphan = Buffer.from(`uploaded by a backup that never commits ${Date.now()}`);
    const { sessionId } = await begin(agent, 'gpu-1');
    await upload(agent, sessionId, [rawBlob(orphan)]);
    // The first prune flushes the pending pack into the index; the second one sees it and must keep it: the live session pinned it.
    await agent.unary('FindMissing', { sessionId, ids: [] });
    await admin.unary('Prune', { dryRun: false });
    await agent.unary('FindMissing', { sessionId, ids: [] });
    await admin.unary('Prune', { dryRun: false });
    expect(await readChunk(admin, hash(orphan))).toBe(1);

    // Idle past the 3 s timeout, and past the sweep that runs every 3 s.
    await new Promise((r) => setTimeout(r, 7000));
    expect(await failure(agent.unary('FindMissing', { sessionId, ids: [] }))).toMatch(/^FAILED_PRECONDITION: backup session [0-9a-f]+ is unknown, finished or expired/);
    expect(await failure(upload(agent, sessionId, [rawBlob(Buffer.from('late'))]))).toMatch(/^FAILED_PRECONDITION: backup session /);
    expect(await failure(agent.unary('CommitBackup', { sessionId, rootTree: hash(orphan) }))).toMatch(/^FAILED_PRECONDITION: backup session /);
    expect(server.logs.some((l) => l.includes(sessionId) && l.includes('backup session expired; its pins are released'))).toBe(true);

    const pruned = await admin.unary<{ chunksRemoved: string }>('Prune', { dryRun: false });
    expect(Number(pruned.chunksRemoved)).toBeGreaterThanOrEqual(1);
    expect(await failure(readChunk(admin, hash(orphan)))).toBe(`NOT_FOUND: chunk ${toHex(hash(orphan))} is not in repository default`);
  });

  it('refuses decompression bombs with memory bounded by the declared raw length', async () => {
    const { sessionId } = await begin(agent, 'gpu-1');
    const before = peakRss(server.proc.pid!);
    const raw = Buffer.alloc(4 * MiB);
    const id = hash(raw);
    const bombs: Array<[Blob, RegExp]> = [
      // Honest about 1 GiB: refused before anything is inflated.
      [{ id, kind: 'DATA', compression: 'ZSTD', rawLength: 1 << 30, data: zeroFrames(4 * MiB, 1, true) }, /raw length 1073741824 passes the limit of 4194304 bytes for DATA blobs/],
      // Claims 4 MiB, and its first frame says so, but 255 more frames follow: 1 GiB in 36 KB,
      // refused before inflating, as bytes after the first frame.
      [{ id, kind: 'DATA', compression: 'ZSTD', rawLength: 4 * MiB, data: zeroFrames(4 * MiB, 256, true) }, /\d+ bytes follow its zstd frame of \d+ bytes/],
      // One frame that does not declare its size, claiming a few bytes: inflating stops at them.
      [{ id: hash(Buffer.alloc(1000)), kind: 'DATA', compression: 'ZSTD', rawLength: 1000, data: zeroFrames(4 * MiB, 1, false) }, /not a valid zstd frame of 1000 bytes/],
      // A tree blob may be larger than a chunk, so the same tricks in a TREE.
      [{ id, kind: 'TREE', compression: 'ZSTD', rawLength: 4 * MiB, data: zeroFrames(4 * MiB, 256, true) }, /\d+ bytes follow its zstd frame of \d+ bytes/],
      [{ id: hash(Buffer.alloc(1000)), kind: 'TREE', compression: 'ZSTD', rawLength: 1000, data: zeroFrames(4 * MiB, 1, false) }, /not a valid zstd frame of 1000 bytes/],
    ];
    for (const [bomb, why] of bombs) {
      const msg = await failure(upload(agent, sessionId, [bomb]));
      expect(msg).toMatch(/^INVALID_ARGUMENT: blob [0-9a-f]{64}: /);
      expect(msg).toMatch(why);
    }
    const grew = peakRss(server.proc.pid!) - before;
    expect(grew).toBeLessThan(64 * MiB);
    expect((await agent.unary<{ missing: Buffer[] }>('FindMissing', { sessionId, ids: [id] })).missing.length).toBe(1);
    await agent.unary('AbortBackup', { sessionId });
  });

  it('refuses a message whose trees together inflate past one tree, and verifies trees spread over messages in bounded memory', async () => {
    const { sessionId } = await begin(agent, 'gpu-1');
    const small = Array.from({ length: 4 }, (_, i) => compressibleTree(`f${i}`, 500_000));
    const total = small.reduce((sum, t) => sum + t.rawLength, 0);
    expect(total).toBeGreaterThan(MAX_TREE_BLOB_BYTES);
    expect(await failure(upload(agent, sessionId, small))).toBe(
      `RESOURCE_EXHAUSTED: one Upload message carries ${total} raw bytes of trees, the limit is ${MAX_TREE_BLOB_BYTES}; send them in separate messages`,
    );
    // Concurrent senders: a tree waiting for the cut that makes room for it must not find
    // another sender's tree in the new message.
    const race = new UploadStream(agent, 0, sessionId, () => undefined);
    await race.add(compressibleTree('h0', 62_000));
    await Promise.all([race.add(compressibleTree('h1', 1_940_000)), race.add(compressibleTree('h2', 62_000))]);
    expect((await race.end()).blobsStored).toBe('3');
    // Four trees of 61 MB raw (1.8 million chunk ids each) in 25 KB of upload: the client
    // sends each in its own message, as the server requires.
    const large = Array.from({ length: 4 }, (_, i) => compressibleTree(`g${i}`, 1_800_000));
    resetPeakRss(server.proc.pid!);
    const before = peakRss(server.proc.pid!);
    const stream = new UploadStream(agent, 0, sessionId, () => undefined);
    for (const t of large) await stream.add(t);
    expect((await stream.end()).blobsStored).toBe('4');
    // A tree costs its raw bytes and one buffer of its chunk ids, ~120 MB; after the trees
    // above the server's heap has room for them: 67-110 MiB measured. Decoded into an object
    // per chunk id, the same upload took 286-339 MiB.
    expect(peakRss(server.proc.pid!) - before).toBeLessThan(200 * MiB);
    await agent.unary('AbortBackup', { sessionId });
  });

  it(`refuses a tree of more than ${MAX_TREE_ENTRIES} entries before decoding them`, async () => {
    const { sessionId } = await begin(agent, 'gpu-1');
    // Five-byte nodes (a one-letter name): decoding a million of them into objects would cost hundreds of MiB.
    const node = Buffer.from([0x0a, 0x03, 0x0a, 0x01, 0x61]);
    const tree = Buffer.alloc(node.length * (MAX_TREE_ENTRIES + 1));
    for (let o = 0; o < tree.length; o += node.length) node.copy(tree, o);
    const before = peakRss(server.proc.pid!);
    expect(await failure(upload(agent, sessionId, [rawBlob(tree, 'TREE')]))).toBe(
      `RESOURCE_EXHAUSTED: tree ${toHex(hash(tree))}: ${MAX_TREE_ENTRIES + 1} entries pass the limit of ${MAX_TREE_ENTRIES} per tree`,
    );
    expect(peakRss(server.proc.pid!) - before).toBeLessThan(96 * MiB);
    await agent.unary('AbortBackup', { sessionId });
  });
});
