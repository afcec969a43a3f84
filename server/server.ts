import * as grpc from '@grpc/grpc-js';
import path from 'node:path';
import type { Logger } from 'pino';
import { cairnServiceDefinition } from '../common/proto.js';
import { CairnError, Code, failedPrecondition, invalidArgument } from '../common/errors.js';
import { adminHandlers } from './admin-service.js';
import { AccessControl } from './auth.js';
import type { ObjectStore } from './object-store.js';
import { FileStore } from './file-store.js';
import { PrefixedStore } from './prefixed-store.js';
import { queryHandlers } from './query-service.js';
import { Repository } from './repository.js';
import { widenConnectionWindow, widenStreamWindow } from './receive-window.js';
import { WriterLease } from './writer-lease.js';
import { SessionManager } from './sessions.js';
import { coreHandlers, MAX_MESSAGE_BYTES, type ServiceDeps } from './service.js';
import type { ChunkerParams } from '../common/chunker.js';
import { isLoopback, serverCredentials, type ServerTls } from './tls.js';
import { DEFAULT_REPOSITORY, listRepositories, repositoryExists, TokenStore } from './tokens.js';

export interface ServerOptions {
  listen: string;
  store: ObjectStore;
  indexDir: string;
  log: Logger;
  packSize?: number;
  chunker?: ChunkerParams;
  sessionIdleMs?: number;
  maxSessionsPerToken?: number;
  /** Idle time before the server pings a connection; one that does not answer as long is closed. */
  keepaliveMs?: number;
  /** Upload streams one token may have open at once (see SessionLimits). */
  maxUploadsPerToken?: number;
  tls?: ServerTls;
  /** Serve a non-loopback address with neither a token nor client certificates. */
  insecure?: boolean;
  /** How long a token check is reused (0: every call reads the token store, revocation acts at once). */
  tokenCacheMs?: number;
  /** How long a writer lease lives without a refresh; a second server waits this long to take over. */
  leaseTtlMs?: number;
  /** Called when this server has lost its writer lease and must stop writing. */
  onFatal?: (err: CairnError) => void;
}

export { DEFAULT_REPOSITORY };

/** Opens (or initialises) the store's repositories and serves them over gRPC. */
export class CairnServer {
  readonly grpc: grpc.Server;
  readonly repos = new Map<string, Repository>();
  private readonly opening = new Map<string, Promise<Repository>>();
  private readonly leases: WriterLease[] = [];
  readonly sessions: SessionManager;
  readonly access: AccessControl;
  port = 0;

  private constructor(readonly opts: ServerOptions) {
    const keepaliveMs = opts.keepaliveMs ?? 60_000;
    this.grpc = new grpc.Server({
      'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
      // A client that vanished (power loss, a NAT that forgot the flow) sends no FIN: without
      // pings its streams, and the Upload places they hold, would stay open for good.
      'grpc.keepalive_time_ms': keepaliveMs,
      'grpc.keepalive_timeout_ms': Math.min(keepaliveMs, 20_000),
    });
    this.sessions = new SessionManager({ maxSessions: 256, maxSessionsPerPrincipal: opts.maxSessionsPerToken ?? 64, maxUploadsPerPrincipal: opts.maxUploadsPerToken ?? 32, idleTimeoutMs: opts.sessionIdleMs ?? 60 * 60 * 1000 });
    this.access = new AccessControl({ tokens: new TokenStore(opts.store), repository: (name) => this.repository(name), cacheMs: opts.tokenCacheMs ?? 0, log: opts.log });
  }

  static async start(opts: ServerOptions): Promise<CairnServer> {
    const server = new CairnServer(opts);
    const authOn = await server.access.refreshEnabled();
    if (!authOn && !opts.tls?.clientCa && !opts.insecure && !isLoopback(opts.listen)) {
      throw failedPrecondition(
        `refusing to serve ${opts.listen} without access control: no token exists and no --tls-client-ca is set, so anyone who can reach the port could read and delete every snapshot. ` +
          'Create a token first (cairn-server token create --role admin --name ops), or pass --insecure to serve it anyway',
      );
    }
    const honoured = await opts.store.honoursConditionalCreate?.().catch((err: unknown) => {
      opts.log.warn({ store: opts.store.description, err: (err as Error).message }, 'could not check whether the store honours conditional writes');
      return undefined;
    });
    if (honoured === false) {
      opts.log.error(
        { store: opts.store.description },
        'this store ignores conditional writes (If-None-Match): the writer lease cannot keep a second server out, so run only one server on this store, or two could write beside each other and prune what the other stored',
      );
    }
    for (const name of await listRepositories(opts.store)) await server.repository(name);
    const deps: ServiceDeps = { sessions: server.sessions, auth: server.access.authorize, log: opts.log };
    widenStreamWindow(server.grpc, opts.log);
    server.grpc.addService(cairnServiceDefinition, { ...coreHandlers(deps), ...queryHandlers(deps), ...adminHandlers(deps) });
    server.port = await new Promise<number>((resolve, reject) =>
      server.grpc.bindAsync(opts.listen, serverCredentials(opts.tls), (err, port) => (err ? reject(new CairnError(Code.UNAVAILABLE, `cannot listen on ${opts.listen}: ${err.message}`)) : resolve(port))),
    );
    widenConnectionWindow(server.grpc, opts.log);
    const tls = opts.tls ? (opts.tls.clientCa ? 'TLS with client certificates' : 'TLS') : 'plaintext';
    const auth = authOn
      ? 'auth is on'
      : isLoopback(opts.listen)
        ? 'auth is off until a token is created: local use only'
        : opts.tls?.clientCa
          ? 'auth is off until a token is created: client certificates only'
          : 'auth is off: --insecure';
    opts.log.info({ listen: opts.listen, port: server.port, store: opts.store.description, index: opts.indexDir, repositories: [...server.repos.keys()] }, `cairn-server ready (${auth}; ${tls})`);
    return server;
  }

  /** A repository by name, opened on first use: `repo create` may have added it while we run. */
  repository(name: string): Promise<Repository> {
    const open = this.repos.get(name);
    if (open) return Promise.resolve(open);
    let pending = this.opening.get(name);
    if (!pending) {
      pending = (async () => {
        if (!(await repositoryExists(this.opts.store, name))) throw failedPrecondition(`repository ${name} does not exist (was it removed?); create it with cairn-server repo create ${name}`);
        return this.openRepository(name);
      })().finally(() => this.opening.delete(name));
      this.opening.set(name, pending);
    }
    return pending;
  }

  async openRepository(name: string): Promise<Repository> {
    const store = new PrefixedStore(this.opts.store, `repos/${name}/`);
    const lease = new WriterLease(store, this.opts.leaseTtlMs ?? 60_000, this.opts.log, (err) => {
      this.opts.log.fatal({ repository: name, err: err.message }, 'writer lease lost');
      (this.opts.onFatal ?? (() => process.exit(1)))(err);
    });
    await lease.acquire();
    this.leases.push(lease);
    const repo = await Repository.open({
      name,
      store,
      indexDir: path.join(this.opts.indexDir, name),
      log: this.opts.log,
      packSize: this.opts.packSize,
      chunker: this.opts.chunker,
    });
    this.repos.set(name, repo);
    return repo;
  }

  async stop(): Promise<void> {
    try {
      await new Promise<void>((resolve) => this.grpc.tryShutdown(() => resolve()));
      await this.sessions.close();
      for (const repo of this.repos.values()) await repo.close();
    } finally {
      // This process writes nothing more either way: a repository that failed to close must
      // not keep the next writer waiting out the lease.
      for (const lease of this.leases) await lease.release();
      await this.opts.store.close();
    }
  }
}

export interface S3Flags {
  endpoint?: string;
  region?: string;
  s3PathStyle?: boolean;
}

/** `file:DIR` (or a bare path) for the embedded default, `s3://bucket/prefix` for S3-compatible stores. */
export async function openStore(spec: string, s3: S3Flags = {}, log?: Logger): Promise<ObjectStore> {
  if (spec.startsWith('file:')) return new FileStore(path.resolve(spec.slice('file:'.length)));
  if (spec.startsWith('s3://')) {
    // Loaded only here: the AWS SDK cost a folder-store server ~24 MiB of RSS and ~160 ms of start.
    const { parseS3Url, S3Store } = await import('./s3-store.js');
    const { bucket, prefix } = parseS3Url(spec);
    return new S3Store({ bucket, prefix, endpoint: s3.endpoint, region: s3.region, pathStyle: s3.s3PathStyle, log: log && ((msg, fields) => log.warn(fields ?? {}, msg)) });
  }
  if (!spec.includes(':')) return new FileStore(path.resolve(spec));
  throw invalidArgument(`unsupported store ${JSON.stringify(spec)}: use file:DIR or s3://bucket/prefix`);
}
