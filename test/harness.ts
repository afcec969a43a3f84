import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { binCommand } from '../bench/node-flags.js';

/**
 * Test harness: the real compiled server and CLI as child processes (what users run),
 * talking real gRPC on loopback. `npm test` builds dist/ first (pretest).
 */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SERVER_JS = path.join(ROOT, 'dist/server/main.js');
const CLI_JS = path.join(ROOT, 'dist/client/cli-start.js');
/** The tests run the programs the way users get them from bin/. */
const SERVER_BIN = binCommand(ROOT, 'cairn-server');
const CLI_BIN = binCommand(ROOT, 'cairn');

const tmpDirs: string[] = [];

/** Mount namespaces let an unprivileged test mount a small tmpfs (a small disk, another file system); where they are off, such tests cannot run. */
export const canMountTmpfs = spawnSync('unshare', ['-rm', 'sh', '-c', 'mount -t tmpfs -o size=1m tmpfs "$1"', 'sh', os.tmpdir()], { stdio: 'ignore' }).status === 0;

export function tmpDir(prefix = 'cairn-test-'): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}

export function cleanupTmp(): void {
  for (const d of tmpDirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

export interface ServerHandle {
  addr: string;
  port: number;
  proc: ChildProcess;
  storeSpec: string;
  indexDir: string;
  logs: string[];
  stop(): Promise<void>;
  kill9(): Promise<void>;
  /** Resolves with the exit code once the process has exited (e.g. after a crash hook fired). */
  exited: Promise<number | null>;
}

export interface ServerOptions {
  store?: string;
  indexDir?: string;
  args?: string[];
  env?: Record<string, string>;
  /** A command the server runs under, e.g. unshare to give it a disk of its own. */
  wrap?: string[];
  /** Sees each log line as it arrives, before the server is ready (to act at a given point of start-up). */
  onLog?: (line: string, proc: ChildProcess) => void;
}

export async function startServer(opts: ServerOptions = {}): Promise<ServerHandle> {
  const dir = opts.store && opts.indexDir ? '' : tmpDir('cairn-srv-');
  const storeSpec = opts.store ?? `file:${path.join(dir, 'store')}`;
  const indexDir = opts.indexDir ?? path.join(dir, 'index');
  const [cmd, ...cmdArgs] = [...(opts.wrap ?? []), process.execPath];
  const proc = spawn(cmd!, [...cmdArgs, ...SERVER_BIN.flags, SERVER_JS, '--listen', '127.0.0.1:0', '--store', storeSpec, '--index', indexDir, '--log-level', 'info', ...(opts.args ?? [])], {
    env: { ...process.env, ...SERVER_BIN.env, ...opts.env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const logs: string[] = [];
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    proc.stderr!.setEncoding('utf8');
    proc.stderr!.on('data', (d: string) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        logs.push(line);
        opts.onLog?.(line, proc);
        try {
          const j = JSON.parse(line) as { port?: number; msg?: string };
          if (j.msg?.startsWith('cairn-server ready') && j.port) resolve(j.port);
        } catch {
          // not a log line (e.g. a usage error): kept in logs for the failure message
        }
      }
    });
    // 'close' comes after the last of stderr, so a server that logged ready and then exited resolves.
    proc.once('close', (code) => reject(new Error(`server exited with ${code} before it was ready:\n${logs.join('\n')}${buf}`)));
  });
  const handle: ServerHandle = {
    addr: `127.0.0.1:${port}`,
    port,
    proc,
    storeSpec,
    indexDir,
    logs,
    exited,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      await exited;
    },
    async kill9() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGKILL');
      await exited;
    },
  };
  return handle;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `fileSizeLimitKiB`: run under `ulimit -f`, so writes past it come up short (as on a full disk) and then fail. */
export function runCli(args: string[], opts: { server: string; env?: Record<string, string>; cwd?: string; uid?: number; fileSizeLimitKiB?: number }): Promise<CliResult> {
  return new Promise((resolve) => {
    const command = [process.execPath, ...CLI_BIN.flags, CLI_JS, ...args];
    const limited = opts.fileSizeLimitKiB === undefined ? command : ['bash', '-c', `ulimit -f ${opts.fileSizeLimitKiB}; exec "$@"`, 'bash', ...command];
    const proc = spawn(limited[0], limited.slice(1), {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, ...CLI_BIN.env, CAIRN_SERVER: opts.server, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.uid } : {}),
    });
    let stdout = '';
    let stderr = '';
    proc.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    proc.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    proc.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs the CLI with --json and parses its single JSON line; fails loudly with stderr otherwise. */
export async function cliJson<T>(args: string[], opts: { server: string; env?: Record<string, string> }): Promise<T> {
  const r = await runCli(['--json', ...args], opts);
  if (r.code !== 0) throw new Error(`cairn ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as T;
}
