import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { invalidArgument } from '../common/errors.js';

export interface TlsFiles {
  cert?: string;
  key?: string;
  /** CA that signs client certificates; set, every client must present one (mutual TLS). */
  clientCa?: string;
}

export interface ServerTls {
  cert: Buffer;
  key: Buffer;
  clientCa?: Buffer;
}

function readPem(file: string, flag: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw invalidArgument(`cannot read ${flag} ${file}: ${(err as Error).message}`);
  }
}

/** Reads and checks the PEM files at start, so a wrong pair fails here and not at the first handshake. */
export function loadServerTls(files: TlsFiles): ServerTls | undefined {
  if (!files.cert && !files.key) {
    if (files.clientCa) throw invalidArgument('--tls-client-ca needs --tls-cert and --tls-key: client certificates are checked over TLS');
    return undefined;
  }
  if (!files.cert || !files.key) throw invalidArgument('TLS needs both --tls-cert and --tls-key');
  const out: ServerTls = { cert: readPem(files.cert, '--tls-cert'), key: readPem(files.key, '--tls-key') };
  if (files.clientCa) out.clientCa = readPem(files.clientCa, '--tls-client-ca');
  try {
    tls.createSecureContext({ cert: out.cert, key: out.key, ca: out.clientCa });
  } catch (err) {
    throw invalidArgument(`TLS files are not usable (${(err as Error).message}): --tls-cert must be the PEM certificate chain and --tls-key its PEM private key`);
  }
  return out;
}

export function serverCredentials(t: ServerTls | undefined): grpc.ServerCredentials {
  if (!t) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(t.clientCa ?? null, [{ private_key: t.key, cert_chain: t.cert }], t.clientCa !== undefined);
}

/** Whether a listen address is reachable only from this machine (loopback or a unix socket). */
export function isLoopback(listen: string): boolean {
  if (listen.startsWith('unix:')) return true;
  const m = /^\[([^\]]+)\](?::\d+)?$/.exec(listen) ?? /^([^:]+)(?::\d+)?$/.exec(listen);
  const host = m ? m[1] : listen;
  if (host === 'localhost') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  if (net.isIPv6(host)) return host === '::1' || /^::ffff:127\./i.test(host);
  return false;
}
