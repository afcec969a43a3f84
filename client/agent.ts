import type { Command } from 'commander';
import { codeName, Code, invalidArgument, toCairnError } from '../common/errors.js';
import { createLogger, type Logger } from '../common/log.js';
import type { HeartbeatRequest } from '../common/query-messages.js';
import { loadAgentConfig, readTokenFile, type AgentConfig, type DatasetConfig } from './agent-config.js';
import { runBackup } from './backup.js';
import { defaultCacheDir } from './cache-dir.js';
import { EXIT, type GlobalOpts } from './cli-common.js';
import { Connection, tlsFromFlags, type TlsOptions } from './connection.js';
import { ExcludeMatcher } from './excludes.js';
import { backoffMs, describeSchedule, nextDue, Semaphore, sleepUntil } from './scheduler.js';

/**
 * Failures that may pass if tried again soon: the server unreachable or overloaded, a
 * stream cut. A refusal (a guard, a bad name, a missing path) is reported at once instead:
 * retrying it only delays the alarm.
 */
const RETRYABLE = new Set<Code>([Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.RESOURCE_EXHAUSTED, Code.ABORTED, Code.INTERNAL, Code.UNKNOWN, Code.CANCELLED]);

const HEARTBEAT_ATTEMPTS = 4;
const HEARTBEAT_DEADLINE_MS = 30_000;

/** How a scheduled run ended: `partial` recorded a snapshot that left unreadable entries out. */
type RunOutcome = 'saved' | 'partial' | 'failed' | 'interrupted';

/**
 * The node agent: snapshots each configured dataset on its schedule, each in its own loop
 * so one dataset's failure or slowness never holds up another; retries transient failures
 * with backoff; reports every run to the server (Heartbeat) so `cairn status` shows a
 * failing or silent node; and on SIGTERM aborts running sessions and exits 0.
 */
export class Agent {
  private readonly log: Logger;
  private readonly conn: Connection;
  private readonly stop = new AbortController();
  private readonly slots: Semaphore;
  /** Datasets whose keep_* policy is not stored on the server yet. */
  private readonly policyPending = new Set<DatasetConfig>();

  constructor(
    private readonly config: AgentConfig,
    connection: { server: string; token?: string; tls?: TlsOptions },
  ) {
    this.log = createLogger(config.logLevel, 'cairn-agent');
    this.conn = new Connection({ ...connection, channels: config.channels });
    this.slots = new Semaphore(config.maxConcurrent);
    for (const d of config.datasets) if (d.policy) this.policyPending.add(d);
  }

  /** Runs until stopped (or, with `once`, until every dataset ran once); resolves to the exit code. */
  async run(once: boolean): Promise<number> {
    const onSignal = (signal: NodeJS.Signals) => {
      if (this.stop.signal.aborted) {
        this.log.warn({ signal }, 'second signal: exiting without waiting for sessions to abort');
        process.exit(EXIT.ERROR);
      }
      this.log.info({ signal }, 'stopping: aborting running snapshots');
      this.stop.abort();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    const { config } = this;
    this.log.info(
      { config: config.file, server: this.conn.opts.server, tls: this.conn.opts.tls !== undefined, host: config.host, once, datasets: config.datasets.map((d) => ({ name: d.name, paths: d.paths, schedule: describeSchedule(d.schedule) })) },
      'agent started',
    );
    try {
      for (const d of [...this.policyPending]) await this.storePolicy(d, true);
      if (once) {
        const results = await Promise.all(config.datasets.map((d) => this.runDataset(d)));
        // A cron job reads this: only a run that recorded every dataset whole is a success.
        const failed = config.datasets.filter((_d, i) => results[i] === 'failed' || results[i] === 'interrupted').map((d) => d.name);
        if (failed.length > 0) {
          this.log.error({ failed }, `${failed.length} of ${config.datasets.length} datasets ${this.stop.signal.aborted ? 'failed or were interrupted' : 'failed'}`);
          return EXIT.ERROR;
        }
        return results.includes('partial') ? EXIT.PARTIAL : EXIT.OK;
      }
      await Promise.all(config.datasets.map((d) => this.loop(d)));
      return EXIT.OK;
    } finally {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      this.conn.close();
      this.log.info('agent stopped');
    }
  }

  private async loop(d: DatasetConfig): Promise<void> {
    // An every-schedule counts its interval on the monotonic clock: a wall clock stepped back
    // (NTP at boot, a restored VM) must not delay the next run by the step. Cron times are
    // wall-clock times.
    const clock = 'every' in d.schedule ? () => performance.now() : () => Date.now();
    let lastStart: number | undefined;
    for (;;) {
      const due = nextDue(d.schedule, lastStart, clock());
      if (lastStart !== undefined && due < clock()) {
        this.log.warn({ dataset: d.name, schedule: describeSchedule(d.schedule) }, 'the last run overran its schedule; starting the next now (missed runs are not made up)');
      }
      if (!(await sleepUntil(due, this.stop.signal, clock))) return;
      lastStart = clock();
      await this.runDataset(d);
      if (this.stop.signal.aborted) return;
    }
  }

  /**
   * A keep_* policy from the config is stored on the server, where it applies after each
   * commit. At startup a policy the server calls invalid stops the agent (it is a config
   * error). A token that may not store policies (agent tokens may not: a policy reaches every
   * host's snapshots of the dataset) is reported once, and snapshots go on. Any other failure
   * is logged and tried again before the dataset's next run.
   */
  private async storePolicy(d: DatasetConfig, startup: boolean): Promise<void> {
    try {
      await this.conn.unary('SetPolicy', { policy: d.policy });
      this.policyPending.delete(d);
      this.log.info({ dataset: d.name, policy: d.policy }, 'retention policy stored');
    } catch (err) {
      const e = toCairnError(err);
      if (startup && e.code === Code.INVALID_ARGUMENT) throw invalidArgument(`${this.config.file}: datasets.${d.name}: the server refused its keep_* policy: ${e.message}`);
      if (e.code === Code.PERMISSION_DENIED) {
        this.policyPending.delete(d);
        this.log.error(
          { dataset: d.name, code: codeName(e.code), err: e.message },
          'retention policy not stored: this token may not set policies; snapshots go on without it. Set it with `cairn policy set` and an admin token, or remove keep_* from the config',
        );
        return;
      }
      this.log.error({ dataset: d.name, code: codeName(e.code), err: e.message }, 'retention policy not stored; trying again before the next run');
    }
  }

  /**
   * One scheduled run, retries included. A concurrency slot is held only while a snapshot is
   * taken: not while the heartbeat is sent, nor during the wait before a retry, so one dataset
   * waiting on the server never keeps the others from starting.
   */
  private async runDataset(d: DatasetConfig): Promise<RunOutcome> {
    const signal = this.stop.signal;
    const started = Date.now();
    for (let attempt = 1; ; attempt++) {
      if (!(await this.slots.acquire(signal))) return 'interrupted';
      let result: Awaited<ReturnType<typeof runBackup>>;
      try {
        await this.useCurrentToken();
        if (this.policyPending.has(d)) await this.storePolicy(d, false);
        this.log.info({ dataset: d.name, attempt }, 'snapshot started');
        result = await runBackup(this.conn, {
          paths: d.paths,
          dataset: d.name,
          host: this.config.host,
          tags: d.tags,
          excludes: await ExcludeMatcher.create(d.excludes),
          maxSize: d.maxSize,
          maxShrink: d.maxShrink,
          cacheDir: defaultCacheDir(),
          signal,
        });
      } catch (err) {
        this.slots.release();
        const e = toCairnError(err);
        if (signal.aborted) {
          this.log.info({ dataset: d.name }, 'snapshot interrupted by shutdown; session aborted, nothing recorded');
          return 'interrupted';
        }
        const error = `${codeName(e.code)}: ${e.message}`;
        // A local filesystem error (an unreadable root, say) will be there in a minute too.
        const local = typeof (err as NodeJS.ErrnoException).syscall === 'string';
        if (RETRYABLE.has(e.code) && !local && attempt < this.config.retry.attempts) {
          const delay = backoffMs(attempt, this.config.retry.initialDelayMs, this.config.retry.maxDelayMs);
          this.log.warn({ dataset: d.name, attempt, err: error, retryInSeconds: delay / 1000 }, 'snapshot failed; retrying');
          if (!(await sleepUntil(Date.now() + delay, signal))) return 'interrupted';
          continue;
        }
        this.log.error({ dataset: d.name, attempts: attempt, err: error }, 'snapshot failed');
        await this.heartbeat(d, started, { ok: false, error, snapshot: '' });
        return 'failed';
      }
      this.slots.release();
      const s = result.stats;
      this.log.info(
        { dataset: d.name, snapshot: result.snapshot.id, files: s.files, filesUnchanged: s.filesReused, bytes: s.bytes, bytesRead: s.bytesRead, skipped: s.skipped, newBytes: Number(result.snapshot.summary.newBytes), treeCache: result.treeCache, seconds: result.seconds },
        'snapshot saved',
      );
      if (result.problems.length > 0) this.log.warn({ dataset: d.name, unreadable: result.problems.length, first: result.problems.slice(0, 5) }, 'snapshot saved with entries left out or not read whole');
      await this.heartbeat(d, started, { ok: true, error: '', snapshot: result.snapshot.id });
      return result.problems.length > 0 ? 'partial' : 'saved';
    }
  }

  /**
   * A token_file is read before every run: a rotated token is picked up without a restart. A
   * file caught mid-rewrite (empty, or briefly gone) leaves the last token in use.
   */
  private async useCurrentToken(): Promise<void> {
    if (!this.config.tokenFile) return;
    try {
      this.conn.setToken(await readTokenFile(this.config.file, this.config.tokenFile));
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'token_file unreadable; using the token read before');
    }
  }

  /**
   * Tried a few times over about a minute: the heartbeat is how a failure reaches `cairn status`,
   * and a network blip right after a refused run must not lose it.
   */
  private async heartbeat(d: DatasetConfig, started: number, result: Pick<HeartbeatRequest, 'ok' | 'error' | 'snapshot'>): Promise<void> {
    const req: HeartbeatRequest = { dataset: d.name, host: this.config.host, durationSeconds: (Date.now() - started) / 1000, ...result };
    for (let attempt = 1; ; attempt++) {
      try {
        await this.conn.unary('Heartbeat', req, undefined, HEARTBEAT_DEADLINE_MS);
        return;
      } catch (err) {
        const e = toCairnError(err);
        if (attempt < HEARTBEAT_ATTEMPTS && RETRYABLE.has(e.code) && (await sleepUntil(Date.now() + attempt * 5_000, this.stop.signal))) continue;
        // The server is the one place failures become visible; when it cannot be told, the log must say so.
        const shows = result.ok ? 'the last report it has (and, in time, stale)' : 'the last report it has, not this failure';
        this.log.error({ dataset: d.name, code: codeName(e.code), err: e.message, report: req }, `heartbeat not delivered: cairn status will show ${shows}`);
        return;
      }
    }
  }
}

export function registerAgentCommand(program: Command): void {
  program
    .command('agent')
    .description('snapshot the datasets of a config file on their schedules, until stopped; logs JSON lines on stderr')
    .requiredOption('--config <file>', 'agent config (YAML), e.g. /etc/cairn/agent.yaml')
    .option('--once', 'snapshot every dataset once, then exit (for cron): 1 if any failed or was interrupted, 3 if a snapshot left unreadable entries out', false)
    .action(async (o: { config: string; once: boolean }, cmd: Command) => {
      const g = cmd.optsWithGlobals<GlobalOpts>();
      const config = await loadAgentConfig(o.config);
      // A forgotten server: line must not become a node that backs up nowhere, forever.
      if (!config.server && cmd.getOptionValueSourceWithGlobals('server') === 'default') {
        throw invalidArgument(`${config.file}: server: name the cairn-server to back up to (server: host:port here, or --server / CAIRN_SERVER)`);
      }
      const agent = new Agent(config, { server: config.server ?? g.server, token: config.token ?? g.token, tls: tlsFromFlags(config.tls ?? g) });
      process.exitCode = await agent.run(o.once);
    });
}
