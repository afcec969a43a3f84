import * as grpc from '@grpc/grpc-js';
import fc from 'fast-check';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Connection } from '../client/connection.js';
import { BlobCompressor } from '../common/compression.js';
import { CairnError, Code, codeName } from '../common/errors.js';
import { hash, toHex } from '../common/hash.js';
import { emptySummary, type BeginBackupReply, type Snapshot } from '../common/messages.js';
import { encodeTrailer, FOOTER_BYTES, parsePack, type PackEntry } from '../common/pack-format.js';
import { protoRoot, RPC_NAMES } from '../common/proto.js';
import { badName, decodeTree, emptyNode, encodeTree } from '../common/tree.js';
import { decodeSegment, encodeSegment } from '../server/index-segment.js';
import type { ObjectStore } from '../server/object-store.js';
import { parseSnapshotRecord } from '../server/snapshot-record.js';
import { hashToken, TokenStore } from '../server/tokens.js';
import { createToken, peakRss } from './auth-helpers.js';
import { cleanupTmp, startServer, tmpDir, type ServerHandle } from './harness.js';

/** Seeded and bounded: the same inputs on every run, the whole file well under 20 s. */
const RUNS = { seed: 20261122, numRuns: 1000 };
const GRPC_RUNS = { seed: 20261122, numRuns: 300 };

type Mutation = { op: 'set'; at: number; value: number } | { op: 'cut'; at: number } | { op: 'insert'; at: number; bytes: Uint8Array } | { op: 'u32'; at: number; value: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('set' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ op: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  // Length and count fields are u32s: plant the values that break arithmetic.
  fc.record({ op: fc.constant('u32' as const), at: fc.nat(), value: fc.constantFrom(0, 1, 50, 52, 0x7fffffff, 0x80000000, 0xffffffff) }),
);

function mutate(valid: Buffer, ops: Mutation[]): Buffer {
  let b = Buffer.from(valid);
  for (const m of ops) {
    const at = b.length === 0 ? 0 : m.at % b.length;
    if (m.op === 'set' && b.length > 0) b[at] = m.value;
    else if (m.op === 'cut') b = b.subarray(0, at);
    else if (m.op === 'insert') b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]);
    else if (m.op === 'u32' && b.length >= 4) b.writeUInt32BE(m.value, Math.min(at, b.length - 4));
  }
  return b;
}

/** Runs a parser on untrusted bytes: it may return or throw a CairnError, nothing else. */
function parsesOrRefuses<T>(parse: () => T): T | undefined {
  try {
    return parse();
  } catch (err) {
    if (!(err instanceof CairnError)) throw err;
    return undefined;
  }
}

const entryArb = fc.record({
  id: fc.uint8Array({ minLength: 32, maxLength: 32 }).map((u) => Buffer.from(u)),
  storedLength: fc.oneof(fc.integer({ min: 0, max: 64 }), fc.constantFrom(0xffffffff, 0x80000000)),
  rawLength: fc.integer({ min: 0, max: 0xffffffff }),
  kind: fc.constantFrom('DATA' as const, 'TREE' as const),
  compressed: fc.boolean(),
  gap: fc.oneof(fc.constant(0), fc.integer({ min: -8, max: 8 })),
});

type EntrySpec = { id: Buffer; storedLength: number; rawLength: number; kind: 'DATA' | 'TREE'; compressed: boolean; gap: number };

/** Trailer entries that may lie (gaps, overlaps, lengths past the end) under a correct checksum: the parser must check each one. */
function entriesFrom(specs: EntrySpec[]): PackEntry[] {
  let offset = 0;
  return specs.map((e) => {
    const pe = { id: e.id, offset: Math.max(0, offset + e.gap), storedLength: e.storedLength, rawLength: e.rawLength, kind: e.kind, compressed: e.compressed };
    offset = pe.offset + Math.min(e.storedLength, 64);
    return pe;
  });
}

function packFrom(specs: EntrySpec[], dataBytes: number): Buffer {
  return Buffer.concat([Buffer.alloc(dataBytes, 7), encodeTrailer(entriesFrom(specs))]);
}

function validPack(): Buffer {
  const blobs = [Buffer.from('first blob'), Buffer.from('second, longer blob of bytes')];
  let offset = 0;
  const entries = blobs.map((b) => {
    const e: PackEntry = { id: hash(b), offset, storedLength: b.length, rawLength: b.length, kind: 'DATA', compressed: false };
    offset += b.length;
    return e;
  });
  return Buffer.concat([...blobs, encodeTrailer(entries)]);
}

describe('parsers of untrusted bytes refuse with CairnErrors and never crash', () => {
  it('pack trailer and footer (random, mutated, and checksummed but lying)', () => {
    const good = validPack();
    expect(parsePack(good, 'pack').length).toBe(2);
    const check = (pack: Buffer) => {
      const entries = parsesOrRefuses(() => parsePack(pack, 'pack'));
      if (!entries) return;
      let end = 0;
      for (const e of entries) {
        expect(e.offset).toBe(end);
        end = e.offset + e.storedLength;
      }
      expect(end).toBeLessThanOrEqual(pack.length - FOOTER_BYTES);
    };
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (u) => check(Buffer.from(u))), RUNS);
    fc.assert(fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (ops) => check(mutate(good, ops))), RUNS);
    fc.assert(fc.property(fc.array(entryArb, { maxLength: 6 }), fc.integer({ min: 0, max: 200 }), (entries, dataBytes) => check(packFrom(entries, dataBytes))), RUNS);
  });

  it('index segment (random, mutated, and well-framed with lying packs)', () => {
    const pack = validPack();
    const good = encodeSegment([{ id: hash(pack), size: pack.length, kind: 'DATA', entries: parsePack(pack, 'p') }]).data;
    expect(decodeSegment(good, 'seg').length).toBe(1);
    const check = (seg: Buffer) => {
      const packs = parsesOrRefuses(() => decodeSegment(seg, 'seg'));
      for (const p of packs ?? []) for (const e of p.entries) expect(e.offset + e.storedLength).toBeLessThanOrEqual(p.size);
    };
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (u) => check(Buffer.from(u))), RUNS);
    fc.assert(fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (ops) => check(mutate(good, ops))), RUNS);
    fc.assert(
      fc.property(fc.array(entryArb, { maxLength: 5 }), fc.integer({ min: 0, max: 2 ** 40 }), fc.constantFrom('DATA' as const, 'TREE' as const), (specs, size, kind) =>
        check(encodeSegment([{ id: hash(Buffer.from([size & 0xff])), size, kind, entries: entriesFrom(specs) }]).data),
      ),
      RUNS,
    );
  });

  it('tree blob: whatever it accepts has safe, sorted, unique names', () => {
    const Tree = protoRoot.lookupType('cairn.v1.Tree');
    const nodes = ['a', 'b.txt', 'c'].map((n) => ({ ...emptyNode(n, 'FILE'), chunks: [hash(Buffer.from(n))], size: '1' }));
    const good = encodeTree(nodes);
    const check = (bytes: Buffer) => {
      const decoded = parsesOrRefuses(() => decodeTree(bytes, 'tree'));
      let prev = '';
      for (const n of decoded ?? []) {
        expect(badName(n.name)).toBeUndefined();
        expect(n.name > prev).toBe(true);
        prev = n.name;
      }
    };
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), (u) => check(Buffer.from(u))), RUNS);
    fc.assert(fc.property(fc.array(mutation, { minLength: 1, maxLength: 4 }), (ops) => check(mutate(good, ops))), RUNS);
    const hostileName = fc.oneof(fc.constantFrom('', '.', '..', '/', 'a/b', '../x', 'x\0y', 'a', 'b'), fc.string({ maxLength: 6 }));
    const hostileNode = fc.record({
      name: hostileName,
      type: fc.integer({ min: 0, max: 5 }),
      subtree: fc.uint8Array({ maxLength: 33 }),
      chunks: fc.array(fc.uint8Array({ maxLength: 33 }), { maxLength: 3 }),
      target: fc.string({ maxLength: 8 }),
      size: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }).map(String),
    });
    fc.assert(fc.property(fc.array(hostileNode, { maxLength: 6 }), (ns) => check(Buffer.from(Tree.encode(Tree.fromObject({ nodes: ns })).finish()))), RUNS);
  });

  it('snapshot records read back from the store', () => {
    const good = {
      version: 1,
      dataset: 'exp',
      host: 'gpu-3',
      paths: ['/data'],
      tags: ['nightly'],
      time: '2026-11-22T10:00:00.000Z',
      parent: '',
      rootTree: 'ab'.repeat(32),
      summary: emptySummary(),
      clientVersion: '0.1.0',
    };
    expect(parseSnapshotRecord(Buffer.from(JSON.stringify(good)), 's')).toEqual(good);
    const check = (bytes: Buffer) => {
      const r = parsesOrRefuses(() => parseSnapshotRecord(bytes, 'snapshot'));
      if (!r) return;
      expect(r.version).toBe(1);
      for (const f of ['dataset', 'host', 'time', 'parent', 'rootTree', 'clientVersion'] as const) expect(typeof r[f]).toBe('string');
      expect(r.dataset).toMatch(/^[A-Za-z0-9][A-Za-z0-9._-]*$/);
      expect(Number.isNaN(Date.parse(r.time))).toBe(false);
      for (const v of Object.values(r.summary)) expect(['string', 'number']).toContain(typeof v);
    };
    fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (u) => check(Buffer.from(u))), RUNS);
    fc.assert(fc.property(fc.jsonValue(), (v) => check(Buffer.from(JSON.stringify(v) ?? 'null'))), RUNS);
    const field = fc.constantFrom(...(Object.keys(good) as Array<keyof typeof good>), 'summary.files', 'summary.durationSeconds');
    fc.assert(
      fc.property(fc.array(fc.tuple(field, fc.jsonValue()), { minLength: 1, maxLength: 3 }), (edits) => {
        const r = JSON.parse(JSON.stringify(good)) as Record<string, unknown>;
        for (const [k, v] of edits) {
          if (k.startsWith('summary.')) {
            if (r.summary !== null && typeof r.summary === 'object') (r.summary as Record<string, unknown>)[k.slice(8)] = v;
          }
          else r[k] = v;
        }
        check(Buffer.from(JSON.stringify(r)));
      }),
      RUNS,
    );
    fc.assert(fc.property(fc.array(mutation, { minLength: 1, maxLength: 3 }), (ops) => check(mutate(Buffer.from(JSON.stringify(good)), ops))), RUNS);
  });

  it('token records read back from the store', async () => {
    const token = `cairn_${'B'.repeat(43)}`;
    const key = hashToken(token).toString('hex');
    const good = { version: 1, name: 'gpu-3', repo: 'ml-team', role: 'agent', created: '2026-11-22T10:00:00.000Z', hash: key };
    const storeOf = (data: Buffer) => ({ get: async () => data }) as unknown as ObjectStore;
    expect(await new TokenStore(storeOf(Buffer.from(JSON.stringify(good)))).lookup(token)).toEqual(good);
    const check = async (data: Buffer) => {
      let record;
      try {
        record = await new TokenStore(storeOf(data)).lookup(token);
      } catch (err) {
        expect(err).toBeInstanceOf(CairnError);
        return;
      }
      if (record) expect(record.hash).toBe(key);
      if (record) expect(['agent', 'reader', 'admin']).toContain(record.role);
    };
    await fc.assert(fc.asyncProperty(fc.jsonValue(), (v) => check(Buffer.from(JSON.stringify(v) ?? 'null'))), RUNS);
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...Object.keys(good)), fc.jsonValue(), (k, v) => check(Buffer.from(JSON.stringify({ ...good, [k]: v })))),
      RUNS,
    );
  });
});

describe('the server answers random and malformed gRPC messages with clean errors', () => {
  let server: ServerHandle;
  let raw: grpc.Client;
  let conn: Connection;
  let token: string;
  const statuses = new Map<string, number>();

  beforeAll(async () => {
    const dir = tmpDir();
    const store = `file:${path.join(dir, 'store')}`;
    // Snapshot objects are named by their hash, so anyone with write access to the store can plant
    // any JSON there: the server must index the well-formed ones and skip the rest at start.
    const snapDir = path.join(dir, 'store/repos/default/snapshots');
    await fs.mkdir(snapDir, { recursive: true });
    const planted = fc.sample(fc.oneof(fc.jsonValue(), fc.record({ version: fc.constant(1), dataset: fc.string(), host: fc.constant('h'), time: fc.string() })), { seed: RUNS.seed, numRuns: 60 });
    const good = { version: 1, dataset: 'ok', host: 'h', paths: [], tags: [], time: '2026-01-01T00:00:00.000Z', parent: '', rootTree: 'cd'.repeat(32), summary: emptySummary(), clientVersion: 'x' };
    for (const v of [...planted, good]) {
      const data = Buffer.from(JSON.stringify(v) ?? 'null');
      await fs.writeFile(path.join(snapDir, toHex(hash(data))), data);
    }
    token = await createToken(store, 'default', 'admin', 'fuzzer');
    server = await startServer({ store, indexDir: path.join(dir, 'index') });
    raw = new grpc.Client(server.addr, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 8 << 20 });
    conn = new Connection({ server: server.addr, token });
  });
  afterAll(async () => {
    raw?.close();
    conn?.close();
    await server?.stop();
    cleanupTmp();
  });

  const md = (auth = `Bearer ${token}`) => {
    const m = new grpc.Metadata();
    m.set('authorization', auth);
    return m;
  };

  /** One raw call: bytes in, status out. Identity (de)serializers, so the server's decoder sees exactly these bytes. */
  function rawCall(rpc: string, messages: Buffer[], auth?: string): Promise<grpc.StatusObject> {
    const id = (b: Buffer) => b;
    const options = { deadline: Date.now() + 10_000 };
    return new Promise((resolve) => {
      const def = RPC_NAMES.includes(rpc) ? (protoRoot.lookupService('cairn.v1.Cairn').methods[rpc] as { requestStream?: boolean; responseStream?: boolean }) : {};
      if (def.requestStream) {
        const call = raw.makeClientStreamRequest(`/cairn.v1.Cairn/${rpc}`, id, id, md(auth), options, () => undefined);
        call.on('status', resolve);
        for (const m of messages) call.write(m);
        call.end();
      } else if (def.responseStream) {
        const call = raw.makeServerStreamRequest(`/cairn.v1.Cairn/${rpc}`, id, id, messages[0], md(auth), options);
        call.on('data', () => undefined);
        call.on('error', () => undefined);
        call.on('status', resolve);
      } else {
        const call = raw.makeUnaryRequest(`/cairn.v1.Cairn/${rpc}`, id, id, messages[0], md(auth), options, () => undefined);
        call.on('status', resolve);
      }
    });
  }

  /** A refusal the client can act on, or a success; INTERNAL only for bytes that are not the message at all. */
  function expectClean(s: grpc.StatusObject, what: string): void {
    const name = codeName(s.code);
    statuses.set(name, (statuses.get(name) ?? 0) + 1);
    expect([Code.OK, Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED, Code.INTERNAL, Code.DATA_LOSS], `${what}: ${name} ${s.details}`).toContain(s.code);
    if (s.code === Code.INTERNAL) expect(s.details, what).toBe('Error deserializing request');
  }

  it('indexed only the well-formed snapshot objects planted in the store', async () => {
    const ids: string[] = [];
    for await (const s of conn.stream<Snapshot>('ListSnapshots', {})) ids.push(s.dataset);
    expect(ids).toEqual(['ok']);
    expect(server.logs.filter((l) => l.includes('malformed snapshot object: skipped')).length).toBeGreaterThan(10);
  });

  it('every RPC, fed random bytes', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...RPC_NAMES), fc.uint8Array({ maxLength: 200 }), async (rpc, bytes) => expectClean(await rawCall(rpc, [Buffer.from(bytes)]), rpc)),
      GRPC_RUNS,
    );
  });

  it('FindMissing and Upload, fed random and mutated messages and blobs built to pass the early checks', async () => {
    const { sessionId } = await conn.unary<BeginBackupReply>('BeginBackup', { dataset: 'fuzz', host: 'h', paths: [], tags: [] });
    const FindMissing = protoRoot.lookupType('cairn.v1.FindMissingRequest');
    const Upload = protoRoot.lookupType('cairn.v1.UploadRequest');
    const Tree = protoRoot.lookupType('cairn.v1.Tree');
    const goodFind = Buffer.from(FindMissing.encode({ sessionId, ids: [hash(Buffer.from('x')), hash(Buffer.from('y'))] }).finish());
    await fc.assert(
      fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 4 }), async (ops) => expectClean(await rawCall('FindMissing', [mutate(goodFind, ops)]), 'FindMissing')),
      GRPC_RUNS,
    );
    const packed = { data: Buffer.from(new BlobCompressor().pack(Buffer.alloc(5000, 1))!) };
    const blob = fc.oneof(
      // Random fields.
      fc.record({
        id: fc.uint8Array({ maxLength: 40 }),
        kind: fc.integer({ min: 0, max: 3 }),
        compression: fc.integer({ min: 0, max: 3 }),
        rawLength: fc.oneof(fc.integer({ min: 0, max: 5000 }), fc.constantFrom(4 << 20, (4 << 20) + 1, 0xffffffff)),
        data: fc.uint8Array({ maxLength: 512 }),
      }),
      // Hashes right, so the bytes reach the tree decoder as a TREE blob.
      fc.uint8Array({ maxLength: 512 }).map((d) => ({ id: hash(d), kind: 1, compression: 0, rawLength: d.length, data: d })),
      // A hostile tree that hashes right: names must be refused by the server.
      fc.array(fc.record({ name: fc.constantFrom('', '..', 'a/b', 'x\0', 'ok'), type: fc.integer({ min: 0, max: 4 }) }), { maxLength: 4 }).map((nodes) => {
        const d = Buffer.from(Tree.encode(Tree.fromObject({ nodes })).finish());
        return { id: hash(d), kind: 1, compression: 0, rawLength: d.length, data: d };
      }),
      // A real zstd frame whose declared lengths are tampered with.
      fc.record({ rawLength: fc.integer({ min: 0, max: 10_000 }), cut: fc.nat(packed.data.length) }).map(({ rawLength, cut }) => ({
        id: hash(Buffer.alloc(5000, 1)),
        kind: 0,
        compression: 1,
        rawLength,
        data: packed.data.subarray(0, cut || packed.data.length),
      })),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(blob, { minLength: 1, maxLength: 3 }), fc.boolean(), fc.array(mutation, { maxLength: 2 }), async (blobs, sameSession, ops) => {
        const msg = Buffer.from(Upload.encode(Upload.fromObject({ sessionId: sameSession ? sessionId : 'f00d', blobs })).finish());
        expectClean(await rawCall('Upload', [mutate(msg, ops)]), 'Upload');
      }),
      GRPC_RUNS,
    );
    await fc.assert(
      fc.asyncProperty(fc.array(fc.uint8Array({ maxLength: 300 }), { minLength: 1, maxLength: 3 }), async (frames) => expectClean(await rawCall('Upload', frames.map((f) => Buffer.from(f))), 'Upload frames')),
      GRPC_RUNS,
    );
  });

  it('any authorization header but a valid token is UNAUTHENTICATED', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.string({ maxLength: 80 }), fc.string({ maxLength: 43 }).map((s) => `Bearer cairn_${s}`)), async (header) => {
        const printable = header.replace(/[^\x20-\x7e]/g, '') || 'x';
        const s = await rawCall('Hello', [Buffer.alloc(0)], printable);
        expect(codeName(s.code), printable).toBe('UNAUTHENTICATED');
      }),
      GRPC_RUNS,
    );
  });

  it('is still alive, answers Hello, logged no internal error and kept its memory bounded', async () => {
    expect(server.proc.exitCode).toBeNull();
    expect((await conn.unary<{ repository: string }>('Hello', {})).repository).toBe('default');
    expect(server.logs.filter((l) => l.includes('"msg":"internal error"'))).toEqual([]);
    expect(peakRss(server.proc.pid!)).toBeLessThan(512 * 1024 * 1024);
    // Each kind of refusal was reached, so the inputs got past the decoder into the handlers.
    for (const code of ['INVALID_ARGUMENT', 'FAILED_PRECONDITION', 'INTERNAL']) expect(statuses.get(code) ?? 0, code).toBeGreaterThan(0);
  });
});
