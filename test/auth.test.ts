import { promises as fs } from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Connection } from '../client/connection.js';
import { CairnError, Code, codeName } from '../common/errors.js';
import { toHex } from '../common/hash.js';
import type { BeginBackupReply, HelloReply, Snapshot } from '../common/messages.js';
import { cairnServiceDefinition, RPC_NAMES } from '../common/proto.js';
import { emptyNode, encodeTree } from '../common/tree.js';
import { AccessControl, ACCESS } from '../server/auth.js';
import type { Repository } from '../server/repository.js';
import { FileStore } from '../server/file-store.js';
import { hashToken, NAMES_PREFIX, TOKENS_PREFIX, TokenStore, type TokenRecord } from '../server/tokens.js';
import { createRepo, createToken, failure, rawBlob, serverCli, upload } from './auth-helpers.js';
import { cleanupTmp, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';

type Role = 'agent' | 'reader' | 'admin';
const ROLES: Role[] = ['agent', 'reader', 'admin'];

/**
 * What this suite expects, written independently of server/auth.ts: an RPC added to the
 * .proto fails here until someone decides who may call it.
 */
const EXPECTED: Record<string, Role[]> = {
  Hello: ['agent', 'reader', 'admin'],
  BeginBackup: ['agent', 'admin'],
  FindMissing: ['agent', 'admin'],
  Upload: ['agent', 'admin'],
  CommitBackup: ['agent', 'admin'],
  AbortBackup: ['agent', 'admin'],
  ListSnapshots: ['agent', 'reader', 'admin'],
  GetSnapshot: ['agent', 'reader', 'admin'],
  ReadTree: ['agent', 'reader', 'admin'],
  ReadChunks: ['agent', 'reader', 'admin'],
  Diff: ['agent', 'reader', 'admin'],
  Find: ['agent', 'reader', 'admin'],
  Stats: ['agent', 'reader', 'admin'],
  Status: ['agent', 'reader', 'admin'],
  GetPolicy: ['agent', 'reader', 'admin'],
  Heartbeat: ['agent', 'admin'],
  Forget: ['admin'],
  Prune: ['admin'],
  Check: ['admin'],
  SetPolicy: ['admin'],
  Protect: ['admin'],
};

/** A request each RPC accepts from the agent token named gpu-3 (its own host), so only access control can refuse it. */
const REQUESTS: Record<string, unknown> = {
  BeginBackup: { dataset: 'matrix', host: 'gpu-3', paths: ['/x'], tags: [], time: '' },
  FindMissing: { sessionId: 'none', ids: [] },
  CommitBackup: { sessionId: 'none' },
  AbortBackup: { sessionId: 'none' },
  ReadTree: { id: Buffer.alloc(32) },
  Find: { pattern: '*' },
  Heartbeat: { dataset: 'matrix', host: 'gpu-3', ok: true },
  Forget: { dataset: 'matrix', dryRun: true },
  Prune: { dryRun: true },
  SetPolicy: { policy: { dataset: 'matrix' } },
  GetPolicy: { dataset: 'matrix' },
  Protect: { ref: 'ffff', protected: true },
};

/** Calls any RPC of the contract (unary, server stream or client stream) and returns its status code. */
async function callCode(conn: Connection, rpc: string): Promise<number> {
  const def = cairnServiceDefinition[rpc];
  const req = REQUESTS[rpc] ?? {};
  try {
    if (def.requestStream) {
      const { call, result } = conn.clientStream(rpc);
      call.write({ sessionId: 'none', blobs: [] });
      call.end();
      await result;
    } else if (def.responseStream) {
      for await (const _ of conn.stream(rpc, req));
    } else {
      await conn.unary(rpc, req);
    }
    return Code.OK;
  } catch (err) {
    if (!(err instanceof CairnError)) throw err;
    return err.code;
  }
}

function treeWithFile(name: string, chunk: Buffer): Buffer {
  const node = emptyNode(name, 'FILE');
  node.chunks = [rawBlob(chunk).id];
  node.size = String(chunk.length);
  node.mode = 0o644;
  return encodeTree([node]);
}

describe('access control over real gRPC', () => {
  let server: ServerHandle;
  const tokens: Record<string, string> = {};
  const conns: Connection[] = [];
  const as = (token?: string) => {
    const c = new Connection({ server: server.addr, token });
    conns.push(c);
    return c;
  };

  beforeAll(async () => {
    server = await startServer();
    // Made while the server runs: it must pick up new repositories and tokens without a restart.
    await createRepo(server.storeSpec, 'ml-team');
    await createRepo(server.storeSpec, 'cv-team');
    const made = await Promise.all([
      createToken(server.storeSpec, 'ml-team', 'agent', 'gpu-3'),
      createToken(server.storeSpec, 'ml-team', 'reader', 'analyst'),
      createToken(server.storeSpec, 'ml-team', 'admin', 'ops'),
      createToken(server.storeSpec, 'cv-team', 'agent', 'gpu-3'),
      createToken(server.storeSpec, 'cv-team', 'admin', 'ops'),
    ]);
    [tokens.agent, tokens.reader, tokens.admin, tokens.cvAgent, tokens.cvAdmin] = made;
  });
  afterAll(async () => {
    for (const c of conns) c.close();
    await server?.stop();
    cleanupTmp();
  });

  it('has an access decision for every RPC of the .proto, and refuses an RPC without one', async () => {
    expect(Object.keys(ACCESS).sort()).toEqual([...RPC_NAMES].sort());
    expect(Object.keys(EXPECTED).sort()).toEqual([...RPC_NAMES].sort());
    const access = new AccessControl({
      tokens: { any: async () => true, lookup: async () => undefined } as unknown as TokenStore,
      repository: async () => ({}) as Repository,
      cacheMs: 0,
      log: pino({ level: 'silent' }),
    });
    const call = { metadata: { get: () => [] }, getPeer: () => 'test' } as unknown as Parameters<typeof access.authorize>[0];
    expect(await failure(access.authorize(call, 'DropEverything'))).toBe('PERMISSION_DENIED: RPC DropEverything has no access rule on this server; it is refused for every token');
  });

  it('allows and refuses every RPC of the .proto for every role exactly as the matrix says', async () => {
    const got: string[] = [];
    const want: string[] = [];
    for (const rpc of RPC_NAMES) {
      for (const role of ROLES) {
        const code = await callCode(as(tokens[role]), rpc);
        expect(code, `${rpc} as ${role}`).not.toBe(Code.UNAUTHENTICATED);
        got.push(`${rpc} ${role} ${code === Code.PERMISSION_DENIED ? 'denied' : 'allowed'}`);
        want.push(`${rpc} ${role} ${EXPECTED[rpc]?.includes(role) ? 'allowed' : 'denied'}`);
      }
    }
    expect(got).toEqual(want);
  });

  it('refuses every RPC without a token, with a malformed token and with an unknown one (UNAUTHENTICATED)', async () => {
    const unknown = `cairn_${'A'.repeat(43)}`;
    for (const rpc of RPC_NAMES) {
      for (const token of [undefined, 'not-a-token', unknown]) {
        expect(codeName(await callCode(as(token), rpc)), `${rpc} with ${token}`).toBe('UNAUTHENTICATED');
      }
    }
    expect(await failure(as().unary('Hello', {}))).toBe('UNAUTHENTICATED: this server requires a token: pass --token or set CAIRN_TOKEN');
    expect(await failure(as(unknown).unary('Hello', {}))).toBe('UNAUTHENTICATED: the token is unknown or has been revoked');
  });

  it('lets an agent token back up only its own host, at the server time', async () => {
    const agent = as(tokens.agent);
    expect(await failure(agent.unary('BeginBackup', { dataset: 'd', host: 'gpu-4', paths: [], tags: [] }))).toBe(
      'PERMISSION_DENIED: agent token gpu-3 may only act for host gpu-3, not "gpu-4"',
    );
    expect(await failure(agent.unary('BeginBackup', { dataset: 'd', host: 'gpu-3', paths: [], tags: [], time: '2020-01-01T00:00:00Z' }))).toMatch(/^PERMISSION_DENIED: agent token gpu-3 may not set the snapshot time/);
    expect(await failure(agent.unary('Heartbeat', { dataset: 'd', host: 'gpu-4', ok: false, error: 'forged' }))).toMatch(/^PERMISSION_DENIED: agent token gpu-3 may only act for host gpu-3/);
    // An admin may back up for any host and time (imports, migrations).
    const { sessionId } = await as(tokens.admin).unary<BeginBackupReply>('BeginBackup', { dataset: 'd', host: 'gpu-4', paths: [], tags: [], time: '2020-01-01T00:00:00Z' });
    await as(tokens.admin).unary('AbortBackup', { sessionId });
  });

  it('keeps an agent append-only: it backs up through the CLI but cannot forget, prune or unprotect', async () => {
    const dir = path.join(tmpDir(), 'agent-data');
    await fs.mkdir(dir);
    await fs.writeFile(path.join(dir, 'weights.bin'), 'step 1');
    const env = { CAIRN_TOKEN: tokens.agent };
    const snap = await runCli(['--json', 'snapshot', dir, '--dataset', 'runs', '--host', 'gpu-3'], { server: server.addr, env });
    expect(snap.stderr).toBe('');
    const id = (JSON.parse(snap.stdout) as { snapshot: Snapshot }).snapshot.id;
    const forget = await runCli(['forget', id], { server: server.addr, env });
    expect(forget.code).toBe(1);
    expect(forget.stderr).toMatch(/PERMISSION_DENIED: Forget needs a token with role admin; token gpu-3 of repository ml-team has role agent/);
    expect((await runCli(['prune'], { server: server.addr, env })).stderr).toMatch(/PERMISSION_DENIED: Prune needs a token with role admin/);
    expect((await runCli(['unprotect', id], { server: server.addr, env })).stderr).toMatch(/PERMISSION_DENIED: Protect needs a token with role admin/);
    const history = await runCli(['--json', 'history', '--dataset', 'runs'], { server: server.addr, env: { CAIRN_TOKEN: tokens.reader } });
    expect(history.stdout).toContain(id);
  });

  it('isolates repositories: a token of one cannot read, list or learn of the other\'s chunks and snapshots', async () => {
    const ml = as(tokens.agent);
    const cv = as(tokens.cvAgent);
    const secret = Buffer.from('ml-team only: proprietary weights');
    const tree = treeWithFile('weights.bin', secret);
    const { sessionId } = await ml.unary<BeginBackupReply>('BeginBackup', { dataset: 'iso', host: 'gpu-3', paths: ['/w'], tags: [] });
    await upload(ml, sessionId, [rawBlob(secret), rawBlob(tree, 'TREE')]);
    const snap = await ml.unary<Snapshot>('CommitBackup', { sessionId, rootTree: rawBlob(tree).id, clientVersion: 't' });

    expect((await cv.unary<HelloReply>('Hello', {})).repository).toBe('cv-team');
    const cvSession = await cv.unary<BeginBackupReply>('BeginBackup', { dataset: 'iso', host: 'gpu-3', paths: ['/w'], tags: [] });
    const { missing } = await cv.unary<{ missing: Buffer[] }>('FindMissing', { sessionId: cvSession.sessionId, ids: [rawBlob(secret).id, rawBlob(tree).id] });
    expect(missing.map(toHex)).toEqual([toHex(rawBlob(secret).id), toHex(rawBlob(tree).id)]);
    expect(await failure((async () => { for await (const _ of cv.stream('ReadChunks', { ids: [rawBlob(secret).id] })); })())).toMatch(/^NOT_FOUND: .* is not in repository cv-team$/);
    expect(await failure((async () => { for await (const _ of cv.stream('ReadTree', { id: rawBlob(tree).id })); })())).toMatch(/^NOT_FOUND: tree [0-9a-f]{64} is not in repository cv-team$/);
    expect(await failure(cv.unary('GetSnapshot', { ref: snap.id }))).toBe(`NOT_FOUND: snapshot ${snap.id} does not exist in repository cv-team`);
    const listed: string[] = [];
    for await (const s of as(tokens.cvAdmin).stream<Snapshot>('ListSnapshots', {})) listed.push(s.id);
    expect(listed).not.toContain(snap.id);
    // Same token name in two repositories, two principals: one cannot drive the other's session.
    expect(await failure(ml.unary('FindMissing', { sessionId: cvSession.sessionId, ids: [] }))).toMatch(/^FAILED_PRECONDITION: backup session [0-9a-f]+ is unknown/);
    // And an admin of cv-team cannot forget ml-team's snapshot: it does not exist for them.
    expect(await failure(as(tokens.cvAdmin).unary('Forget', { snapshotIds: [snap.id] }))).toMatch(/^NOT_FOUND: /);
    expect((await as(tokens.reader).unary<Snapshot>('GetSnapshot', { ref: snap.id })).id).toBe(snap.id);
  });

  it('refuses a revoked token at once, while the server keeps running', async () => {
    const token = await createToken(server.storeSpec, 'ml-team', 'reader', 'temp');
    const conn = as(token);
    expect((await conn.unary<HelloReply>('Hello', {})).repository).toBe('ml-team');
    const list = await serverCli(server.storeSpec, ['token', 'list']);
    expect(list.stdout).toMatch(/^temp\tml-team\treader\t/m);
    expect(list.stdout).not.toContain(token);
    const r = await serverCli(server.storeSpec, ['token', 'revoke', 'temp']);
    expect(r.stderr).toMatch(/^token temp \(reader on ml-team, created \d{4}-\d\d-\d\dT[\d:.]+Z\) revoked\n$/);
    expect(await failure(conn.unary('Hello', {}))).toBe('UNAUTHENTICATED: the token is unknown or has been revoked');
    expect(await failure((async () => { for await (const _ of conn.stream('ListSnapshots', {})); })())).toBe('UNAUTHENTICATED: the token is unknown or has been revoked');
  });

  it('stores tokens only as hashes, and names revocation ambiguity', async () => {
    const stored = await fs.readdir(path.join(server.storeSpec.slice('file:'.length), 'auth/tokens'));
    expect(stored.length).toBeGreaterThanOrEqual(5);
    const all = (await Promise.all(stored.map((f) => fs.readFile(path.join(server.storeSpec.slice('file:'.length), 'auth/tokens', f), 'utf8')))).join('\n');
    for (const t of Object.values(tokens)) expect(all).not.toContain(t.slice('cairn_'.length));
    const r = await serverCli(server.storeSpec, ['token', 'revoke', 'gpu-3']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe('cairn-server: INVALID_ARGUMENT: token name gpu-3 exists in repositories cv-team, ml-team; say which with --repo\n');
    const dup = await serverCli(server.storeSpec, ['token', 'create', '--repo', 'ml-team', '--role', 'admin', '--name', 'ops']);
    expect(dup.stderr).toMatch(/FAILED_PRECONDITION: a token named ops already exists for repository ml-team/);
    const noRepo = await serverCli(server.storeSpec, ['token', 'create', '--repo', 'nlp-team', '--role', 'admin', '--name', 'ops']);
    expect(noRepo.stderr).toBe('cairn-server: NOT_FOUND: repository nlp-team does not exist; create it first with: cairn-server repo create nlp-team\n');
  });
});

describe('token names', () => {
  afterAll(() => cleanupTmp());

  it('six admins creating one name at once get one token between them', async () => {
    const dir = path.join(tmpDir(), 'store');
    const store = `file:${dir}`;
    // Six stores over one directory, as six `token create` processes: each lists, finds no
    // "racer", and writes; only the claim on the name keeps all six from succeeding.
    const runs = await Promise.allSettled(Array.from({ length: 6 }, () => new TokenStore(new FileStore(dir)).create({ repo: 'default', role: 'reader', name: 'racer' })));
    expect(runs.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of runs) if (r.status === 'rejected') expect(String(r.reason)).toContain('a token named racer already exists for repository default');
    const list = await serverCli(store, ['token', 'list']);
    expect(list.stdout.split('\n').filter((l) => l.startsWith('racer\t'))).toHaveLength(1);
    // Revoking frees the name.
    expect((await serverCli(store, ['token', 'revoke', 'racer'])).code).toBe(0);
    expect((await serverCli(store, ['token', 'create', '--role', 'reader', '--name', 'racer'])).code).toBe(0);
  });

  it('a revoke does not release a claim a creator made while it ran', async () => {
    const dir = path.join(tmpDir(), 'store');
    const plain = new FileStore(dir);
    const { record } = await new TokenStore(plain).create({ repo: 'default', role: 'reader', name: 'alice' });
    // alice's claim is past its grace, so a creator may take the name once the token is gone.
    await plain.put(`${NAMES_PREFIX}default/alice/0000000001`, Buffer.from(JSON.stringify({ hash: record.hash, claimed: new Date(Date.now() - 120_000).toISOString() })));
    let open = () => undefined as void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    let reached = () => undefined as void;
    const atGate = new Promise<void>((resolve) => (reached = resolve));
    // The revoke pauses after deleting the token, before it looks at the claims.
    const gated = Object.create(plain) as FileStore;
    gated.list = async function* (prefix: string) {
      if (prefix.startsWith(NAMES_PREFIX)) {
        reached();
        await gate;
      }
      yield* plain.list(prefix);
    };
    const revoking = new TokenStore(gated).revoke('alice', 'default');
    await atGate;
    // A creator takes the name over and pauses between its claim and its token.
    let write = () => undefined as void;
    const writeGate = new Promise<void>((resolve) => (write = resolve));
    let claimed = () => undefined as void;
    const atClaim = new Promise<void>((resolve) => (claimed = resolve));
    const slow = Object.create(plain) as FileStore;
    slow.putIfAbsent = async (key: string, data: Buffer) => {
      if (key.startsWith(TOKENS_PREFIX)) {
        claimed();
        await writeGate;
      }
      return plain.putIfAbsent(key, data);
    };
    const taking = new TokenStore(slow).create({ repo: 'default', role: 'reader', name: 'alice' });
    await atClaim;
    open();
    await revoking;
    // A third creator, while the second's token is not written yet: the name is still held.
    expect(await failure(new TokenStore(plain).create({ repo: 'default', role: 'reader', name: 'alice' }))).toContain('a token named alice already exists');
    write();
    const taker = await taking;
    expect((await new TokenStore(plain).list()).map((t) => t.hash)).toEqual([taker.record.hash]);
  });

  it('tokens of one name made before names were claimed are revoked together; a claim whose token never came is taken over', async () => {
    const dir = path.join(tmpDir(), 'store');
    const fileStore = new FileStore(dir);
    const tokens = new TokenStore(fileStore);
    // As the race left them: two records of one name, no claim.
    const twin = async (token: string) => {
      const hash = hashToken(token).toString('hex');
      const record = { version: 1, name: 'twin', repo: 'default', role: 'agent', created: new Date().toISOString(), hash };
      await fileStore.put(`${TOKENS_PREFIX}${hash}`, Buffer.from(JSON.stringify(record)));
      return record;
    };
    const [a, b] = [await twin(`cairn_${'a'.repeat(43)}`), await twin(`cairn_${'b'.repeat(43)}`)];
    const revoked = await tokens.revoke('twin', 'default');
    expect(revoked.map((t) => t.hash).sort()).toEqual([a.hash, b.hash].sort());
    expect(await tokens.list()).toEqual([]);
    // A creator that died between its claim and its token: the claim is taken over once past
    // its grace, by exactly one of six creators that see it stale at once.
    const ghost = (claimed: string) => fileStore.put(`${NAMES_PREFIX}default/ghost/0000000001`, Buffer.from(JSON.stringify({ hash: 'f'.repeat(64), claimed })));
    await ghost(new Date().toISOString());
    expect(await failure(tokens.create({ repo: 'default', role: 'reader', name: 'ghost' }))).toContain('FAILED_PRECONDITION: a token named ghost already exists');
    await ghost(new Date(Date.now() - 120_000).toISOString());
    const takers = await Promise.allSettled(Array.from({ length: 6 }, () => new TokenStore(new FileStore(dir)).create({ repo: 'default', role: 'reader', name: 'ghost' })));
    const won = takers.filter((r): r is PromiseFulfilledResult<{ token: string; record: TokenRecord }> => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    expect((await tokens.list()).map((t) => t.hash)).toEqual([won[0]!.value.record.hash]);
    // Revoked, the name is free at once, not after the grace.
    await tokens.revoke('ghost', 'default');
    await tokens.create({ repo: 'default', role: 'reader', name: 'ghost' });
  });
});

describe('zero configuration and exposure', () => {
  afterAll(() => cleanupTmp());

  it('runs with auth off on loopback until the first token exists, then for good', async () => {
    const server = await startServer();
    try {
      expect(server.logs.some((l) => l.includes('cairn-server ready (auth is off until a token is created: local use only; plaintext)'))).toBe(true);
      const open = new Connection({ server: server.addr });
      expect((await open.unary<HelloReply>('Hello', {})).repository).toBe('default');
      const token = await createToken(server.storeSpec, 'default', 'admin', 'ops');
      expect(await failure(open.unary('Hello', {}))).toBe('UNAUTHENTICATED: this server requires a token: pass --token or set CAIRN_TOKEN');
      const withToken = new Connection({ server: server.addr, token });
      expect((await withToken.unary<HelloReply>('Hello', {})).repository).toBe('default');
      // Revoking the last token must not reopen the server to everyone.
      await serverCli(server.storeSpec, ['token', 'revoke', 'ops']);
      expect(await failure(open.unary('Hello', {}))).toMatch(/^UNAUTHENTICATED: /);
      expect(await failure(withToken.unary('Hello', {}))).toBe('UNAUTHENTICATED: the token is unknown or has been revoked');
      open.close();
      withToken.close();
    } finally {
      await server.stop();
    }
  });

  it('refuses to serve a non-loopback address without tokens unless told --insecure', async () => {
    const dir = tmpDir();
    const store = `file:${path.join(dir, 'store')}`;
    const opts = { store, indexDir: path.join(dir, 'index') };
    await expect(startServer({ ...opts, args: ['--listen', '0.0.0.0:0'] })).rejects.toThrow(
      /FAILED_PRECONDITION: refusing to serve 0\.0\.0\.0:0 without access control: no token exists and no --tls-client-ca is set/,
    );
    const insecure = await startServer({ ...opts, args: ['--listen', '0.0.0.0:0', '--insecure'] });
    expect(insecure.logs.some((l) => l.includes('auth is off: --insecure'))).toBe(true);
    await insecure.stop();
    const token = await createToken(store, 'default', 'reader', 'r');
    const guarded = await startServer({ ...opts, args: ['--listen', '0.0.0.0:0'] });
    try {
      const conn = new Connection({ server: `127.0.0.1:${guarded.port}`, token });
      expect((await conn.unary<HelloReply>('Hello', {})).repository).toBe('default');
      conn.close();
    } finally {
      await guarded.stop();
    }
  });
});
