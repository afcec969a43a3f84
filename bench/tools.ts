/**
 * One adapter per benchmarked tool: init a repository, back up a directory, restore the latest
 * snapshot, report the repository's size. Every command is measured (wall time, peak RSS).
 *
 *   cairn      cairn-server (file: store) + cairn CLI over gRPC on loopback
 *   cairn-s3   the same with an s3:// store on s3rver (when the server supports it)
 *   restic     local repository, --compression auto (restic always encrypts)
 *   borg       local repository, -e none, --compression zstd,3
 *
 * All tools skip the same directories (EXCLUDED_DIRS); restic and borg keep their default
 * client caches (in the bench work dir); cairn has none.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EXCLUDED_DIRS } from './dataset.js';
import { binCommand } from './node-flags.js';
import { Connection } from '../client/connection.js';
import type { HelloReply } from '../common/messages.js';
import type { RequestCounts } from '../server/object-store.js';
import { dirBytes, run, waitForReady, Watched, type RunResult } from './measure.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const SERVER_JS = path.join(ROOT, 'dist/server/main.js');
export const CLI_JS = path.join(ROOT, 'dist/client/cli-start.js');

const SERVER_BIN = binCommand(ROOT, 'cairn-server');
export const CLI_BIN = binCommand(ROOT, 'cairn');

export interface StepMeasure {
  seconds: number;
  /** Sum of the peak RSS of every process of the tool (client + server for cairn), bytes. */
  peakRss: number;
  processes: Record<string, number>;
  /** User + system CPU seconds of the tool's processes during the step (client + server for cairn). */
  cpuSeconds: number;
  /** Of those, the kernel's: on a VM, page-cache copies into fresh pages are most of it. */
  systemSeconds: number;
  repoBytes: number;
  /** What the tool itself reported (its JSON summary), for the results file. */
  report?: unknown;
}

export interface Tool {
  readonly name: string;
  readonly notes: string[];
  /** The repository, index and caches: warmed or dropped with the source before each step. */
  readonly stateDir: string;
  init(): Promise<void>;
  backup(src: string): Promise<StepMeasure>;
  /** Restores the latest snapshot; `root` is where the backed-up directory's contents landed. */
  restore(target: string): Promise<StepMeasure & { root: string }>;
  repoBytes(): Promise<number>;
  /** Bytes of client-side cache (every tool has one), not counted in the repository size. */
  cacheBytes(): Promise<number>;
  close(): Promise<void>;
}

export interface ToolOptions {
  work: string;
  timeoutMs: number;
  /** cairn: parallel connections. */
  channels?: number;
  /** cairn: write CPU profiles of client and server during the first snapshot and the restore here. */
  profileDir?: string;
}

function lastJsonLine(out: string): unknown {
  const lines = out.trim().split('\n').filter((l) => l.startsWith('{'));
  if (lines.length === 0) return undefined;
  try {
    return JSON.parse(lines[lines.length - 1]);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// cairn

interface ServerProc {
  child: ChildProcess;
  watched: Watched;
  addr: string;
  logs: string[];
  exited: Promise<number | null>;
}

export async function startCairnServer(opts: { store: string; index: string; env?: NodeJS.ProcessEnv; extraArgs?: string[]; nodeArgs?: string[] }): Promise<ServerProc> {
  const logs: string[] = [];
  const child = spawn(process.execPath, [...SERVER_BIN.flags, ...(opts.nodeArgs ?? []), SERVER_JS, '--listen', '127.0.0.1:0', '--store', opts.store, '--index', opts.index, '--log-level', 'info', ...(opts.extraArgs ?? [])], {
    env: { ...(opts.env ?? process.env), ...SERVER_BIN.env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const ready = await waitForReady(child, 'cairn-server ready', logs, 120_000);
  const port = Number(ready.port);
  return { child, watched: new Watched(child.pid!), addr: `127.0.0.1:${port}`, logs, exited };
}

export async function stopCairnServer(s: ServerProc): Promise<void> {
  s.watched.stop();
  if (s.child.exitCode === null) s.child.kill('SIGTERM');
  const timer = setTimeout(() => s.child.kill('SIGKILL'), 30_000);
  await s.exited;
  clearTimeout(timer);
}

export class CairnTool implements Tool {
  readonly notes: string[] = [];
  protected server: ServerProc | undefined;
  protected readonly dir: string;
  readonly stateDir: string;
  private backups = 0;

  constructor(
    readonly name: string,
    protected readonly opts: ToolOptions,
  ) {
    this.dir = path.join(opts.work, name);
    this.stateDir = this.dir;
  }

  protected get storeSpec(): string {
    return `file:${path.join(this.dir, 'store')}`;
  }

  protected get indexDir(): string {
    return path.join(this.dir, 'index');
  }

  protected serverEnv(): NodeJS.ProcessEnv {
    return process.env;
  }

  protected serverArgs(): string[] {
    return [];
  }

  async init(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
    await mkdir(this.dir, { recursive: true });
    await this.startServer();
  }

  private profArgs(what: string): string[] {
    return ['--cpu-prof', '--cpu-prof-dir', this.opts.profileDir!, '--cpu-prof-name', `${this.name}-${what}.cpuprofile`];
  }

  /**
   * Runs one step with the client and a freshly started server under `node --cpu-prof`; the
   * server's profile is written when it exits, so it is restarted unprofiled afterwards.
   * Profiling slows both sides: the numbers of a profiled step are not comparable.
   */
  private async profiled<T>(what: string, fn: (clientNodeArgs: string[]) => Promise<T>): Promise<T> {
    await stopCairnServer(this.server!);
    await this.startServer(this.profArgs(`${what}-server`));
    try {
      return await fn(this.profArgs(`${what}-client`));
    } finally {
      await stopCairnServer(this.server!);
      await this.startServer();
    }
  }

  protected async startServer(nodeArgs: string[] = []): Promise<void> {
    this.server = await startCairnServer({ store: this.storeSpec, index: this.indexDir, env: this.serverEnv(), extraArgs: this.serverArgs(), nodeArgs });
  }

  /** The client's tree cache, in the tool's state like restic's and borg's caches. */
  private get cacheDir(): string {
    return path.join(this.dir, 'cache');
  }

  private clientEnv(): NodeJS.ProcessEnv {
    return { ...process.env, CAIRN_SERVER: this.server!.addr, CAIRN_CACHE_DIR: this.cacheDir };
  }

  private async measured(args: string[], nodeArgs: string[] = []): Promise<{ r: RunResult; serverPeak: number; serverPeakAnon: number; cpuSeconds: number; systemSeconds: number }> {
    const s = this.server!;
    if (s.child.exitCode !== null) throw new Error(`${this.name}: server has exited:\n${s.logs.slice(-20).join('\n')}`);
    s.watched.resetPeak();
    const before = s.watched.cpuTimes();
    const channels = this.opts.channels ? ['--channels', String(this.opts.channels)] : [];
    const r = await run(process.execPath, [...CLI_BIN.flags, ...nodeArgs, CLI_JS, ...channels, '--json', ...args], { env: { ...this.clientEnv(), ...CLI_BIN.env }, timeoutMs: this.opts.timeoutMs });
    const after = s.watched.cpuTimes();
    const serverSystem = after.system - before.system;
    const serverCpu = after.user - before.user + serverSystem;
    return { r, serverPeak: s.watched.peak(), serverPeakAnon: s.watched.peakAnon(), cpuSeconds: r.cpuSeconds + serverCpu, systemSeconds: r.systemSeconds + serverSystem };
  }

  async backup(src: string): Promise<StepMeasure> {
    const first = this.backups++ === 0;
    const args = ['snapshot', src, '--dataset', 'exp', '--host', 'bench'];
    const { r, serverPeak, serverPeakAnon, cpuSeconds, systemSeconds } = first && this.opts.profileDir ? await this.profiled('snapshot', (p) => this.measured(args, p)) : await this.measured(args);
    const report = lastJsonLine(r.stdout) as { problems?: unknown[] } | undefined;
    if (!report) throw new Error(`${this.name}: snapshot printed no JSON:\n${r.stdout}\n${r.stderr}`);
    if (report.problems && report.problems.length > 0) throw new Error(`${this.name}: snapshot reported problems: ${JSON.stringify(report.problems.slice(0, 5))}`);
    return { seconds: r.seconds, peakRss: r.peakRss + serverPeak, processes: { client: r.peakRss, server: serverPeak, serverAnon: serverPeakAnon }, cpuSeconds, systemSeconds, repoBytes: await this.repoBytes(), report: report };
  }

  async restore(target: string): Promise<StepMeasure & { root: string }> {
    await rm(target, { recursive: true, force: true });
    const args = ['restore', '--snapshot', 'latest', '--dataset', 'exp', '--host', 'bench', target];
    const { r, serverPeak, serverPeakAnon, cpuSeconds, systemSeconds } = this.opts.profileDir ? await this.profiled('restore', (p) => this.measured(args, p)) : await this.measured(args);
    return { seconds: r.seconds, peakRss: r.peakRss + serverPeak, processes: { client: r.peakRss, server: serverPeak, serverAnon: serverPeakAnon }, cpuSeconds, systemSeconds, repoBytes: await this.repoBytes(), report: lastJsonLine(r.stdout), root: target };
  }

  async repoBytes(): Promise<number> {
    return (await dirBytes(path.join(this.dir, 'store'))) + (await dirBytes(this.indexDir));
  }

  cacheBytes(): Promise<number> {
    return dirBytes(this.cacheDir);
  }

  async close(): Promise<void> {
    if (this.server) await stopCairnServer(this.server);
    this.server = undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// cairn on s3rver

const S3RVER_CHILD = `
const S3rver = require(process.argv[1]);
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: process.argv[2], configureBuckets: [{ name: process.argv[3] }] });
server.run().then(
  (addr) => process.stdout.write(JSON.stringify({ port: addr.port }) + '\\n'),
  (err) => { console.error(err); process.exit(1); },
);
`;

export class CairnS3Tool extends CairnTool {
  private s3: { child: ChildProcess; watched: Watched; endpoint: string; exited: Promise<unknown> } | undefined;
  private readonly bucket = 'cairn-bench';

  constructor(opts: ToolOptions) {
    super('cairn-s3', opts);
    this.notes.push('object store: s3rver on loopback (a functional S3 stand-in, not a fast one); its RSS is listed apart, not summed');
  }

  protected override get storeSpec(): string {
    return `s3://${this.bucket}/repo`;
  }

  protected override serverArgs(): string[] {
    return ['--endpoint', this.s3!.endpoint];
  }

  protected override serverEnv(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      AWS_ACCESS_KEY_ID: 'S3RVER',
      AWS_SECRET_ACCESS_KEY: 'S3RVER',
      AWS_REGION: 'us-east-1',
      AWS_ENDPOINT_URL_S3: this.s3!.endpoint,
      AWS_REQUEST_CHECKSUM_CALCULATION: 'WHEN_REQUIRED',
      AWS_RESPONSE_CHECKSUM_VALIDATION: 'WHEN_REQUIRED',
    };
  }

  override async init(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
    await mkdir(path.join(this.dir, 's3rver'), { recursive: true });
    const entry = createRequire(import.meta.url).resolve('s3rver');
    const child = spawn(process.execPath, ['--openssl-legacy-provider', '-e', S3RVER_CHILD, entry, path.join(this.dir, 's3rver'), this.bucket], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      let err = '';
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve((JSON.parse(out.split('\n')[0]) as { port: number }).port);
      });
      child.once('exit', (code) => reject(new Error(`s3rver exited with ${code}: ${err}`)));
    });
    this.s3 = { child, watched: new Watched(child.pid!), endpoint: `http://127.0.0.1:${port}`, exited };
    await this.startServer();
  }

  override async backup(src: string): Promise<StepMeasure> {
    this.s3!.watched.resetPeak();
    const before = await this.storeRequests();
    const m = await super.backup(src);
    m.processes.s3rver = this.s3!.watched.peak();
    m.report = { cli: m.report, storeRequests: this.requestsSince(before, await this.storeRequests(), 'snapshot') };
    return m;
  }

  override async restore(target: string): Promise<StepMeasure & { root: string }> {
    this.s3!.watched.resetPeak();
    const before = await this.storeRequests();
    const m = await super.restore(target);
    m.processes.s3rver = this.s3!.watched.peak();
    m.report = { cli: m.report, storeRequests: this.requestsSince(before, await this.storeRequests(), 'restore') };
    return m;
  }

  /** The server's S3 request counters (R2 and S3 bill per request), from Hello. */
  private async storeRequests(): Promise<RequestCounts> {
    const conn = new Connection({ server: this.server!.addr });
    try {
      return JSON.parse((await conn.unary<HelloReply>('Hello', {})).storeRequests) as RequestCounts;
    } finally {
      conn.close();
    }
  }

  private requestsSince(a: RequestCounts, b: RequestCounts, step: string): RequestCounts {
    const d = Object.fromEntries(Object.keys(b).map((k) => [k, b[k as keyof RequestCounts] - a[k as keyof RequestCounts]])) as unknown as RequestCounts;
    console.log(`  cairn-s3 ${step}: S3 requests PUT ${d.put}, GET ${d.get}, LIST ${d.list}, DELETE ${d.delete}, HEAD ${d.head}, retries ${d.retries}; ${(d.bytesUp / 1048576).toFixed(1)} MiB up, ${(d.bytesDown / 1048576).toFixed(1)} MiB down`);
    return d;
  }

  override async repoBytes(): Promise<number> {
    return (await dirBytes(path.join(this.dir, 's3rver'))) + (await dirBytes(this.indexDir));
  }

  override async close(): Promise<void> {
    await super.close();
    if (this.s3) {
      this.s3.watched.stop();
      this.s3.child.kill('SIGTERM');
      await this.s3.exited;
      this.s3 = undefined;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// restic

export class ResticTool implements Tool {
  readonly name = 'restic';
  readonly notes = ['restic always encrypts (AES-256-CTR + Poly1305); --compression auto (zstd)'];
  readonly stateDir: string;
  private readonly repo: string;
  private readonly cache: string;

  constructor(private readonly opts: ToolOptions) {
    this.stateDir = path.join(opts.work, 'restic');
    this.repo = path.join(this.stateDir, 'repo');
    this.cache = path.join(this.stateDir, 'cache');
  }

  private env(): NodeJS.ProcessEnv {
    return { ...process.env, RESTIC_REPOSITORY: this.repo, RESTIC_PASSWORD: 'cairn-bench', RESTIC_CACHE_DIR: this.cache, RESTIC_PROGRESS_FPS: '0.1' };
  }

  async init(): Promise<void> {
    await rm(path.dirname(this.repo), { recursive: true, force: true });
    await mkdir(path.dirname(this.repo), { recursive: true });
    await run('restic', ['init', '--repository-version', '2'], { env: this.env(), timeoutMs: 60_000 });
  }

  async backup(src: string): Promise<StepMeasure> {
    const excludes = EXCLUDED_DIRS.flatMap((d) => ['--exclude', d]);
    const r = await run('restic', ['backup', '--compression', 'auto', '--host', 'bench', '--json', ...excludes, '.'], { cwd: src, env: this.env(), timeoutMs: this.opts.timeoutMs });
    return { seconds: r.seconds, peakRss: r.peakRss, processes: { restic: r.peakRss }, cpuSeconds: r.cpuSeconds, systemSeconds: r.systemSeconds, repoBytes: await this.repoBytes(), report: lastJsonLine(r.stdout) };
  }

  async restore(target: string): Promise<StepMeasure & { root: string }> {
    await rm(target, { recursive: true, force: true });
    const r = await run('restic', ['restore', 'latest', '--host', 'bench', '--target', target], { env: this.env(), timeoutMs: this.opts.timeoutMs });
    return { seconds: r.seconds, peakRss: r.peakRss, processes: { restic: r.peakRss }, cpuSeconds: r.cpuSeconds, systemSeconds: r.systemSeconds, repoBytes: await this.repoBytes(), root: target };
  }

  repoBytes(): Promise<number> {
    return dirBytes(this.repo);
  }

  cacheBytes(): Promise<number> {
    return dirBytes(this.cache);
  }

  async close(): Promise<void> {}
}

// ---------------------------------------------------------------------------------------------
// borg

export class BorgTool implements Tool {
  readonly name = 'borg';
  readonly notes = ['borg: -e none (no encryption), --compression zstd,3'];
  readonly stateDir: string;
  private readonly repo: string;
  private readonly home: string;
  private archives = 0;

  constructor(private readonly opts: ToolOptions) {
    this.stateDir = path.join(opts.work, 'borg');
    this.repo = path.join(this.stateDir, 'repo');
    this.home = path.join(this.stateDir, 'home');
  }

  private env(): NodeJS.ProcessEnv {
    return {
      ...process.env,
      BORG_REPO: this.repo,
      BORG_BASE_DIR: this.home,
      BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
      BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
      BORG_PASSPHRASE: '',
    };
  }

  async init(): Promise<void> {
    await rm(path.dirname(this.repo), { recursive: true, force: true });
    await mkdir(this.home, { recursive: true });
    await run('borg', ['init', '-e', 'none', this.repo], { env: this.env(), timeoutMs: 60_000 });
  }

  async backup(src: string): Promise<StepMeasure> {
    const excludes = EXCLUDED_DIRS.flatMap((d) => ['--exclude', `sh:**/${d}`]);
    const name = `snap-${++this.archives}`;
    // Exit code 1 is borg's "warning" (e.g. a file changed while read): allowed, kept in the report.
    const r = await run('borg', ['create', '--json', '--compression', 'zstd,3', ...excludes, `::${name}`, '.'], { cwd: src, env: this.env(), timeoutMs: this.opts.timeoutMs, okCodes: [1] });
    const report = tryJson(r.stdout);
    return { seconds: r.seconds, peakRss: r.peakRss, processes: { borg: r.peakRss }, cpuSeconds: r.cpuSeconds, systemSeconds: r.systemSeconds, repoBytes: await this.repoBytes(), report: { borg: report, exitCode: r.code, warnings: r.code === 1 ? r.stderr.slice(-2000) : undefined } };
  }

  async restore(target: string): Promise<StepMeasure & { root: string }> {
    await rm(target, { recursive: true, force: true });
    await mkdir(target, { recursive: true });
    const r = await run('borg', ['extract', `::snap-${this.archives}`], { cwd: target, env: this.env(), timeoutMs: this.opts.timeoutMs });
    return { seconds: r.seconds, peakRss: r.peakRss, processes: { borg: r.peakRss }, cpuSeconds: r.cpuSeconds, systemSeconds: r.systemSeconds, repoBytes: await this.repoBytes(), root: target };
  }

  repoBytes(): Promise<number> {
    return dirBytes(this.repo);
  }

  cacheBytes(): Promise<number> {
    return dirBytes(this.home);
  }

  async close(): Promise<void> {}
}

function tryJson(s: string): unknown {
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// installation

async function which(cmd: string): Promise<boolean> {
  for (const dir of (process.env.PATH ?? '').split(':')) if (dir && existsSync(path.join(dir, cmd))) return true;
  return false;
}

/** Installs restic, borg and GNU time with apt-get when missing (apt-get update on a first failure). */
export async function ensureInstalled(log: (msg: string) => void): Promise<string[]> {
  const missing: string[] = [];
  if (!(await which('restic'))) missing.push('restic');
  if (!(await which('borg'))) missing.push('borgbackup');
  if (!existsSync('/usr/bin/time')) missing.push('time');
  if (missing.length === 0) return [];
  log(`installing ${missing.join(', ')} with apt-get`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    await run('apt-get', ['install', '-y', ...missing], { env, timeoutMs: 600_000 });
  } catch {
    await run('apt-get', ['update'], { env, timeoutMs: 600_000 });
    await run('apt-get', ['install', '-y', ...missing], { env, timeoutMs: 600_000 });
  }
  return missing;
}

export async function toolVersion(cmd: string, args: string[]): Promise<string> {
  try {
    const r = await run(cmd, args, { timeoutMs: 30_000 });
    return (r.stdout || r.stderr).trim().split('\n')[0];
  } catch {
    return 'unknown';
  }
}
