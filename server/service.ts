import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { wireTime } from '../common/durations.js';
import { CairnError, Code, invalidArgument, toCairnError } from '../common/errors.js';
import { ID_BYTES, toHex } from '../common/hash.js';
import type { BeginBackupRequest, CommitBackupRequest, FindMissingRequest, GetSnapshotRequest, HelloReply, ListSnapshotsRequest, Node, UploadRequest } from '../common/messages.js';
import { emptySummary } from '../common/messages.js';
import { MAX_TREE_BLOB_BYTES } from '../common/tree.js';
import { SERVER_VERSION } from '../common/version.js';
import { applyPolicyAfterCommit } from './forget.js';
import { validateName, type Repository } from './repository.js';
import type { SessionManager } from './sessions.js';

export const MAX_MESSAGE_BYTES = MAX_TREE_BLOB_BYTES + 1024 * 1024;
const MAX_IDS_PER_CALL = 10_000;
const UPLOAD_READ_AHEAD = 2;
const READ_CHUNKS_MAX_IDS = 1_000;
const TREE_ENTRIES_PER_MESSAGE = 1_000;

/** Who is calling and which repository the call acts on; the access-control layer decides both. */
export interface CallContext {
  repo: Repository;
  principal: string;
}

export type Authorizer = (call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown>, rpc: string) => Promise<CallContext>;

type Unary<Req, Res> = (req: Req, ctx: CallContext) => Promise<Res>;
/**
 * `stillWanted` throws CANCELLED once the client has gone: a handler that can work long
 * without sending (a find over many snapshots that match nothing) asks it as it goes.
 */
type ServerStream<Req, Res> = (req: Req, ctx: CallContext, send: (msg: Res) => Promise<void>, stillWanted: () => void) => Promise<void>;

function grpcError(err: unknown, log: Logger, rpc: string): grpc.ServiceError {
  const e = toCairnError(err);
  if (e.code === Code.INTERNAL) log.error({ rpc, err }, 'internal error');
  else log.debug({ rpc, code: e.code, msg: e.message }, 'call refused');
  return Object.assign(new Error(e.message), { code: e.code, details: e.message, metadata: new grpc.Metadata() });
}

function requireId(id: Buffer | undefined, what: string): Buffer {
  if (!id || id.length !== ID_BYTES) throw invalidArgument(`${what} must be a ${ID_BYTES}-byte id, got ${id?.length ?? 0} bytes`);
  return id;
}

function unary<Req, Res>(name: string, auth: Authorizer, log: Logger, fn: Unary<Req, Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    auth(call as grpc.ServerUnaryCall<unknown, unknown>, name)
      .then((ctx) => fn(call.request, ctx))
      .then((res) => callback(null, res))
      .catch((err) => callback(grpcError(err, log, name)));
  };
}

function serverStream<Req, Res>(name: string, auth: Authorizer, log: Logger, fn: ServerStream<Req, Res>): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    let cancelled = false;
    call.on('cancelled', () => (cancelled = true));
    const stillWanted = () => {
      if (cancelled) throw new CairnError(Code.CANCELLED, 'client cancelled the call');
    };
    const send = async (msg: Res): Promise<void> => {
      stillWanted();
      // Honour backpressure: a slow reader must not make us buffer the whole answer. A client
      // gone while we wait sends no drain, so its cancellation ends the wait too.
      if (!call.write(msg)) {
        await new Promise<void>((resolve) => {
          const done = () => {
            call.off('drain', done);
            call.off('cancelled', done);
            resolve();
          };
          call.once('drain', done);
          call.once('cancelled', done);
        });
        stillWanted();
      }
    };
    auth(call as grpc.ServerWritableStream<unknown, unknown>, name)
      .then((ctx) => fn(call.request, ctx, send, stillWanted))
      .then(() => call.end())
      .catch((err) => {
        // Not call.destroy(): grpc-js then never sends the status and the client waits forever.
        if (!cancelled) call.emit('error', grpcError(err, log, name));
      });
  };
}

/** What every group of RPC handlers is built from. */
export interface ServiceDeps {
  sessions: SessionManager;
  auth: Authorizer;
  log: Logger;
}

export function coreHandlers(deps: ServiceDeps): grpc.UntypedServiceImplementation {
  const { sessions, auth, log } = deps;

  const hello: Unary<unknown, HelloReply> = async (_req, { repo }) => ({
    serverVersion: SERVER_VERSION,
    repositoryId: repo.config.id,
    chunker: repo.config.chunker,
    maxMessageBytes: MAX_MESSAGE_BYTES,
    maxBlobRawBytes: repo.maxBlobRaw,
    compressionLevel: repo.config.compressionLevel,
    repository: repo.name,
    storeRequests: JSON.stringify(repo.store.counts()),
  });

  const beginBackup: Unary<BeginBackupRequest, unknown> = async (req, { repo, principal }) => {
    const dataset = validateName('dataset', req.dataset);
    const host = validateName('host', req.host);
    const tags = req.tags.map((t) => validateName('tag', t));
    const time = wireTime(req.time, 'time') ?? new Date().toISOString();
    const session = await sessions.begin({ repo, dataset, host, paths: req.paths, tags, time, principal }, async () => {
      for await (const s of repo.listSnapshots({ dataset, host, limit: 1 })) return s;
      return undefined;
    });
    const parent = session.parent;
    log.info({ session: session.id, dataset, host, parent: parent?.id }, 'backup started');
    return { sessionId: session.id, parent: parent ?? null };
  };

  const findMissing: Unary<FindMissingRequest, unknown> = async (req, { principal }) => {
    const session = sessions.get(req.sessionId, principal);
    if (req.ids.length > MAX_IDS_PER_CALL) throw invalidArgument(`FindMissing takes at most ${MAX_IDS_PER_CALL} ids per call, got ${req.ids.length}`);
    req.ids.forEach((id) => requireId(id, 'chunk id'));
    return session.repo.gcLock.shared(async () => {
      const present = await session.repo.present(req.ids);
      const missing: Buffer[] = [];
      const pins: string[] = [];
      present.forEach((p, i) => (p ? pins.push(toHex(req.ids[i])) : missing.push(req.ids[i])));
      await sessions.pin(session, pins);
      return { missing };
    });
  };

  const upload: grpc.handleClientStreamingCall<UploadRequest, unknown> = (call, callback) => {
    let received = 0;
    let stored = 0;
    let storedBytes = 0;
    let sessionId = '';
    let failed = false;
    let chain: Promise<void> = Promise.resolve();
    let cancelled = false;
    let release = () => {};
    const fail = (err: unknown) => {
      release();
      if (failed) return;
      failed = true;
      callback(grpcError(err, log, 'Upload'));
    };
    // Nothing is read until the caller is known and admitted: a message of up to
    // MAX_MESSAGE_BYTES accumulates while it arrives, on every stream that reads. Then at most
    // two messages are read ahead of the one being verified, where grpc-js would read sixteen.
    // None ahead made a first snapshot 5% slower (the client waited); two cost nothing measurable.
    call.pause();
    (call as unknown as { _readableState: { highWaterMark: number } })._readableState.highWaterMark = UPLOAD_READ_AHEAD;
    const ctxPromise = auth(call as grpc.ServerReadableStream<unknown, unknown>, 'Upload').then((ctx) => {
      // A stream gone while its caller was checked must not take a place nobody would give back.
      if (failed || cancelled) throw new CairnError(Code.CANCELLED, 'client cancelled the call');
      release = sessions.openUpload(ctx.principal);
      return ctx;
    });
    ctxPromise.then(() => void (failed || call.resume()), fail);
    call.on('cancelled', () => {
      cancelled = true;
      release();
    });
    call.on('data', (req: UploadRequest) => {
      if (failed) return;
      call.pause();
      chain = chain
        .then(async () => {
          const { principal } = await ctxPromise;
          sessionId ||= req.sessionId;
          if (req.sessionId && req.sessionId !== sessionId) throw invalidArgument('one Upload stream carries one session');
          const session = sessions.get(sessionId, principal);
          const repo = session.repo;
          const trees = req.blobs.filter((b) => b.kind === 'TREE');
          const treeBytes = trees.reduce((sum, b) => sum + b.rawLength, 0);
          // A single tree past the limit is refused by verifyBlob, with the blob's own message.
          if (trees.length > 1 && treeBytes > MAX_TREE_BLOB_BYTES) {
            throw new CairnError(Code.RESOURCE_EXHAUSTED, `one Upload message carries ${treeBytes} raw bytes of trees, the limit is ${MAX_TREE_BLOB_BYTES}; send them in separate messages`);
          }
          // One blob at a time, keeping no refs the session did not remember: a small message
          // of highly compressible trees would otherwise hold every copy's refs at once.
          const blobs = req.blobs.map((b) => {
            const { refs, ...blob } = repo.verifyBlob(b);
            if (refs) session.trees.remember(toHex(blob.id), refs);
            return blob;
          });
          await repo.gcLock.shared(async () => {
            const present = await repo.present(blobs.map((b) => b.id));
            for (let i = 0; i < blobs.length; i++) {
              received++;
              if (present[i]) continue;
              stored++;
              storedBytes += blobs[i].data.length;
              session.newChunks++;
              session.newBytes += blobs[i].data.length;
              await repo.writer.add(blobs[i]);
            }
            await sessions.pin(session, blobs.map((b) => toHex(b.id)));
          });
        })
        .then(() => void call.resume(), fail);
    });
    call.on('end', () => {
      chain.then(() => {
        release();
        if (!failed) callback(null, { blobsReceived: String(received), blobsStored: String(stored), bytesStored: String(storedBytes) });
      }, fail);
    });
    call.on('error', fail);
  };

  const commitBackup: Unary<CommitBackupRequest, unknown> = async (req, { principal }) => {
    const session = sessions.get(req.sessionId, principal);
    const root = requireId(req.rootTree, 'root_tree');
    const repo = session.repo;
    await repo.writer.flush();
    const summary = { ...emptySummary(), ...(req.summary ?? {}), newBytes: String(session.newBytes), newChunks: String(session.newChunks) };
    // Held shared from verification to the snapshot's index keys: a prune cannot unindex what
    // this commit just found present, even for chunks the session was never told about.
    const snapshot = await repo.gcLock.shared(async () => {
      // The wait for the lock may outlast the client: an aborted session records nothing.
      sessions.get(session.id, principal);
      await repo.verifyComplete(root, session.trees);
      return repo.writeSnapshot({
        version: 1,
        dataset: session.dataset,
        host: session.host,
        paths: session.paths,
        tags: session.tags,
        time: session.time,
        parent: session.parent?.id ?? '',
        rootTree: toHex(root),
        summary,
        clientVersion: req.clientVersion,
      });
    });
    await sessions.end(session);
    log.info({ snapshot: snapshot.id, dataset: snapshot.dataset, host: snapshot.host, newBytes: session.newBytes, requests: repo.store.counts() }, 'snapshot committed');
    await applyPolicyAfterCommit(repo, snapshot.dataset, log);
    return snapshot;
  };

  const abortBackup: Unary<{ sessionId: string }, unknown> = async (req, { principal }) => {
    const session = sessions.get(req.sessionId, principal);
    await sessions.end(session);
    log.info({ session: session.id }, 'backup aborted');
    return {};
  };

  const listSnapshots: ServerStream<ListSnapshotsRequest, unknown> = async (req, { repo }, send) => {
    const since = wireTime(req.since, 'since');
    const until = wireTime(req.until, 'until');
    for await (const s of repo.listSnapshots({ dataset: req.dataset || undefined, host: req.host || undefined, tag: req.tag || undefined, since, until, limit: req.limit || undefined })) {
      await send(s);
    }
  };

  const getSnapshot: Unary<GetSnapshotRequest, unknown> = async (req, { repo }) =>
    repo.resolveSnapshot(req.ref || 'latest', { dataset: req.dataset || undefined, host: req.host || undefined, tag: req.tag || undefined });

  const readTree: ServerStream<{ id: Buffer }, { nodes: Node[] }> = async (req, { repo }, send) => {
    const nodes = await repo.readTree(requireId(req.id, 'tree id'));
    for (let i = 0; i < nodes.length || i === 0; i += TREE_ENTRIES_PER_MESSAGE) {
      await send({ nodes: nodes.slice(i, i + TREE_ENTRIES_PER_MESSAGE) });
    }
  };

  const readChunks: ServerStream<{ ids: Buffer[] }, unknown> = async (req, { repo }, send) => {
    if (req.ids.length > READ_CHUNKS_MAX_IDS) throw invalidArgument(`ReadChunks takes at most ${READ_CHUNKS_MAX_IDS} ids per call, got ${req.ids.length}`);
    req.ids.forEach((id) => requireId(id, 'chunk id'));
    for await (const b of repo.readStored(req.ids)) {
      await send({ id: b.id, kind: b.loc.kind, compression: b.loc.compressed ? 'ZSTD' : 'NONE', rawLength: b.loc.rawLength, data: b.stored });
    }
  };

  return {
    Hello: unary('Hello', auth, log, hello),
    BeginBackup: unary('BeginBackup', auth, log, beginBackup),
    FindMissing: unary('FindMissing', auth, log, findMissing),
    Upload: upload,
    CommitBackup: unary('CommitBackup', auth, log, commitBackup),
    AbortBackup: unary('AbortBackup', auth, log, abortBackup),
    ListSnapshots: serverStream('ListSnapshots', auth, log, listSnapshots),
    GetSnapshot: unary('GetSnapshot', auth, log, getSnapshot),
    ReadTree: serverStream('ReadTree', auth, log, readTree),
    ReadChunks: serverStream('ReadChunks', auth, log, readChunks),
  };
}

export { unary, serverStream, requireId };
