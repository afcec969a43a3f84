import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseDocument } from 'yaml';
import { emptyPolicy, type Policy } from '../common/admin-messages.js';
import { parseDurationMs } from '../common/durations.js';
import { CairnError, Code, invalidArgument } from '../common/errors.js';
import { parseSize } from '../common/units.js';
import { DEFAULT_MAX_SHRINK, defaultHost, parseShare } from './backup.js';
import { MAX_CHANNELS, type TlsFlags } from './connection.js';
import type { ExcludeOptions } from './excludes.js';
import { parseCron, type Schedule } from './scheduler.js';

export interface DatasetConfig {
  name: string;
  paths: string[];
  schedule: Schedule;
  excludes: ExcludeOptions;
  maxSize?: number;
  maxShrink: number;
  tags: string[];
  /** Stored on the server (SetPolicy) when any keep_* is given. */
  policy?: Policy;
}

export interface AgentConfig {
  file: string;
  /** Unset: the CLI's --server / CAIRN_SERVER. */
  server?: string;
  /** Unset (and no token_file): the CLI's --token / CAIRN_TOKEN. */
  token?: string;
  tokenFile?: string;
  /** Unset: the CLI's --tls* flags. `false` in the file turns TLS off whatever the flags say. */
  tls?: TlsFlags;
  host: string;
  logLevel: string;
  channels: number;
  maxConcurrent: number;
  retry: { attempts: number; initialDelayMs: number; maxDelayMs: number };
  datasets: DatasetConfig[];
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'];
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const KEEP_COUNTS = [
  ['keep_last', 'keepLast'],
  ['keep_hourly', 'keepHourly'],
  ['keep_daily', 'keepDaily'],
  ['keep_weekly', 'keepWeekly'],
  ['keep_monthly', 'keepMonthly'],
  ['keep_yearly', 'keepYearly'],
] as const;
const KEEP_WITHIN = [
  ['keep_within', 'keepWithin'],
  ['keep_within_hourly', 'keepWithinHourly'],
  ['keep_within_daily', 'keepWithinDaily'],
  ['keep_within_weekly', 'keepWithinWeekly'],
  ['keep_within_monthly', 'keepWithinMonthly'],
  ['keep_within_yearly', 'keepWithinYearly'],
] as const;

/**
 * One YAML mapping being read: every getter names the field in its error, and `done()`
 * refuses keys nobody asked for, so a typo such as `max_sise` fails loudly instead of
 * silently leaving a limit off. Keys match with '-' and '_' alike (`keep-last`, `keep_last`).
 */
class Fields {
  private readonly values = new Map<string, unknown>();
  private readonly used = new Set<string>();

  constructor(
    readonly file: string,
    readonly where: string,
    value: unknown,
  ) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw this.error('', 'must be a mapping of fields');
    for (const [k, v] of Object.entries(value)) this.values.set(k.replace(/-/g, '_'), v);
  }

  field(key: string): string {
    return this.where ? `${this.where}.${key}` : key;
  }

  error(key: string, message: string): CairnError {
    const at = key ? this.field(key) : this.where || 'top level';
    return invalidArgument(`${this.file}: ${at}: ${message}`);
  }

  /** Runs a parser whose errors do not know the field, and names the field in them. */
  parse<T>(key: string, fn: (text: string) => T): T | undefined {
    const text = this.str(key);
    if (text === undefined) return undefined;
    try {
      return fn(text);
    } catch (err) {
      throw this.error(key, (err as Error).message);
    }
  }

  has(key: string): boolean {
    return this.values.get(key) !== undefined && this.values.get(key) !== null;
  }

  raw(key: string): unknown {
    this.used.add(key);
    return this.values.get(key);
  }

  str(key: string): string | undefined {
    const v = this.raw(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v === 'number') return String(v);
    if (typeof v !== 'string' || v.trim() === '') throw this.error(key, `must be a non-empty string, got ${JSON.stringify(v)}`);
    return v;
  }

  strList(key: string): string[] {
    const v = this.raw(key);
    if (v === undefined || v === null) return [];
    const list = Array.isArray(v) ? v : [v];
    return list.map((item, i) => {
      if (typeof item !== 'string' || item === '') throw this.error(`${key}[${i}]`, `must be a non-empty string, got ${JSON.stringify(item)}`);
      return item;
    });
  }

  int(key: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
    const v = this.raw(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw this.error(key, `must be a whole number of at least ${min}, got ${JSON.stringify(v)}`);
    if (v > max) throw this.error(key, `must be at most ${max}, got ${v}`);
    return v;
  }

  bool(key: string): boolean | undefined {
    const v = this.raw(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'boolean') throw this.error(key, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  nested(key: string): Fields | undefined {
    const v = this.raw(key);
    return v === undefined || v === null ? undefined : new Fields(this.file, this.field(key), v);
  }

  done(): void {
    const unknown = [...this.values.keys()].filter((k) => !this.used.has(k));
    if (unknown.length > 0) throw this.error(unknown[0], 'unknown field (check its spelling; see docs/agent.md for the fields an agent config takes)');
  }
}

function positiveDuration(f: Fields, key: string): number | undefined {
  const ms = f.parse(key, parseDurationMs);
  if (ms !== undefined && ms <= 0) throw f.error(key, 'must be longer than zero');
  return ms;
}

/** `tls: true` (system CAs), `tls: false`, or a mapping of ca, cert, key (PEM files) and server_name. */
function readTls(top: Fields, dir: string): TlsFlags | undefined {
  const v = top.raw('tls');
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'boolean') return { tls: v };
  const f = new Fields(top.file, 'tls', v);
  const file = (key: string) => f.parse(key, (p) => path.resolve(dir, p));
  const flags: TlsFlags = { tls: true, tlsCa: file('ca'), tlsCert: file('cert'), tlsKey: file('key'), tlsServerName: f.str('server_name') };
  if (!flags.tlsCert !== !flags.tlsKey) throw f.error(flags.tlsCert ? 'key' : 'cert', 'a client certificate needs both cert and key');
  f.done();
  return flags;
}

function readPolicy(f: Fields, dataset: string): Policy | undefined {
  const policy: Policy = { ...emptyPolicy(dataset), keepTags: f.strList('keep_tags') };
  let given = policy.keepTags.length > 0;
  for (const [key, field] of KEEP_COUNTS) {
    const n = f.int(key, 0);
    if (n === undefined) continue;
    policy[field] = n;
    given = true;
  }
  for (const [key, field] of KEEP_WITHIN) {
    const d = f.str(key);
    if (d === undefined) continue;
    // The server checks the restic duration syntax ("1y6m") when the agent stores the policy at startup.
    policy[field] = d;
    given = true;
  }
  return given ? policy : undefined;
}

function readDataset(f: Fields, name: string, dir: string): DatasetConfig {
  if (!NAME_RE.test(name)) throw f.error('', `dataset name ${JSON.stringify(name)} is not valid: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  const paths = f.strList('paths').map((p) => path.resolve(dir, p));
  if (paths.length === 0) throw f.error('paths', 'name at least one directory to back up');
  const every = positiveDuration(f, 'every');
  const cron = f.str('cron');
  if (every !== undefined && cron !== undefined) throw f.error('cron', 'give one schedule, every or cron, not both');
  if (every === undefined && cron === undefined) throw f.error('every', 'give a schedule: every (such as 1h) or cron (such as "0 * * * *")');
  const schedule: Schedule = every !== undefined ? { every } : { cron: parseCron(cron!, f.field('cron')) };
  const defaultExcludes = f.bool('default_excludes') ?? true;
  const dataset: DatasetConfig = {
    name,
    paths,
    schedule,
    excludes: {
      excludes: f.strList('exclude'),
      includes: f.strList('include'),
      excludeFiles: f.strList('exclude_files').map((p) => path.resolve(dir, p)),
      defaultExcludes,
      excludeCaches: defaultExcludes,
      excludeLargerThan: f.parse('exclude_larger_than', parseSize),
    },
    maxSize: f.parse('max_size', parseSize),
    maxShrink: f.parse('max_shrink', (t) => parseShare(t, 'max_shrink')) ?? DEFAULT_MAX_SHRINK,
    tags: f.strList('tags'),
    policy: readPolicy(f, name),
  };
  f.done();
  return dataset;
}

/** Reads and checks an agent config; every error names the file and the field. */
export function parseAgentConfig(text: string, file: string): AgentConfig {
  const doc = parseDocument(text);
  if (doc.errors.length > 0) throw invalidArgument(`${file}: not valid YAML: ${doc.errors[0].message.split('\n')[0]}`);
  const top = new Fields(file, '', doc.toJS() ?? {});
  const dir = path.dirname(path.resolve(file));
  if (top.has('token') && top.has('token_file')) throw top.error('token_file', 'give token or token_file, not both');
  const logLevel = top.str('log_level') ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) throw top.error('log_level', `must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(logLevel)}`);
  const host = top.str('host') ?? defaultHost();
  if (!NAME_RE.test(host)) throw top.error('host', `${JSON.stringify(host)} is not a valid host name: use 1-128 letters, digits, '.', '_' or '-'`);
  const retry = top.nested('retry');
  const config: AgentConfig = {
    file,
    server: top.str('server'),
    token: top.str('token'),
    tokenFile: top.parse('token_file', (p) => path.resolve(dir, p)),
    tls: readTls(top, dir),
    host,
    logLevel,
    channels: top.int('channels', 1, MAX_CHANNELS) ?? 2,
    maxConcurrent: top.int('max_concurrent', 1) ?? 2,
    retry: {
      attempts: retry?.int('attempts', 1) ?? 4,
      initialDelayMs: (retry && positiveDuration(retry, 'initial_delay')) ?? 30_000,
      maxDelayMs: (retry && positiveDuration(retry, 'max_delay')) ?? 15 * 60_000,
    },
    datasets: [],
  };
  retry?.done();
  const datasets = top.raw('datasets');
  if (datasets === null || typeof datasets !== 'object' || Array.isArray(datasets) || Object.keys(datasets).length === 0) {
    throw top.error('datasets', 'name at least one dataset, as a mapping from each dataset name to its paths and schedule');
  }
  // Dataset names are keys, but not field names: they keep their dashes.
  for (const [name, value] of Object.entries(datasets)) config.datasets.push(readDataset(new Fields(file, `datasets.${name}`, value), name, dir));
  top.done();
  return config;
}

/** Reads agent.yaml and, when it names one, the token file. */
export async function loadAgentConfig(file: string): Promise<AgentConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new CairnError(Code.NOT_FOUND, `cannot read agent config ${file}: ${(err as Error).message}`);
  }
  const config = parseAgentConfig(text, file);
  if (config.tokenFile) config.token = await readTokenFile(file, config.tokenFile);
  return config;
}

export async function readTokenFile(configFile: string, tokenFile: string): Promise<string> {
  let token: string;
  try {
    token = (await readFile(tokenFile, 'utf8')).trim();
  } catch (err) {
    throw invalidArgument(`${configFile}: token_file: cannot read ${tokenFile}: ${(err as Error).message}`);
  }
  if (!token) throw invalidArgument(`${configFile}: token_file: ${tokenFile} is empty`);
  return token;
}
