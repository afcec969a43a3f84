import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { Connection } from '../client/connection.js';
import { RECEIVE_WINDOW_BYTES as CLIENT_WINDOW } from '../client/limits.js';
import { RECEIVE_WINDOW_BYTES as SERVER_WINDOW } from '../server/receive-window.js';
import { cleanupTmp, startServer } from './harness.js';

afterAll(cleanupTmp);

/** Polls until `read` returns a value `ok` accepts: window updates arrive after the settings. */
async function settle<T>(read: () => T, ok: (v: T) => boolean): Promise<T> {
  let v = read();
  for (let i = 0; i < 100 && !ok(v); i++) {
    await new Promise((r) => setTimeout(r, 20));
    v = read();
  }
  return v;
}

// The default HTTP/2 window (64 KiB) makes sender and receiver take turns; these read what each
// side really grants on the wire, so a grpc-js release that ignores our settings fails here.
describe('HTTP/2 receive windows', () => {
  it('the server grants each stream and each connection its receive window', async () => {
    const server = await startServer();
    const session = http2.connect(`http://${server.addr}`);
    try {
      const settings = await new Promise<http2.Settings>((resolve, reject) => {
        session.once('remoteSettings', resolve);
        session.once('error', reject);
      });
      expect(settings.initialWindowSize).toBe(SERVER_WINDOW);
      const connWindow = await settle(() => session.state.remoteWindowSize ?? 0, (w) => w >= SERVER_WINDOW);
      expect(connWindow).toBe(SERVER_WINDOW);
    } finally {
      session.destroy();
      await server.stop();
    }
  });

  it('the client grants each stream and each connection its receive window', async () => {
    const peer = http2.createServer();
    const sessions: http2.ServerHttp2Session[] = [];
    const settings = new Promise<http2.Settings>((resolve) =>
      peer.on('session', (s) => {
        sessions.push(s);
        s.once('remoteSettings', resolve);
      }),
    );
    // The client opens its connection on the first call; this peer speaks HTTP/2 but no gRPC.
    peer.on('stream', (stream) => stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '12' }, { endStream: true }));
    await new Promise<void>((resolve) => peer.listen(0, '127.0.0.1', resolve));
    const conn = new Connection({ server: `127.0.0.1:${(peer.address() as AddressInfo).port}` });
    try {
      await conn.unary('Hello', {}).catch(() => undefined);
      expect((await settings).initialWindowSize).toBe(CLIENT_WINDOW);
      const connWindow = await settle(() => sessions[0].state.remoteWindowSize ?? 0, (w) => w >= CLIENT_WINDOW);
      expect(connWindow).toBe(CLIENT_WINDOW);
    } finally {
      conn.close();
      for (const s of sessions) s.destroy();
      await new Promise((r) => peer.close(r));
    }
  });
});
