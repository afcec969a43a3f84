import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type Fault = 'slowDown' | 'internalError' | 'dropBeforeForward' | 'dropAfterForward' | 'delay';

export interface FaultProxyOptions {
  /** The S3 endpoint to forward to, e.g. http://127.0.0.1:4568. */
  target: string;
  /** Share of requests (0..1) that get a fault instead of a clean pass-through. */
  faultRate: number;
  seed: number;
  /** Which faults to draw from, equally likely; all by default. */
  faults?: Fault[];
  delayMs?: number;
  /** Answers a request itself when it returns a status, e.g. to make HEADs lie. */
  override?: (method: string, url: string) => number | undefined;
  /**
   * A behaviour of the store being imitated, given the whole request: an S3 error refuses it,
   * a body answers it in the store's place, undefined forwards it.
   */
  demand?: (req: { method: string; url: string; headers: http.IncomingHttpHeaders; body: Buffer }) =>
    | { status: number; code: string; message: string }
    | { status: number; body: Buffer }
    | undefined;
}

export interface FaultProxy {
  endpoint: string;
  /** Requests seen, and faults injected by kind. */
  readonly counters: Record<Fault | 'requests', number>;
  stop(): Promise<void>;
}

/** mulberry32: small, seedable, good enough to make fault sequences reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ALL_FAULTS: Fault[] = ['slowDown', 'internalError', 'dropBeforeForward', 'dropAfterForward', 'delay'];

function s3ErrorXml(code: string, message: string): string {
  return `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message><RequestId>fault-proxy</RequestId></Error>`;
}

/**
 * An HTTP proxy on 127.0.0.1 in front of an S3 endpoint that answers a share of requests with
 * the failures real stores and networks produce: 503 SlowDown, 500 InternalError, a connection
 * dropped before the request reaches the store, one dropped after the store handled it (the
 * lost-answer case), or a delay. Headers, the Host header included, pass through unchanged so
 * SigV4 signatures stay valid. Fault draws follow request arrival order, so with concurrency
 * the exact sequence varies, but the seed fixes the mix.
 */
export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  const target = new URL(opts.target);
  const random = prng(opts.seed);
  const faults = opts.faults ?? ALL_FAULTS;
  const counters: FaultProxy['counters'] = { requests: 0, slowDown: 0, internalError: 0, dropBeforeForward: 0, dropAfterForward: 0, delay: 0 };
  const upstreamAgent = new http.Agent({ keepAlive: true, maxSockets: 32 });

  const forward = (req: http.IncomingMessage, body: Buffer, res: http.ServerResponse | undefined): Promise<void> =>
    new Promise((resolve) => {
      const up = http.request(
        { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers, agent: upstreamAgent },
        (upRes) => {
          if (res === undefined) {
            upRes.resume();
            upRes.on('end', resolve);
            return;
          }
          res.writeHead(upRes.statusCode ?? 502, upRes.headers);
          upRes.pipe(res);
          upRes.on('end', resolve);
        },
      );
      up.on('error', (err) => {
        res?.destroy(err);
        resolve();
      });
      up.end(body);
    });

  const server = http.createServer(async (req, res) => {
    counters.requests++;
    const status = opts.override?.(req.method ?? '', req.url ?? '');
    if (status !== undefined) {
      req.resume();
      res.writeHead(status, { 'content-length': 0 }).end();
      return;
    }
    const fault = random() < opts.faultRate ? faults[Math.floor(random() * faults.length)]! : undefined;
    if (fault === 'dropBeforeForward') {
      counters[fault]++;
      req.socket.destroy();
      return;
    }
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    const refused = opts.demand?.({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
    if (refused) {
      const [type, answer] = 'body' in refused ? ['application/octet-stream', refused.body] : ['application/xml', Buffer.from(s3ErrorXml(refused.code, refused.message))];
      res.writeHead(refused.status, { 'content-type': type, 'content-length': answer.length });
      res.end(answer);
      return;
    }
    switch (fault) {
      case 'slowDown':
      case 'internalError': {
        counters[fault]++;
        const [status, code, msg] =
          fault === 'slowDown' ? [503, 'SlowDown', 'Please reduce your request rate.'] : [500, 'InternalError', 'We encountered an internal error. Please try again.'];
        const xml = s3ErrorXml(code, msg);
        res.writeHead(status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(xml) });
        res.end(req.method === 'HEAD' ? undefined : xml);
        return;
      }
      case 'dropAfterForward':
        counters[fault]++;
        await forward(req, body, undefined);
        req.socket.destroy();
        return;
      case 'delay':
        counters[fault]++;
        await new Promise((r) => setTimeout(r, opts.delayMs ?? 200));
        break;
    }
    await forward(req, body, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    counters,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      upstreamAgent.destroy();
    },
  };
}
