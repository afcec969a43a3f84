/**
 * Process measurement for the benchmarks: wall time and peak resident memory.
 *
 * A measured command runs under `/usr/bin/time -f %M` when that exists (wait4's ru_maxrss of
 * the process itself, exact even for sub-millisecond peaks); otherwise its /proc/<pid>/status
 * VmHWM is polled while it runs. A long-running process (the cairn server) is a `Watched`
 * process: its peak is reset at the start of each step (`echo 5 > /proc/<pid>/clear_refs`)
 * and read at the end (VmHWM), with VmRSS polling as a fallback where the reset is refused.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export const TIME_BIN = '/usr/bin/time';
/** USER_HZ: 100 on every Linux architecture Node runs on. */
const CLOCK_TICKS = 100;

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Kill the process (and fail) after this long. */
  timeoutMs?: number;
  /** Commands whose exit code is allowed besides 0 (borg exits 1 on warnings). */
  okCodes?: number[];
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
  /** Peak RSS of the process, bytes. */
  peakRss: number;
  /** User + system CPU seconds of the process (0 when unknown). */
  cpuSeconds: number;
  /** Of those, system (kernel) seconds: page-cache copies, file creation, sockets. */
  systemSeconds: number;
}

export interface CpuTimes {
  user: number;
  system: number;
}

export class CommandError extends Error {
  constructor(
    message: string,
    readonly result: RunResult,
  ) {
    super(message);
  }
}

let haveTime: boolean | undefined;
export function hasTimeBinary(): boolean {
  haveTime ??= existsSync(TIME_BIN);
  return haveTime;
}

/** Reads one `Vm*:` field of /proc/<pid>/status in bytes, or undefined when the process is gone. */
export function procStatusBytes(pid: number, field: 'VmHWM' | 'VmRSS' | 'RssAnon' | 'RssFile'): number | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(s);
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Runs a command to completion and measures it. Throws a CommandError on a bad exit code. */
export async function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'cairn-bench-time-'));
  const timeFile = path.join(tmp, 'rss');
  const useTime = hasTimeBinary();
  const [bin, argv] = useTime ? [TIME_BIN, ['-f', '%M %U %S', '-o', timeFile, cmd, ...args]] : [cmd, args];
  const started = process.hrtime.bigint();
  const child = spawn(bin, argv, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr += d;
    if (stderr.length > 4_000_000) stderr = stderr.slice(-1_000_000);
  });
  let polled = 0;
  const poll = useTime
    ? undefined
    : setInterval(() => {
        const v = child.pid ? procStatusBytes(child.pid, 'VmHWM') : undefined;
        if (v !== undefined && v > polled) polled = v;
      }, 20);
  let timedOut = false;
  const timer = opts.timeoutMs
    ? setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, opts.timeoutMs)
    : undefined;
  const code = await new Promise<number>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (c, sig) => resolve(c ?? (sig ? 128 : 1)));
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (poll) clearInterval(poll);
  if (timer) clearTimeout(timer);
  let peakRss = polled;
  let cpuSeconds = 0;
  let systemSeconds = 0;
  if (useTime) {
    try {
      // GNU time writes "Command exited with non-zero status N" before the values on failures.
      const lines = (await readFile(timeFile, 'utf8')).trim().split('\n');
      const [kb, user, sys] = lines[lines.length - 1].split(' ').map(Number);
      peakRss = kb * 1024;
      cpuSeconds = user + sys;
      systemSeconds = sys;
    } catch {
      peakRss = 0;
    }
  }
  await rm(tmp, { recursive: true, force: true });
  const result: RunResult = { code, stdout, stderr, seconds, peakRss, cpuSeconds, systemSeconds };
  if (timedOut) throw new CommandError(`${cmd} ${args.join(' ')}: timed out after ${opts.timeoutMs} ms`, result);
  if (code !== 0 && !(opts.okCodes ?? []).includes(code)) {
    throw new CommandError(`${path.basename(cmd)} ${args.join(' ')} exited with ${code}:\n${stderr.slice(-4000)}`, result);
  }
  return result;
}

/**
 * A long-running process whose peak RSS is measured per step. `resetPeak()` at the start of a
 * step, `peak()` at the end.
 */
export class Watched {
  private polled = 0;
  private polledAnon = 0;
  private timer: NodeJS.Timeout | undefined;
  private canReset = true;

  constructor(readonly pid: number) {}

  resetPeak(): void {
    try {
      writeFileSync(`/proc/${this.pid}/clear_refs`, '5');
    } catch {
      this.canReset = false;
    }
    this.polled = procStatusBytes(this.pid, 'VmRSS') ?? 0;
    this.polledAnon = procStatusBytes(this.pid, 'RssAnon') ?? 0;
    this.timer ??= setInterval(() => {
      const v = procStatusBytes(this.pid, 'VmRSS');
      if (v !== undefined && v > this.polled) this.polled = v;
      const a = procStatusBytes(this.pid, 'RssAnon');
      if (a !== undefined && a > this.polledAnon) this.polledAnon = a;
    }, 25);
    this.timer.unref();
  }

  /** Peak RSS since the last reset, bytes. */
  peak(): number {
    const rss = procStatusBytes(this.pid, 'VmRSS') ?? 0;
    const hwm = this.canReset ? procStatusBytes(this.pid, 'VmHWM') ?? 0 : 0;
    return Math.max(hwm, this.polled, rss);
  }

  /**
   * User and system CPU seconds the process has used so far, from one read of
   * /proc/<pid>/stat, so a delta's two parts come from the same moments.
   */
  cpuTimes(): CpuTimes {
    try {
      const stat = readFileSync(`/proc/${this.pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // After the command name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
      return { user: Number(f[11]) / CLOCK_TICKS, system: Number(f[12]) / CLOCK_TICKS };
    } catch {
      return { user: 0, system: 0 };
    }
  }

  /**
   * Peak anonymous RSS since the last reset (polled every 25 ms), bytes: RSS less file-backed
   * pages such as LevelDB's memory-mapped tables, which the kernel can drop under pressure.
   */
  peakAnon(): number {
    return Math.max(this.polledAnon, procStatusBytes(this.pid, 'RssAnon') ?? 0);
  }

  /** Current RSS, bytes. */
  rss(): number {
    return procStatusBytes(this.pid, 'VmRSS') ?? 0;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

/** Waits for a JSON log line on stderr whose msg starts with `readyMsg`; resolves with that line. */
export function waitForReady(child: ChildProcess, readyMsg: string, logs: string[], timeoutMs = 60_000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`not ready after ${timeoutMs} ms:\n${logs.slice(-20).join('\n')}`)), timeoutMs);
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        logs.push(line);
        if (logs.length > 2000) logs.splice(0, 1000);
        try {
          const j = JSON.parse(line) as Record<string, unknown>;
          if (typeof j.msg === 'string' && j.msg.startsWith(readyMsg)) {
            clearTimeout(timer);
            resolve(j);
          }
        } catch {
          // not JSON: kept in logs for the error message
        }
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before it was ready:\n${logs.slice(-20).join('\n')}${buf}`));
    });
  });
}

/** Sum of the sizes of every regular file under `dir` (like `du -sb --apparent-size`). */
export async function dirBytes(dir: string): Promise<number> {
  const { readdir, lstat } = await import('node:fs/promises');
  let total = 0;
  const stack = [dir];
  while (stack.length > 0) {
    const d = stack.pop()!;
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch {
      continue;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) stack.push(p);
      else if (e.isFile()) total += (await lstat(p)).size;
    }
  }
  return total;
}
