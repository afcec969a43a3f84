import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { CairnService } from '../common/proto.js';
import { CairnError, Code, invalidArgument, toCairnError } from '../common/errors.js';
import { MAX_CLIENT_MESSAGE_BYTES, RECEIVE_WINDOW_BYTES } from './limits.js';

/** TLS to the server: `ca` replaces the system roots (a private CA); `cert`/`key` is the client's own pair for mutual TLS. */
export interface TlsOptions {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /** The name the server's certificate must carry, when it differs from the host in --server. */
  serverName?: string;
}

export interface TlsFlags {
  tls?: boolean;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsServerName?: string;
}

function readPem(file: string, flag: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw invalidArgument(`cannot read ${flag} ${file}: ${(err as Error).message}`);
  }
}

/** TLS options from the CLI flags (or an agent's config): any TLS flag turns TLS on. */
export function tlsFromFlags(f: TlsFlags): TlsOptions | undefined {
  if (!f.tls && !f.tlsCa && !f.tlsCert && !f.tlsKey && !f.tlsServerName) return undefined;
  if (!f.tlsCert !== !f.tlsKey) throw invalidArgument('a client certificate needs both --tls-cert and --tls-key');
  const t: TlsOptions = {
    ca: f.tlsCa ? readPem(f.tlsCa, '--tls-ca') : undefined,
    cert: f.tlsCert ? readPem(f.tlsCert, '--tls-cert') : undefined,
    key: f.tlsKey ? readPem(f.tlsKey, '--tls-key') : undefined,
    serverName: f.tlsServerName,
  };
  try {
    tls.createSecureContext({ ca: t.ca, cert: t.cert, key: t.key });
  } catch (err) {
    throw invalidArgument(`TLS files are not usable (${(err as Error).message}): --tls-ca, --tls-cert and --tls-key take PEM files, and the key must belong to the certificate`);
  }
  return t;
}

/**
 * gRPC reports a failed handshake as a bare UNAVAILABLE; say which side of TLS is wrong and
 * which flag fixes it.
 */
function explain(err: unknown, tls: TlsOptions | undefined): CairnError {
  const e = toCairnError(err);
  if (e.code !== Code.UNAVAILABLE) return e;
  const m = e.message.replace(/\s+/g, ' ').replace(/\.? Resolution note: *$/, '');
  const hint = (text: string) => new CairnError(e.code, `${m} (${text})`);
  if (tls) {
    if (/certificate required/i.test(m)) return hint('TLS: the server requires a client certificate; pass --tls-cert and --tls-key');
    if (/wrong version number|packet length too long|http request/i.test(m)) return hint('TLS handshake failed: the server does not seem to serve TLS; drop the TLS flags');
    if (/certificate|self.signed|unable to (verify|get)|altname/i.test(m)) {
      return hint("TLS: the server's certificate is not trusted or does not name this server; pass --tls-ca with the CA that signed it, or --tls-server-name with the name it carries");
    }
    // TLS 1.3 checks the client certificate after the client considers the handshake done, so
    // a refused one surfaces only as a connection closed during setup: dropped, or reset when
    // the server's alert loses the race with its close (seen in CI as "read ECONNRESET").
    if (/Failed to connect \(|Connection dropped|ECONNRESET/i.test(m)) {
      return hint('TLS: the server closed the connection during setup; if it requires client certificates, --tls-cert must be signed by the CA it trusts (its --tls-client-ca)');
    }
  } else if (/Failed to connect \(|Connection dropped|Protocol error/i.test(m)) {
    return hint('if the server serves TLS, pass --tls-ca with the CA that signed its certificate, or --tls');
  }
  return new CairnError(e.code, m);
}

export interface ConnectOptions {
  server: string;
  token?: string;
  tls?: TlsOptions;
  /** Separate HTTP/2 connections, each with its own flow-control window and Upload stream. */
  channels?: number;
}

type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => grpc.ClientUnaryCall;
type StreamFn = (req: unknown, md: grpc.Metadata, opts?: grpc.CallOptions) => grpc.ClientReadableStream<unknown>;
type ClientStreamFn = (md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => grpc.ClientWritableStream<unknown>;

/**
 * Far beyond any answer a working server takes (a commit verifying a first snapshot of
 * millions of files takes tens of seconds), yet finite.
 */
export const UNARY_DEADLINE_MS = 10 * 60_000;
/** For calls whose work grows with the repository (prune, check --read-data): hours on terabytes. */
export const NO_DEADLINE = Infinity;

/** Each channel is one Upload stream per backup, counted against the server's --max-uploads-per-token (32). */
export const MAX_CHANNELS = 16;

/** A connection to cairn-server with promise and async-iterator wrappers; errors come back as CairnErrors. */
export class Connection {
  private readonly clients: grpc.Client[];
  private next = 0;

  constructor(readonly opts: ConnectOptions) {
    const n = Math.max(1, opts.channels ?? 1);
    const t = opts.tls;
    // grpc-js sends the address as the TLS server name even when it is an IP, which Node
    // answers with a deprecation warning on every connection: noise the user can do nothing about.
    if (t && net.isIP(opts.server.replace(/^\[?([^\]]*?)\]?(:\d+)?$/, '$1'))) (process as { noDeprecation?: boolean }).noDeprecation = true;
    const credentials = t ? grpc.credentials.createSsl(t.ca ?? null, t.key ?? null, t.cert ?? null) : grpc.credentials.createInsecure();
    const nameOverride = t?.serverName ? { 'grpc.ssl_target_name_override': t.serverName, 'grpc.default_authority': t.serverName } : {};
    this.clients = Array.from({ length: n }, (_, i) =>
      new CairnService(opts.server, credentials, {
        'grpc.max_receive_message_length': MAX_CLIENT_MESSAGE_BYTES,
        'grpc.max_send_message_length': MAX_CLIENT_MESSAGE_BYTES,
        // Distinct options keep grpc-js from sharing one subchannel between the channels.
        'grpc.channel_id': i,
        'grpc.keepalive_time_ms': 30_000,
        'grpc-node.flow_control_window': RECEIVE_WINDOW_BYTES,
        ...nameOverride,
      }),
    );
  }

  private token: string | undefined;

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    const token = this.token ?? this.opts.token;
    if (token) md.set('authorization', `Bearer ${token}`);
    return md;
  }

  /** For calls from now on: a long-running agent picks up a rotated token. */
  setToken(token: string): void {
    this.token = token;
  }

  private pick(channel?: number): grpc.Client {
    if (channel !== undefined) return this.clients[channel % this.clients.length];
    return this.clients[this.next++ % this.clients.length];
  }

  get channelCount(): number {
    return this.clients.length;
  }

  /** Every call has a deadline: a server that accepts a call and never answers must not hang an agent for good. */
  unary<Res>(method: string, req: unknown, channel?: number, deadlineMs = UNARY_DEADLINE_MS): Promise<Res> {
    const client = this.pick(channel) as unknown as Record<string, UnaryFn>;
    return new Promise<Res>((resolve, reject) => {
      client[method].call(client, req, this.metadata(), { deadline: Date.now() + deadlineMs }, (err, res) => (err ? reject(explain(err, this.opts.tls)) : resolve(res as Res)));
    });
  }

  async *stream<Res>(method: string, req: unknown, channel?: number): AsyncGenerator<Res> {
    const client = this.pick(channel) as unknown as Record<string, StreamFn>;
    const call = client[method].call(client, req, this.metadata());
    try {
      for await (const msg of call) yield msg as Res;
    } catch (err) {
      throw explain(err, this.opts.tls);
    } finally {
      call.cancel();
    }
  }

  /**
   * `serialize`, when given, replaces the proto's request encoder: it gets each written
   * object and returns the message bytes, which gRPC copies into its frame before the write
   * callback fires.
   */
  clientStream<Res>(method: string, channel?: number, serialize?: (req: never) => Buffer): { call: grpc.ClientWritableStream<unknown>; result: Promise<Res> } {
    const client = this.pick(channel);
    let call!: grpc.ClientWritableStream<unknown>;
    const result = new Promise<Res>((resolve, reject) => {
      const cb = (err: grpc.ServiceError | null, res: unknown) => (err ? reject(explain(err, this.opts.tls)) : resolve(res as Res));
      if (serialize) {
        const def = CairnService.service[method];
        call = client.makeClientStreamRequest(def.path, serialize as (req: unknown) => Buffer, def.responseDeserialize, this.metadata(), {}, cb);
      } else {
        const fns = client as unknown as Record<string, ClientStreamFn>;
        call = fns[method].call(client, this.metadata(), {}, cb);
      }
    });
    return { call, result };
  }

  close(): void {
    for (const c of this.clients) c.close();
  }
}
