import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import type { Connection } from '../client/connection.js';
import { CairnError, codeName } from '../common/errors.js';
import { hash } from '../common/hash.js';
import type { Blob, UploadReply } from '../common/messages.js';
import { ROOT } from './harness.js';

const SERVER_JS = path.join(ROOT, 'dist/server/main.js');

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `cairn-server <args>` against a store, as an operator runs the token and repo commands (possibly while the server runs). */
export function serverCli(storeSpec: string, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    const proc = spawn(process.execPath, [SERVER_JS, '--store', storeSpec, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    proc.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    proc.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

export async function createRepo(storeSpec: string, name: string): Promise<void> {
  const r = await serverCli(storeSpec, ['repo', 'create', name]);
  if (r.code !== 0) throw new Error(`repo create ${name}: ${r.stderr}`);
}

/** Creates a token and returns the secret, which the command prints once on stdout. */
export async function createToken(storeSpec: string, repo: string, role: string, name: string): Promise<string> {
  const r = await serverCli(storeSpec, ['token', 'create', '--repo', repo, '--role', role, '--name', name]);
  if (r.code !== 0) throw new Error(`token create ${name}: ${r.stderr}`);
  return r.stdout.trim();
}

/** "CODE: message" of a call that must fail. */
export async function failure(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(CairnError);
    return `${codeName((err as CairnError).code)}: ${(err as CairnError).message}`;
  }
  throw new Error('expected the call to fail');
}

export function rawBlob(data: Buffer, kind: Blob['kind'] = 'DATA'): Blob {
  return { id: hash(data), kind, compression: 'NONE', rawLength: data.length, data };
}

export async function upload(conn: Connection, sessionId: string, blobs: Blob[]): Promise<UploadReply> {
  const { call, result } = conn.clientStream<UploadReply>('Upload');
  call.write({ sessionId, blobs });
  call.end();
  return result;
}

/** Starts a process's peak resident memory (VmHWM) again from its current RSS. */
export function resetPeakRss(pid: number): void {
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
}

/** Peak resident memory of a process so far (VmHWM), in bytes. */
export function peakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmHWM for pid ${pid}`);
  return Number(m[1]) * 1024;
}
