import { spawn, type ChildProcess } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAgentConfig } from '../client/agent-config.js';
import { backoffMs, nextDue } from '../client/scheduler.js';
import { Connection } from '../client/connection.js';
import { createToken, serverCli } from './auth-helpers.js';
import { cleanupTmp, ROOT, runCli, startServer, tmpDir, type ServerHandle } from './harness.js';
import { randomBytes, writeFile } from './tree-gen.js';

const CLI_JS = path.join(ROOT, 'dist/client/cli-start.js');
const MiB = 1024 * 1024;

describe('agent config validation', () => {
  const parse = (yaml: string) => parseAgentConfig(yaml, '/etc/cairn/agent.yaml');
  const error = (yaml: string) => {
    try {
      parse(yaml);
    } catch (err) {
      return (err as Error).message;
    }
    throw new Error('config was accepted');
  };

  it('reads a full config: schedules, sizes, shares, patterns, paths relative to the file, keep-* as a policy', () => {
    const c = parse(`
server: backup.internal:7420
token_file: token
host: gpu-7
max_concurrent: 1
retry: { attempts: 5, initial_delay: 10s, max_delay: 5m }
datasets:
  experiments:
    paths: [/data/experiments, runs]
    every: 1h
    exclude: ['*/data/', '*/reports/', '!extraction/*/activations/']
    include: ['*.json']
    max_size: 50GiB
    max_shrink: 30%
    keep-last: 24
    keep_within_daily: 30d
  self-play:
    paths: /data/games
    cron: "0 * * * *"
    default_excludes: false
`);
    expect(c).toMatchObject({ server: 'backup.internal:7420', tokenFile: '/etc/cairn/token', host: 'gpu-7', maxConcurrent: 1, retry: { attempts: 5, initialDelayMs: 10_000, maxDelayMs: 300_000 } });
    const [exp, games] = c.datasets;
    expect(exp).toMatchObject({ name: 'experiments', paths: ['/data/experiments', '/etc/cairn/runs'], schedule: { every: 3_600_000 }, maxSize: 50 * 1024 ** 3, maxShrink: 0.3 });
    expect(exp.excludes).toMatchObject({ excludes: ['*/data/', '*/reports/', '!extraction/*/activations/'], includes: ['*.json'], defaultExcludes: true });
    expect(exp.policy).toMatchObject({ dataset: 'experiments', keepLast: 24, keepWithinDaily: '30d', keepDaily: 0 });
    expect(games).toMatchObject({ name: 'self-play', paths: ['/data/games'], schedule: { cron: '0 * * * *' }, maxShrink: 0.5, policy: undefined });
    expect(games.excludes).toMatchObject({ defaultExcludes: false, excludeCaches: false });
  });

  it('accepts the shipped example deploy/agent.yaml', async () => {
    const file = path.join(ROOT, 'deploy/agent.yaml');
    const c = parseAgentConfig(await fs.readFile(file, 'utf8'), file);
    expect(c.datasets.map((d) => d.name)).toEqual(['experiments', 'self-play']);
    expect(c.datasets[0].policy).toMatchObject({ keepLast: 48, keepDaily: 14, keepWeekly: 8 });
  });

  it('reads TLS as true, false, or files relative to the config', () => {
    const ds = 'datasets:\n  ws: { paths: [/ws], every: 1h }\n';
    expect(parse(`tls: true\n${ds}`).tls).toEqual({ tls: true });
    expect(parse(`tls: false\n${ds}`).tls).toEqual({ tls: false });
    expect(parse(`tls: { ca: ca.pem, cert: /pki/node.pem, key: /pki/node.key, server_name: backup }\n${ds}`).tls).toEqual({
      tls: true,
      tlsCa: '/etc/cairn/ca.pem',
      tlsCert: '/pki/node.pem',
      tlsKey: '/pki/node.key',
      tlsServerName: 'backup',
    });
    expect(error(`tls: { cert: node.pem }\n${ds}`)).toContain('tls.key: a client certificate needs both cert and key');
    expect(error(`tls: { cafile: ca.pem }\n${ds}`)).toContain('tls.cafile: unknown field');
  });

  it('names the file and the field in every error', () => {
    const ds = (fields: string) => `datasets:\n  ws:\n    paths: [/ws]\n${fields}`;
    expect(error(ds('    every: 1h\n    max_sise: 5GiB\n'))).toBe('/etc/cairn/agent.yaml: datasets.ws.max_sise: unknown field (check its spelling; see docs/agent.md for the fields an agent config takes)');
    expect(error(ds('    every: 1h\n    cron: "0 * * * *"\n'))).toContain('datasets.ws.cron: give one schedule, every or cron, not both');
    expect(error(ds(''))).toContain('datasets.ws.every: give a schedule');
    expect(error(ds('    every: soon\n'))).toContain('datasets.ws.every: invalid duration "soon"');
    expect(error(ds('    cron: "0 * * *x *"\n'))).toContain('datasets.ws.cron "0 * * *x *" is not a cron expression');
    expect(error(ds('    every: 1h\n    max_size: lots\n'))).toContain('datasets.ws.max_size: invalid size "lots"');
    expect(error(ds('    every: 1h\n    max_shrink: 150%\n'))).toContain('datasets.ws.max_shrink: max_shrink "150%" must be a percentage from 0% to 100%');
    expect(error(ds('    every: 1h\n    keep_last: -1\n'))).toContain('datasets.ws.keep_last: must be a whole number of at least 0');
    expect(error(ds("    every: 1h\n    exclude: ['*.tmp', '']\n"))).toContain('datasets.ws.exclude[1]: must be a non-empty string');
    expect(error('datasets:\n  ws:\n    every: 1h\n')).toContain('datasets.ws.paths: name at least one directory');
    expect(error('datasets:\n  "../etc":\n    paths: [/x]\n    every: 1h\n')).toContain('datasets.../etc: dataset name "../etc" is not valid');
    expect(error('server: x:1\n')).toContain('agent.yaml: datasets: name at least one dataset');
    expect(error(`token: abc\ntoken_file: /t\n${ds('    every: 1h\n')}`)).toContain('token_file: give token or token_file, not both');
    expect(error(`log_level: loud\n${ds('    every: 1h\n')}`)).toContain('log_level: must be one of trace, debug, info, warn, error, fatal');
    expect(error(`channels: 17\n${ds('    every: 1h\n')}`)).toContain('channels: must be at most 16, got 17');
    expect(error('datasets: [a, b\n')).toMatch(/^\/etc\/cairn\/agent\.yaml: not valid YAML/);
  });
});

describe('agent schedule', () => {
  it('runs an every-schedule at once, then at a fixed rate from each start; a missed slot is one run, not many', () => {
    expect(nextDue({ every: 60_000 }, undefined, 1_000)).toBe(1_000);
    expect(nextDue({ every: 60_000 }, 1_000, 5_000)).toBe(61_000);
    // A run that took three intervals: due in the past means "now", once.
    expect(nextDue({ every: 60_000 }, 1_000, 200_000)).toBeLessThan(200_000);
    const start = new Date(2026, 10, 22, 10, 15, 0).getTime();
    expect(new Date(nextDue({ cron: '0 * * * *' }, undefined, start))).toEqual(new Date(2026, 10, 22, 11, 0, 0));
    expect(new Date(nextDue({ cron: '0 * * * *' }, new Date(2026, 10, 22, 11, 0, 0).getTime(), start))).toEqual(new Date(2026, 10, 22, 12, 0, 0));
  });

  it('backs off exponentially with jitter, capped', () => {
    expect(backoffMs(1, 1000, 60_000, () => 0)).toBe(500);
    expect(backoffMs(1, 1000, 60_000, () => 1)).toBe(1000);
    expect(backoffMs(4, 1000, 60_000, () => 1)).toBe(8000);
    expect(backoffMs(20, 1000, 60_000, () => 1)).toBe(60_000);
    expect(backoffMs(20, 1000, 60_000, () => 0)).toBe(30_000);
  });
});

interface AgentHandle {
  proc: ChildProcess;
  lines: Array<Record<string, unknown>>;
  exited: Promise<number | null>;
  waitFor(pred: (lines: Array<Record<string, unknown>>) => boolean, what: string, timeoutMs?: number): Promise<void>;
}

function startAgent(args: string[], server: string, nodeArgs: string[] = [], uid?: number): AgentHandle {
  const proc = spawn(process.execPath, [...nodeArgs, CLI_JS, 'agent', ...args], {
    env: { ...process.env, CAIRN_SERVER: server },
    stdio: ['ignore', 'ignore', 'pipe'],
    ...(uid !== undefined ? { uid, gid: uid } : {}),
  });
  const lines: Array<Record<string, unknown>> = [];
  let buf = '';
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      // Every line an agent writes is a JSON log record: anything else fails the parse, and the test.
      lines.push(JSON.parse(line) as Record<string, unknown>);
    }
  });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return {
    proc,
    lines,
    exited,
    async waitFor(pred, what, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      while (!pred(lines)) {
        if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`agent: no ${what}; log:\n${lines.map((l) => JSON.stringify(l)).join('\n')}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

const count = (lines: Array<Record<string, unknown>>, msg: string, dataset?: string) => lines.filter((l) => l.msg === msg && (!dataset || l.dataset === dataset)).length;

interface StatusJson {
  dataset: string;
  host: string;
  lastSnapshot: string;
  lastError: string;
  lastSuccessTime: string;
  failing: boolean;
}

describe('agent daemon over real gRPC', () => {
  let server: ServerHandle;
  let dir: string;
  const cli = (args: string[]) => runCli(args, { server: server.addr });

  async function status(): Promise<StatusJson[]> {
    const r = await cli(['--json', 'status']);
    return r.stdout
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as StatusJson);
  }

  async function history(dataset: string): Promise<string[]> {
    const r = await cli(['--json', 'history', '--dataset', dataset]);
    return r.stdout.trim().split('\n').filter(Boolean);
  }

  beforeAll(async () => {
    server = await startServer();
    dir = tmpDir('cairn-agent-');
  });
  afterAll(async () => {
    await server?.stop();
    cleanupTmp();
  });

  it('keeps snapshotting a healthy dataset while another fails, reports both to cairn status, applies keep-*, and exits 0 on SIGTERM', async () => {
    await writeFile(path.join(dir, 'healthy/run1/metrics.json'), '{"loss":0.1}');
    await writeFile(path.join(dir, 'healthy/run1/scratch.tmp'), 'rebuildable');
    await fs.writeFile(
      path.join(dir, 'two.yaml'),
      `host: node-a
retry: { attempts: 2, initial_delay: 1s }
datasets:
  healthy:
    paths: [healthy]
    every: 1s
    exclude: ['*.tmp']
    keep_last: 2
  unmounted:
    paths: [not-mounted]
    every: 1s
`,
    );
    const agent = startAgent(['--config', path.join(dir, 'two.yaml')], server.addr);
    await agent.waitFor((l) => count(l, 'snapshot saved', 'healthy') >= 3 && count(l, 'snapshot failed', 'unmounted') >= 2, 'three snapshots of healthy and two failures of unmounted');
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    expect(count(agent.lines, 'agent stopped')).toBe(1);

    const rows = await status();
    const bad = rows.find((r) => r.dataset === 'unmounted' && r.host === 'node-a')!;
    expect(bad.failing).toBe(true);
    expect(bad.lastSnapshot).toBe('');
    expect(bad.lastError).toBe(`NOT_FOUND: ${path.join(dir, 'not-mounted')} does not exist (is the volume mounted?)`);
    const good = rows.find((r) => r.dataset === 'healthy' && r.host === 'node-a')!;
    expect(good.failing).toBe(false);
    expect(good.lastError).toBe('');
    expect(good.lastSuccessTime).not.toBe('');
    const table = await cli(['status']);
    expect(table.stdout).toMatch(/unmounted\s+node-a\s+never .*NEVER\s+failing since \d+s ago: NOT_FOUND: .*not-mounted does not exist/);

    // keep_last: 2 was stored on the server and applied after each commit.
    expect(count(agent.lines, 'retention policy stored', 'healthy')).toBe(1);
    expect((await history('healthy')).length).toBe(2);
    const ls = await cli(['ls', '-R', 'latest', '--dataset', 'healthy']);
    expect(ls.stdout.split('\n').sort()).toEqual(['', 'run1/', 'run1/metrics.json']);
  });

  it('--once runs every dataset once and exits 1 when one failed', async () => {
    await writeFile(path.join(dir, 'ok/a.txt'), 'a');
    await fs.writeFile(
      path.join(dir, 'once.yaml'),
      `host: cron-node
datasets:
  ok: { paths: [ok], every: 1h }
  empty: { paths: [empty], every: 1h }
`,
    );
    await fs.mkdir(path.join(dir, 'empty'));
    const agent = startAgent(['--config', path.join(dir, 'once.yaml'), '--once'], server.addr);
    expect(await agent.exited).toBe(1);
    expect(count(agent.lines, 'snapshot saved', 'ok')).toBe(1);
    expect(agent.lines.find((l) => l.msg === 'snapshot failed' && l.dataset === 'empty')?.err).toContain('FAILED_PRECONDITION: dataset empty:');
    const rows = await status();
    expect(rows.find((r) => r.dataset === 'empty' && r.host === 'cron-node')?.lastError).toContain('holds no files to back up');
    expect(rows.find((r) => r.dataset === 'ok' && r.host === 'cron-node')?.failing).toBe(false);
  });

  it('--once exits 3 when a snapshot left unreadable entries out, and the snapshot is saved', async () => {
    const part = path.join(dir, 'part');
    await writeFile(path.join(part, 'ok.txt'), 'fine');
    await writeFile(path.join(part, 'secret.bin'), 'no');
    await fs.writeFile(path.join(dir, 'part.yaml'), 'host: cron-part\ndatasets:\n  part: { paths: [part], every: 1h }\n');
    // Root reads through permission bits, so the agent runs as an unprivileged user when we are root.
    const asUser = process.getuid?.() === 0 ? 65534 : undefined;
    for (const d of [path.dirname(dir), dir, part]) await fs.chmod(d, 0o755);
    for (const f of [path.join(part, 'ok.txt'), path.join(dir, 'part.yaml')]) await fs.chmod(f, 0o644);
    await fs.chmod(path.join(part, 'secret.bin'), 0o000);
    const agent = startAgent(['--config', path.join(dir, 'part.yaml'), '--once'], server.addr, [], asUser);
    expect(await agent.exited).toBe(3);
    expect(count(agent.lines, 'snapshot saved', 'part')).toBe(1);
    const row = (await status()).find((r) => r.dataset === 'part' && r.host === 'cron-part');
    expect(row?.unreadable).toBe(1);
    expect(row?.failing).toBe(false);
  });

  it('with an agent token: snapshots and heartbeats for its own host; a keep_* policy it may not store is reported once and snapshots go on', async () => {
    const guarded = await startServer();
    try {
      const agentToken = await createToken(guarded.storeSpec, 'default', 'agent', 'gpu-3');
      const reader = await createToken(guarded.storeSpec, 'default', 'reader', 'dashboard');
      await fs.writeFile(path.join(dir, 'gpu-3.token'), `${agentToken}\n`);
      await writeFile(path.join(dir, 'gpu3-data/m.json'), '{}');
      await fs.writeFile(path.join(dir, 'token.yaml'), `host: gpu-3\ntoken_file: gpu-3.token\ndatasets:\n  gpu3: { paths: [gpu3-data], every: 1h, keep_last: 2 }\n`);
      const agent = startAgent(['--config', path.join(dir, 'token.yaml'), '--once'], guarded.addr);
      expect(await agent.exited).toBe(0);
      expect(count(agent.lines, 'snapshot saved', 'gpu3')).toBe(1);
      const refused = agent.lines.filter((l) => String(l.msg).startsWith('retention policy not stored: this token may not set policies'));
      expect(refused.length).toBe(1);
      expect(refused[0].err).toMatch(/^SetPolicy needs a token with role admin/);
      const st = await runCli(['--json', 'status'], { server: guarded.addr, env: { CAIRN_TOKEN: reader } });
      const row = JSON.parse(st.stdout.trim()) as StatusJson;
      expect(row).toMatchObject({ dataset: 'gpu3', host: 'gpu-3', failing: false });
      expect(row.lastSnapshot).not.toBe('');
    } finally {
      await guarded.stop();
    }
  });

  it('SIGTERM mid-snapshot aborts the session, records nothing and exits 0', async () => {
    for (let i = 0; i < 6; i++) await writeFile(path.join(dir, `large/shard${i}.bin`), randomBytes(40 * MiB, 500 + i));
    await fs.writeFile(path.join(dir, 'large.yaml'), 'host: node-b\ndatasets:\n  large: { paths: [large], every: 1h }\n');
    const agent = startAgent(['--config', path.join(dir, 'large.yaml')], server.addr);
    const started = () => server.logs.find((l) => l.includes('"backup started"') && l.includes('"dataset":"large"'));
    await agent.waitFor(() => started() !== undefined, 'backup session on the server');
    await new Promise((r) => setTimeout(r, 300));
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    expect(count(agent.lines, 'snapshot saved')).toBe(0);
    expect(count(agent.lines, 'snapshot interrupted by shutdown; session aborted, nothing recorded', 'large')).toBe(1);
    const session = (JSON.parse(started()!) as { session: string }).session;
    expect(server.logs.some((l) => l.includes('"backup aborted"') && l.includes(session))).toBe(true);
    expect(await history('large')).toEqual([]);
    // An interruption by the operator is not a failure: no error reaches cairn status.
    expect((await status()).find((r) => r.dataset === 'large')).toBeUndefined();
  });

  it('reads token_file before every run: a rotated token is used without a restart', async () => {
    const guarded = await startServer();
    try {
      const first = await createToken(guarded.storeSpec, 'default', 'agent', 'gpu-4');
      const tokenFile = path.join(dir, 'gpu-4.token');
      await fs.writeFile(tokenFile, `${first}\n`);
      await writeFile(path.join(dir, 'gpu4-data/m.json'), '{}');
      await fs.writeFile(path.join(dir, 'rotate.yaml'), `host: gpu-4\ntoken_file: gpu-4.token\nretry: { attempts: 1 }\ndatasets:\n  gpu4: { paths: [gpu4-data], every: 1s }\n`);
      const agent = startAgent(['--config', path.join(dir, 'rotate.yaml')], guarded.addr);
      await agent.waitFor((l) => count(l, 'snapshot saved', 'gpu4') >= 1, 'a snapshot with the first token');
      // A file caught mid-rewrite (empty) leaves the token read before in use.
      await fs.writeFile(tokenFile, '');
      const saved = count(agent.lines, 'snapshot saved', 'gpu4');
      await agent.waitFor((l) => count(l, 'token_file unreadable; using the token read before') >= 1 && count(l, 'snapshot saved', 'gpu4') > saved + 1, 'snapshots while the token file is empty');
      expect((await serverCli(guarded.storeSpec, ['token', 'revoke', 'gpu-4'])).code).toBe(0);
      await agent.waitFor((l) => l.some((x) => x.msg === 'snapshot failed' && String(x.err).startsWith('UNAUTHENTICATED')), 'a run refused with the revoked token');
      await fs.writeFile(tokenFile, `${await createToken(guarded.storeSpec, 'default', 'agent', 'gpu-4')}\n`);
      const before = count(agent.lines, 'snapshot saved', 'gpu4');
      await agent.waitFor((l) => count(l, 'snapshot saved', 'gpu4') > before, 'a snapshot with the rotated token');
      agent.proc.kill('SIGTERM');
      expect(await agent.exited).toBe(0);
    } finally {
      await guarded.stop();
    }
  });

  it('--once exits 1 when a shutdown interrupts it, even while it waits to retry', async () => {
    await writeFile(path.join(dir, 'far/a.txt'), 'a');
    await fs.writeFile(path.join(dir, 'far.yaml'), 'host: far-node\nretry: { attempts: 3, initial_delay: 60s }\ndatasets:\n  far: { paths: [far], every: 1h }\n');
    // Nothing listens there: every attempt is UNAVAILABLE, and the agent waits before the next.
    const agent = startAgent(['--config', path.join(dir, 'far.yaml'), '--once'], '127.0.0.1:1');
    await agent.waitFor((l) => count(l, 'snapshot failed; retrying', 'far') >= 1, 'a failed attempt waiting to be retried');
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(1);
    expect(agent.lines.find((l) => String(l.msg).endsWith('datasets failed or were interrupted'))?.failed).toEqual(['far']);
  });

  it('refuses to start without a server named in the config, --server or CAIRN_SERVER', async () => {
    await fs.writeFile(path.join(dir, 'noserver.yaml'), 'host: lost\ndatasets:\n  d: { paths: [d], every: 1h }\n');
    const env = { ...process.env };
    delete env.CAIRN_SERVER;
    const proc = spawn(process.execPath, [CLI_JS, 'agent', '--config', path.join(dir, 'noserver.yaml'), '--once'], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => proc.once('exit', resolve));
    expect(code).toBe(1);
    expect(stderr).toContain(`${path.join(dir, 'noserver.yaml')}: server: name the cairn-server to back up to (server: host:port here, or --server / CAIRN_SERVER)`);
  });

  it('cairn status exits 1 for a pair whose runs fail while its last snapshot is still fresh', async () => {
    await writeFile(path.join(dir, 'flaky/a.txt'), 'a');
    expect((await cli(['snapshot', path.join(dir, 'flaky'), '--dataset', 'flaky', '--host', 'node-f'])).code).toBe(0);
    expect((await cli(['status', '--dataset', 'flaky'])).code).toBe(0);
    const conn = new Connection({ server: server.addr });
    try {
      await conn.unary('Heartbeat', { dataset: 'flaky', host: 'node-f', ok: false, error: 'NOT_FOUND: /data/flaky does not exist (is the volume mounted?)', durationSeconds: 0.1, snapshot: '' });
    } finally {
      conn.close();
    }
    const r = await cli(['status', '--dataset', 'flaky']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('cairn: 1 of 1 dataset/host pairs failing: flaky@node-f');
    expect(r.stdout).toMatch(/flaky\s+node-f\s+\w{8} .*ok\s+failing since \d+s ago: NOT_FOUND: \/data\/flaky does not exist/);
  });

  it('an every-schedule keeps its pace when the wall clock steps back', async () => {
    await writeFile(path.join(dir, 'steady/a.txt'), 'a');
    await fs.writeFile(path.join(dir, 'steady.yaml'), 'host: node-s\ndatasets:\n  steady: { paths: [steady], every: 1s }\n');
    // An NTP step at boot, as the agent sees it: after its first second, the wall clock reads an hour earlier.
    const stepBack = path.join(dir, 'step-back.cjs');
    await fs.writeFile(stepBack, 'const real = Date.now; const t0 = real(); Date.now = () => { const t = real(); return t - t0 > 1000 ? t - 3600000 : t; };\n');
    const agent = startAgent(['--config', path.join(dir, 'steady.yaml')], server.addr, ['--require', stepBack]);
    await agent.waitFor((l) => count(l, 'snapshot saved', 'steady') >= 4, 'four runs, across the step', 20_000);
    agent.proc.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
  });
});
