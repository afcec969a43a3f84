import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createToken } from './auth-helpers.js';
import { cleanupTmp, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';

function hasOpenssl(): boolean {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** A CA, a server certificate for 127.0.0.1 and localhost, a client certificate it signs, and one from a stranger CA. */
function makeCertificates(dir: string): void {
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  for (const ca of ['ca', 'stranger-ca']) ssl('req', '-x509', ...ec, '-keyout', `${ca}.key`, '-out', `${ca}.pem`, '-days', '2', '-subj', `/CN=${ca}`);
  const issue = (name: string, ca: string, ext?: string) => {
    ssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    ssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', ...(ext ? ['-extfile', ext] : []));
  };
  execFileSync('sh', ['-c', 'printf "subjectAltName=DNS:localhost,IP:127.0.0.1\\n" > server.ext'], { cwd: dir });
  issue('server', 'ca', 'server.ext');
  issue('client', 'ca');
  issue('stranger', 'stranger-ca');
}

describe.skipIf(!hasOpenssl())('TLS and mutual TLS (certificates made with openssl)', () => {
  let certs: string;
  const f = (name: string) => path.join(certs, name);

  beforeAll(() => {
    certs = tmpDir('cairn-certs-');
    makeCertificates(certs);
  });
  afterAll(() => cleanupTmp());

  describe('server certificate only', () => {
    let server: ServerHandle;
    beforeAll(async () => {
      server = await startServer({ args: ['--tls-cert', f('server.pem'), '--tls-key', f('server.key')] });
    });
    afterAll(() => server?.stop());

    it('serves a client that trusts its CA, by flag or by CAIRN_TLS_CA', async () => {
      expect(server.logs.some((l) => l.includes('cairn-server ready (auth is off until a token is created: local use only; TLS)'))).toBe(true);
      const byFlag = await runCli(['history', '--tls-ca', f('ca.pem')], { server: server.addr });
      expect(byFlag.stderr).toBe('');
      expect(byFlag.stdout.trim()).toBe('no snapshots');
      const byEnv = await runCli(['history'], { server: `localhost:${server.port}`, env: { CAIRN_TLS_CA: f('ca.pem') } });
      expect(byEnv.stderr).toBe('');
      expect(byEnv.code).toBe(0);
    });

    it('round-trips a snapshot over TLS', async () => {
      const src = path.join(tmpDir(), 'src');
      await fs.mkdir(src);
      await fs.writeFile(path.join(src, 'report.md'), 'over TLS');
      const env = { CAIRN_TLS_CA: f('ca.pem') };
      expect((await runCli(['snapshot', src, '--dataset', 'tls', '--host', 'h'], { server: server.addr, env })).code).toBe(0);
      const target = path.join(tmpDir(), 'out');
      expect((await runCli(['restore', '--dataset', 'tls', target], { server: server.addr, env })).code).toBe(0);
      expect(await fs.readFile(path.join(target, 'report.md'), 'utf8')).toBe('over TLS');
    });

    it('fails clearly for a client that does not trust the certificate, or does not speak TLS', async () => {
      const untrusted = await runCli(['history', '--tls'], { server: server.addr });
      expect(untrusted.code).toBe(1);
      expect(untrusted.stderr).toMatch(/^cairn: UNAVAILABLE: .*certificate.*\(TLS: the server's certificate is not trusted .*pass --tls-ca/);
      const wrongCa = await runCli(['history', '--tls-ca', f('stranger-ca.pem')], { server: server.addr });
      expect(wrongCa.stderr).toMatch(/^cairn: UNAVAILABLE: .*certificate.*pass --tls-ca/);
      const plain = await runCli(['history'], { server: server.addr });
      expect(plain.code).toBe(1);
      expect(plain.stderr).toMatch(/^cairn: UNAVAILABLE: .*\(if the server serves TLS, pass --tls-ca/);
    });
  });

  describe('client certificates required (mutual TLS) on a non-loopback address', () => {
    let server: ServerHandle;
    beforeAll(async () => {
      // Client certificates are access control enough to leave loopback without tokens or --insecure.
      server = await startServer({ args: ['--listen', '0.0.0.0:0', '--tls-cert', f('server.pem'), '--tls-key', f('server.key'), '--tls-client-ca', f('ca.pem')] });
    });
    afterAll(() => server?.stop());

    const mtls = (extra: string[]) => ['--tls-ca', f('ca.pem'), ...extra, 'history'];

    it('serves a client with a certificate signed by the client CA', async () => {
      expect(server.logs.some((l) => l.includes('TLS with client certificates'))).toBe(true);
      const r = await runCli(mtls(['--tls-cert', f('client.pem'), '--tls-key', f('client.key')]), { server: `127.0.0.1:${server.port}` });
      expect(r.stderr).toBe('');
      expect(r.stdout.trim()).toBe('no snapshots');
    });

    it('refuses a client without a certificate, or with one from another CA', async () => {
      const none = await runCli(mtls([]), { server: `127.0.0.1:${server.port}` });
      expect(none.code).toBe(1);
      expect(none.stderr).toMatch(/^cairn: UNAVAILABLE: .*certificate required.*pass --tls-cert and --tls-key/);
      const stranger = await runCli(mtls(['--tls-cert', f('stranger.pem'), '--tls-key', f('stranger.key')]), { server: `127.0.0.1:${server.port}` });
      expect(stranger.code).toBe(1);
      expect(stranger.stderr).toMatch(/^cairn: UNAVAILABLE: .*--tls-cert must be signed by the CA it trusts/);
    });

    it('refuses a key that does not belong to the certificate before connecting', async () => {
      const r = await runCli(mtls(['--tls-cert', f('client.pem'), '--tls-key', f('stranger.key')]), { server: `127.0.0.1:${server.port}` });
      expect(r.stderr).toMatch(/^cairn: INVALID_ARGUMENT: TLS files are not usable \(.*key values mismatch\)/);
    });
  });

  it('combines TLS with tokens: the token still decides the role', async () => {
    const server = await startServer({ args: ['--tls-cert', f('server.pem'), '--tls-key', f('server.key')] });
    try {
      const token = await createToken(server.storeSpec, 'default', 'reader', 'viewer');
      const env = { CAIRN_TLS_CA: f('ca.pem') };
      expect((await runCli(['history'], { server: server.addr, env: { ...env, CAIRN_TOKEN: token } })).code).toBe(0);
      expect((await runCli(['prune'], { server: server.addr, env: { ...env, CAIRN_TOKEN: token } })).stderr).toMatch(/PERMISSION_DENIED: Prune needs a token with role admin/);
      expect((await runCli(['history'], { server: server.addr, env })).stderr).toMatch(/UNAUTHENTICATED/);
    } finally {
      await server.stop();
    }
  });

  it('tells a TLS client that the server does not serve TLS', async () => {
    const server = await startServer();
    try {
      const r = await runCli(['history', '--tls-ca', f('ca.pem')], { server: server.addr });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^cairn: UNAVAILABLE: .*\(TLS handshake failed: the server does not seem to serve TLS; drop the TLS flags\)/);
    } finally {
      await server.stop();
    }
  });

  it('refuses to start with a certificate and a key that do not match, naming the flags', async () => {
    await expect(startServer({ args: ['--tls-cert', f('server.pem'), '--tls-key', f('client.key')] })).rejects.toThrow(
      /INVALID_ARGUMENT: TLS files are not usable \(.*\): --tls-cert must be the PEM certificate chain and --tls-key its PEM private key/,
    );
    await expect(startServer({ args: ['--tls-client-ca', f('ca.pem')] })).rejects.toThrow(/--tls-client-ca needs --tls-cert and --tls-key/);
  });
});
