import * as grpc from '@grpc/grpc-js';
import { CairnService } from '../common/proto.js';
import { toCairnError } from '../common/errors.js';
import { MAX_CLIENT_MESSAGE_BYTES } from './limits.js';

export interface ConnectOptions {
  server: string;
  token?: string;
  /** Several channels carry more than one: one HTTP/2 connection tops out near 200 MiB/s. */
  channels?: number;
}

type UnaryFn = (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => grpc.ClientUnaryCall;
type StreamFn = (req: unknown, md: grpc.Metadata, opts?: grpc.CallOptions) => grpc.ClientReadableStream<unknown>;
type ClientStreamFn = (md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => grpc.ClientWritableStream<unknown>;

/** A connection to cairn-server with promise and async-iterator wrappers; errors come back as CairnErrors. */
export class Connection {
  private readonly clients: grpc.Client[];
  private next = 0;

  constructor(readonly opts: ConnectOptions) {
    const n = Math.max(1, opts.channels ?? 1);
    this.clients = Array.from({ length: n }, (_, i) =>
      new CairnService(opts.server, grpc.credentials.createInsecure(), {
        'grpc.max_receive_message_length': MAX_CLIENT_MESSAGE_BYTES,
        'grpc.max_send_message_length': MAX_CLIENT_MESSAGE_BYTES,
        // Distinct options keep grpc-js from sharing one subchannel between the channels.
        'grpc.channel_id': i,
        'grpc.keepalive_time_ms': 30_000,
      }),
    );
  }

  private metadata(): grpc.Metadata {
    const md = new grpc.Metadata();
    if (this.opts.token) md.set('authorization', `Bearer ${this.opts.token}`);
    return md;
  }

  private pick(channel?: number): grpc.Client {
    if (channel !== undefined) return this.clients[channel % this.clients.length];
    return this.clients[this.next++ % this.clients.length];
  }

  get channelCount(): number {
    return this.clients.length;
  }

  unary<Res>(method: string, req: unknown, channel?: number): Promise<Res> {
    const client = this.pick(channel) as unknown as Record<string, UnaryFn>;
    return new Promise<Res>((resolve, reject) => {
      client[method].call(client, req, this.metadata(), {}, (err, res) => (err ? reject(toCairnError(err)) : resolve(res as Res)));
    });
  }

  async *stream<Res>(method: string, req: unknown, channel?: number): AsyncGenerator<Res> {
    const client = this.pick(channel) as unknown as Record<string, StreamFn>;
    const call = client[method].call(client, req, this.metadata());
    try {
      for await (const msg of call) yield msg as Res;
    } catch (err) {
      throw toCairnError(err);
    } finally {
      call.cancel();
    }
  }

  clientStream<Res>(method: string, channel?: number): { call: grpc.ClientWritableStream<unknown>; result: Promise<Res> } {
    const client = this.pick(channel) as unknown as Record<string, ClientStreamFn>;
    let call!: grpc.ClientWritableStream<unknown>;
    const result = new Promise<Res>((resolve, reject) => {
      call = client[method].call(client, this.metadata(), {}, (err, res) => (err ? reject(toCairnError(err)) : resolve(res as Res)));
    });
    return { call, result };
  }

  close(): void {
    for (const c of this.clients) c.close();
  }
}
