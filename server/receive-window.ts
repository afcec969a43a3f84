import type * as grpc from '@grpc/grpc-js';
import type http2 from 'node:http2';
import type { Logger } from 'pino';

/**
 * HTTP/2 flow-control window the server grants each Upload stream and each connection. At the
 * protocol's default of 64 KiB, a client may send only 64 KiB and must then wait for a
 * WINDOW_UPDATE, which this process sends only when its event loop gets back to the socket: while
 * it inflates and hashes a 4 MiB chunk, the client stands still, so receiving and verifying took
 * turns instead of overlapping. 1 MiB made a 1 GiB first snapshot 15-20% faster on 2 cores;
 * 2 and 4 MiB were no faster and cost the server 60-90 MiB more RSS. A paused stream holds at
 * most this many unacknowledged bytes, so it is also a memory bound per stream (not per
 * connection: Node acknowledges connection-level data as it arrives).
 */
export const RECEIVE_WINDOW_BYTES = 1024 * 1024;

/**
 * grpc-js has no server option for the window (its client has `grpc-node.flow_control_window`),
 * so this sets it through two of the server's fields: the settings every new HTTP/2 session
 * starts with (the per-stream window) and, once bound, each session's connection window.
 * test/receive-window.test.ts reads what the server advertises, so a grpc-js release that
 * renames either field fails there; here it only costs speed, and the server says so.
 */
interface GrpcServerInternals {
  commonServerOptions?: http2.ServerOptions;
  http2Servers?: Map<http2.Http2Server, { sessions?: Set<http2.ServerHttp2Session> }>;
}

/** Call before `bindAsync`: the settings are read when the HTTP/2 server is created. */
export function widenStreamWindow(server: grpc.Server, log: Logger): void {
  const internals = server as unknown as GrpcServerInternals;
  if (!internals.commonServerOptions) {
    log.warn('cannot widen the HTTP/2 stream window: this grpc-js version has no commonServerOptions; uploads will be slower');
    return;
  }
  internals.commonServerOptions.settings = { ...internals.commonServerOptions.settings, initialWindowSize: RECEIVE_WINDOW_BYTES };
}

/**
 * Call after `bindAsync`: widens the connection window of every session, those accepted from
 * now on and any a listener took while the others were still binding.
 */
export function widenConnectionWindow(server: grpc.Server, log: Logger): void {
  const servers = (server as unknown as GrpcServerInternals).http2Servers;
  if (!servers) {
    log.warn('cannot widen the HTTP/2 connection window: this grpc-js version has no http2Servers; uploads will be slower');
    return;
  }
  const widen = (session: http2.ServerHttp2Session) => {
    try {
      session.setLocalWindowSize(RECEIVE_WINDOW_BYTES);
    } catch {
      // A session closing as it is widened needs no window.
    }
  };
  for (const [h2, entry] of servers) {
    for (const session of entry?.sessions ?? []) widen(session);
    h2.on('session', widen);
  }
}
