/**
 * Cairn against restic and borg on the same data, in one run.
 *
 *   npm run bench                                   # ~1 GiB ML-experiment-like dataset
 *   npm run bench -- --mib 4096 --small 100000 --json out.json
 *   npm run bench -- --no-main --scaling            # no-change time at 10k and 100k small files
 *   npm run bench -- --no-main --index-fill 10000000
 *
 * Steps per tool: first snapshot, no-change snapshot, snapshot after a day of changes (applied
 * in place to the one dataset), restore latest. Every restore is compared with the source
 * (file list, sizes, BLAKE3 of every file) and a mismatch fails the run.
 */
import { Command, Option } from 'commander';
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Connection } from '../client/connection.js';
import { encodeLocation, IndexDb, chunkKey } from '../server/index-db.js';
import { applyDayOfChanges, buildManifest, ByteStream, generateDataset, generateSmallTree, manifestBytes, verifyTree, type ChangeSummary, type DatasetSummary, type Manifest } from './dataset.js';
import { CACHE_MODES, checkCacheMode, parseCacheMode, prepareCache } from './page-cache.js';
import { dirBytes, run } from './measure.js';
import { formatSummary, summarise } from './profile.js';
import { medianOfRounds, STEP_LABEL, STEPS, type Step, type StepResult, type ToolResult } from './results.js';
import { selfCheck } from './selfcheck.js';
import { BorgTool, CairnS3Tool, CairnTool, CLI_BIN, CLI_JS, ensureInstalled, ResticTool, startCairnServer, stopCairnServer, toolVersion, type StepMeasure, type Tool, type ToolOptions } from './tools.js';

const MiB = 1024 * 1024;

interface Target {
  what: string;
  goal: string;
  value: number | null;
  met: boolean | null;
}

interface Options {
  mib: string;
  small: string;
  seed: string;
  json?: string;
  work: string;
  tools: string;
  channels?: string;
  install: boolean;
  main: boolean;
  scaling: boolean;
  scaling1m: boolean;
  scalingFiles?: string;
  indexFill?: string;
  profile?: string;
  keep: boolean;
  timeout: string;
  selfCheck: boolean;
  pageCache: string;
  rounds: string;
}

function log(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

const mib = (b: number) => b / MiB;
const fmt = (x: number | undefined, digits = 1) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits));

function machine() {
  const cpus = os.cpus();
  return { cores: cpus.length, cpu: cpus[0]?.model ?? 'unknown', memoryGiB: +(os.totalmem() / 1024 ** 3).toFixed(1), node: process.version, platform: `${os.platform()} ${os.release()}`, arch: os.arch() };
}

function makeTool(name: string, opts: ToolOptions): Tool {
  switch (name) {
    case 'cairn':
      return new CairnTool('cairn', opts);
    case 'cairn-s3':
      return new CairnS3Tool(opts);
    case 'restic':
      return new ResticTool(opts);
    case 'borg':
      return new BorgTool(opts);
    default:
      throw new Error(`unknown tool ${name}: use cairn, cairn-s3, restic, borg`);
  }
}

// ---------------------------------------------------------------------------------------------
// Main comparison

async function mainComparison(o: Options, out: Record<string, unknown>): Promise<void> {
  const ds = { mib: Number(o.mib), small: Number(o.small), seed: Number(o.seed) };
  const rounds = Number(o.rounds);
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds takes a whole number of at least 1, got ${o.rounds}`);
  const perRound: ToolResult[][] = [];
  const restored: string[] = [];
  let sizes = { before: 0, after: 0, files: 0 };
  for (let k = 1; k <= rounds; k++) {
    if (rounds > 1) log(`round ${k} of ${rounds}`);
    // Profiles are of one run: the first round's.
    const r = await oneRound(o, ds, out, k, k === 1 ? o.profile : undefined);
    perRound.push(r.results);
    restored.push(...r.restored);
    sizes = r.sizes;
  }
  // Restored trees go only at the end: ext4 skips inodes freed in the last minutes when it
  // allocates new ones, so a restore right after deleting 20,000 files spent seconds of
  // system time scanning past them (perf: recently_deleted), and the tool after another
  // paid for that tool's clean-up.
  for (const target of restored) await rm(target, { recursive: true, force: true });
  const results = rounds > 1 ? medianOfRounds(perRound) : perRound[0];
  if (rounds > 1) out.rounds = perRound;
  out.tools = results;
  const { table, ratios, targets } = report(results);
  out.ratios = ratios;
  out.targets = targets;
  console.log(`\nDataset: ${sizes.files} files, ${fmt(mib(sizes.before))} MiB before / ${fmt(mib(sizes.after))} MiB after the day of changes (${ds.small} small JSON files; node_modules/ and __pycache__/ excluded by every tool). MB = 10^6 bytes of source data per second; CPU s = user + system seconds of all the tool's processes, sys s = the system (kernel) part of them. Page cache before every step: ${o.pageCache}.${rounds > 1 ? ` Each row: the round of ${rounds} with the median wall time for that step (all rounds are in the JSON).` : ''}`);
  console.log(table);
  for (const r of results) if (!r.available) console.log(`note: ${r.name} not available: ${r.reason}`);
  for (const r of results) for (const n of r.notes) console.log(`note: ${n}`);
  for (const r of results) if (r.cacheBytes) console.log(`note: ${r.name} client cache: ${fmt(mib(r.cacheBytes))} MiB (not counted in its repository size)`);
  console.log('\nTargets (cairn vs the best of the others):');
  for (const t of targets) console.log(`  ${t.met === null ? 'n/a ' : t.met ? 'MET ' : 'MISS'}  ${t.what}: ${t.value === null ? '-' : t.value.toFixed(2)} (goal ${t.goal})`);

  if (o.profile) {
    const profiles: Record<string, unknown> = {};
    for (const f of (await readdir(o.profile)).filter((f) => f.endsWith('.cpuprofile'))) {
      const s = await summarise(path.join(o.profile, f));
      profiles[f] = s;
      console.log('\n' + formatSummary(f, s));
    }
    out.profiles = profiles;
  }
}

/** One comparison from a freshly generated dataset: every tool's four steps, restores verified. */
async function oneRound(
  o: Options,
  ds: { mib: number; small: number; seed: number },
  out: Record<string, unknown>,
  round: number,
  profileDir: string | undefined,
): Promise<{ results: ToolResult[]; restored: string[]; sizes: { before: number; after: number; files: number } }> {
  const dataDir = path.join(o.work, 'data');
  log(`generating dataset: ${ds.mib} MiB, ${ds.small} small files, seed ${ds.seed} -> ${dataDir}`);
  const summary: DatasetSummary = await generateDataset(dataDir, ds);
  log(`dataset: ${summary.files} files, ${fmt(mib(summary.bytes))} MiB (+${summary.noiseFiles} excluded noise files) in ${summary.seconds.toFixed(1)} s`);
  out.dataset = { ...ds, ...summary };
  const before: Manifest = await buildManifest(dataDir);
  const bytesBefore = manifestBytes(before);

  const toolOpts: ToolOptions = { work: path.join(o.work, 'tools'), timeoutMs: Number(o.timeout) * 1000, channels: o.channels ? Number(o.channels) : undefined };
  const results: ToolResult[] = [];
  const live: Array<{ tool: Tool; result: ToolResult }> = [];
  for (const name of o.tools.split(',').map((s) => s.trim()).filter(Boolean)) {
    const tool = makeTool(name, { ...toolOpts, profileDir: name === 'cairn' ? profileDir : undefined });
    const result: ToolResult = { name, available: true, notes: tool.notes, steps: {} };
    results.push(result);
    try {
      await tool.init();
    } catch (err) {
      result.available = false;
      result.reason = (err as Error).message.split('\n').slice(0, 6).join(' | ');
      log(`${name}: not available: ${result.reason}`);
      await tool.close().catch(() => undefined);
      continue;
    }
    live.push({ tool, result });
  }

  const cacheMode = parseCacheMode(o.pageCache);
  const step = async (t: { tool: Tool; result: ToolResult }, s: Step, fn: () => Promise<StepMeasure>, bytes: number) => {
    await prepareCache(cacheMode, [dataDir, t.tool.stateDir]);
    log(`${t.tool.name}: ${STEP_LABEL[s]} (page cache ${cacheMode}) ...`);
    const m = await fn();
    t.result.steps[s] = { ...m, bytes, mbps: bytes / 1e6 / m.seconds };
    log(`${t.tool.name}: ${STEP_LABEL[s]}: ${m.seconds.toFixed(2)} s, ${fmt(bytes / 1e6 / m.seconds)} MB/s, CPU ${m.cpuSeconds.toFixed(1)} s (sys ${m.systemSeconds.toFixed(1)}), peak RSS ${fmt(mib(m.peakRss))} MiB, repo ${fmt(mib(m.repoBytes))} MiB`);
  };

  for (const t of live) {
    await step(t, 'first', () => t.tool.backup(dataDir), bytesBefore);
    await step(t, 'nochange', () => t.tool.backup(dataDir), bytesBefore);
  }
  log('applying a day of changes in place');
  const changes: ChangeSummary = await applyDayOfChanges(dataDir, ds);
  out.changes = changes;
  const after = await buildManifest(dataDir);
  const bytesAfter = manifestBytes(after);
  const restored: string[] = [];
  for (const t of live) {
    await step(t, 'changed', () => t.tool.backup(dataDir), bytesAfter);
    const target = path.join(o.work, `restore-${t.tool.name}-${round}`);
    let root = target;
    await step(
      t,
      'restore',
      async () => {
        const m = await t.tool.restore(target);
        root = m.root;
        return m;
      },
      bytesAfter,
    );
    t.result.verified = await verifyTree(after, root, `${t.tool.name} restore latest`);
    log(`${t.tool.name}: restore verified: ${t.result.verified.files} files, ${fmt(mib(t.result.verified.bytes))} MiB, every BLAKE3 matches`);
    restored.push(target);
    t.result.cacheBytes = await t.tool.cacheBytes();
    await t.tool.close();
  }

  return { results, restored, sizes: { before: bytesBefore, after: bytesAfter, files: summary.files } };
}

function report(results: ToolResult[]): { table: string; ratios: Record<string, Record<string, number | null>>; targets: Target[] } {
  const header = ['tool', 'step', 'wall s', 'MB/s', 'CPU s', 'sys s', 'peak RSS MiB', 'repo MiB'];
  const rows: string[][] = [];
  for (const r of results) {
    if (!r.available) {
      rows.push([r.name, 'TODO: not available (see note)', '-', '-', '-', '-', '-', '-']);
      continue;
    }
    for (const s of STEPS) {
      const m = r.steps[s];
      rows.push([r.name, STEP_LABEL[s], fmt(m?.seconds, 2), fmt(m?.mbps, 0), fmt(m?.cpuSeconds, 1), fmt(m?.systemSeconds, 1), fmt(m ? mib(m.peakRss) : undefined, 0), fmt(m ? mib(m.repoBytes) : undefined, 1)]);
    }
  }
  const cairn = results.find((r) => r.name === 'cairn' && r.available);
  const others = results.filter((r) => r.available && !r.name.startsWith('cairn'));
  const ratios: Record<string, Record<string, number | null>> = {};
  const best = (s: Step, f: (m: StepResult) => number, pick: (xs: number[]) => number) => {
    const xs = others.map((r) => r.steps[s]).filter((m): m is StepResult => !!m).map(f);
    return xs.length > 0 ? pick(xs) : undefined;
  };
  if (cairn && others.length > 0) {
    rows.push(['---', '', '', '', '', '', '', '']);
    for (const s of STEPS) {
      const m = cairn.steps[s];
      if (!m) continue;
      const ratio = (v: number, b: number | undefined) => (b === undefined || b === 0 ? null : v / b);
      ratios[s] = {
        seconds: ratio(m.seconds, best(s, (x) => x.seconds, (xs) => Math.min(...xs))),
        mbps: ratio(m.mbps, best(s, (x) => x.mbps, (xs) => Math.max(...xs))),
        cpuSeconds: ratio(m.cpuSeconds, best(s, (x) => x.cpuSeconds, (xs) => Math.min(...xs))),
        systemSeconds: ratio(m.systemSeconds, best(s, (x) => x.systemSeconds, (xs) => Math.min(...xs))),
        peakRss: ratio(m.peakRss, best(s, (x) => x.peakRss, (xs) => Math.min(...xs))),
        repoBytes: ratio(m.repoBytes, best(s, (x) => x.repoBytes, (xs) => Math.min(...xs))),
      };
      const q = ratios[s];
      rows.push(['cairn ÷ best other', STEP_LABEL[s], `${fmt(q.seconds ?? undefined, 2)}x`, `${fmt(q.mbps ?? undefined, 2)}x`, `${fmt(q.cpuSeconds ?? undefined, 2)}x`, `${fmt(q.systemSeconds ?? undefined, 2)}x`, `${fmt(q.peakRss ?? undefined, 2)}x`, `${fmt(q.repoBytes ?? undefined, 2)}x`]);
    }
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => '| ' + r.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ') + ' |';
  const table = [line(header), '|' + widths.map((w, i) => (i < 2 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|', ...rows.map(line)].join('\n');

  const t = (what: string, goal: string, value: number | null | undefined, ok: (v: number) => boolean): Target => ({ what, goal, value: value ?? null, met: value === null || value === undefined ? null : ok(value) });
  const maxRss = cairn ? Math.max(...STEPS.map((s) => cairn.steps[s]?.peakRss ?? 0)) : undefined;
  const targets = [
    t('first snapshot throughput ratio', '>= 1.5x', ratios.first?.mbps, (v) => v >= 1.5),
    t('no-change snapshot time ratio', '<= 0.5x', ratios.nochange?.seconds, (v) => v <= 0.5),
    t('day-of-changes snapshot time ratio', '<= 0.7x', ratios.changed?.seconds, (v) => v <= 0.7),
    t('restore throughput ratio', '>= 1.5x', ratios.restore?.mbps, (v) => v >= 1.5),
    t('repository size ratio (after the day of changes)', '<= 1.05x', ratios.changed?.repoBytes, (v) => v <= 1.05),
    t('peak RSS client + server, MiB (max over steps)', '<= 300', maxRss === undefined ? undefined : mib(maxRss), (v) => v <= 300),
  ];
  return { table, ratios, targets };
}

// ---------------------------------------------------------------------------------------------
// Scaling: no-change snapshot time against the number of small files

async function scaling(o: Options, counts: number[], out: Record<string, unknown>): Promise<void> {
  const rows: Array<Record<string, unknown>> = [];
  const tools = o.tools.split(',').map((s) => s.trim()).filter((n) => n === 'cairn' || n === 'restic' || n === 'borg');
  for (const count of counts) {
    const dir = path.join(o.work, `scale-${count}`);
    log(`scaling: generating ${count} small files`);
    const g = await generateSmallTree(path.join(dir, 'data'), count, Number(o.seed));
    log(`scaling: ${count} files, ${fmt(mib(g.bytes))} MiB in ${g.seconds.toFixed(1)} s`);
    for (const name of tools) {
      const tool = makeTool(name, { work: path.join(dir, 'tools'), timeoutMs: Number(o.timeout) * 1000, channels: o.channels ? Number(o.channels) : undefined });
      const row: Record<string, unknown> = { files: count, tool: name };
      try {
        await tool.init();
        const cacheMode = parseCacheMode(o.pageCache);
        await prepareCache(cacheMode, [path.join(dir, 'data'), tool.stateDir]);
        const first = await tool.backup(path.join(dir, 'data'));
        await prepareCache(cacheMode, [path.join(dir, 'data'), tool.stateDir]);
        const noChange = await tool.backup(path.join(dir, 'data'));
        Object.assign(row, { firstSeconds: first.seconds, firstCpuSeconds: first.cpuSeconds, firstPeakRss: first.peakRss, noChangeSeconds: noChange.seconds, noChangeCpuSeconds: noChange.cpuSeconds, noChangePeakRss: noChange.peakRss, repoBytes: noChange.repoBytes, processes: noChange.processes });
        log(`scaling: ${name} @ ${count}: first ${first.seconds.toFixed(2)} s, no-change ${noChange.seconds.toFixed(2)} s, peak RSS ${fmt(mib(noChange.peakRss))} MiB`);
      } catch (err) {
        row.error = (err as Error).message.slice(0, 500);
        log(`scaling: ${name} @ ${count} failed: ${row.error}`);
      } finally {
        await tool.close().catch(() => undefined);
      }
      rows.push(row);
      await rm(path.join(dir, 'tools'), { recursive: true, force: true });
    }
    if (!o.keep) await rm(dir, { recursive: true, force: true });
  }
  out.scaling = rows;
  console.log('\nScaling: snapshot time against the number of small files (~400 B each)');
  console.log('| files | tool | first s | no-change s | no-change CPU s | no-change peak RSS MiB |\n|---:|---|---:|---:|---:|---:|');
  for (const r of rows) console.log(`| ${r.files} | ${r.tool} | ${r.error ? 'failed' : fmt(r.firstSeconds as number, 2)} | ${r.error ? '-' : fmt(r.noChangeSeconds as number, 2)} | ${r.error ? '-' : fmt(r.noChangeCpuSeconds as number, 2)} | ${r.error ? '-' : fmt(mib(r.noChangePeakRss as number), 0)} |`);
}

// ---------------------------------------------------------------------------------------------
// Index fill: server memory while the index grows

const FILL_BLOCK = 100_000;

function fillIds(seed: number, block: number): Buffer[] {
  const bytes = new ByteStream(`${seed}/fill/${block}`).next(FILL_BLOCK * 32);
  return Array.from({ length: FILL_BLOCK }, (_, i) => bytes.subarray(i * 32, i * 32 + 32));
}

async function indexFill(o: Options, target: number, out: Record<string, unknown>): Promise<void> {
  const seed = Number(o.seed);
  const dir = path.join(o.work, 'index-fill');
  await rm(dir, { recursive: true, force: true });
  const store = `file:${path.join(dir, 'store')}`;
  const index = path.join(dir, 'index');
  // Initialise the repository (config, index marker) with a real server, then stop it.
  await stopCairnServer(await startCairnServer({ store, index }));

  const checkpoints = [...new Set([100_000, 1_000_000, 10_000_000].filter((c) => c < target).concat([target]))].sort((a, b) => a - b);
  const rows: Array<Record<string, unknown>> = [];
  let filled = 0;
  const pack = Buffer.alloc(32);
  for (const [ci, checkpoint] of checkpoints.entries()) {
    log(`index-fill: filling to ${checkpoint} chunk keys`);
    const t0 = Date.now();
    const db = await IndexDb.open(path.join(index, 'default'));
    while (filled < checkpoint) {
      const block = Math.floor(filled / FILL_BLOCK);
      const ids = fillIds(seed, block).slice(filled - block * FILL_BLOCK, Math.min(FILL_BLOCK, checkpoint - block * FILL_BLOCK));
      for (let k = 0; k < ids.length; k += 10_000) {
        const ops = ids.slice(k, k + 10_000).map((id, j) => {
          const n = filled + k + j;
          pack.writeUInt32BE(Math.floor(n / 16), 0);
          return { type: 'put' as const, key: chunkKey(id), value: encodeLocation({ pack, offset: (n % 16) * MiB, storedLength: MiB, rawLength: MiB, kind: 'DATA', compressed: false }) };
        });
        await db.batch(ops);
      }
      filled += ids.length;
    }
    await db.close();
    const fillSeconds = (Date.now() - t0) / 1000;
    log(`index-fill: ${checkpoint} keys (${fillSeconds.toFixed(1)} s); starting the server on it`);

    const started = Date.now();
    const server = await startCairnServer({ store, index });
    const startSeconds = (Date.now() - started) / 1000;
    await new Promise((r) => setTimeout(r, 1000));
    const idleRss = server.watched.rss();
    const row: Record<string, unknown> = { chunks: checkpoint, fillSeconds, startSeconds, indexBytes: await dirBytes(index), idleRss };
    try {
      // A real snapshot of fresh data (a new seed per checkpoint, so every chunk is new).
      const data = path.join(dir, 'data');
      await generateDataset(data, { mib: 64, small: 2000, seed: seed + 1000 + ci });
      server.watched.resetPeak();
      const r = await run(process.execPath, [...CLI_BIN.flags, CLI_JS, '--json', 'snapshot', data, '--dataset', 'fill', '--host', 'bench'], { env: { ...process.env, ...CLI_BIN.env, CAIRN_SERVER: server.addr }, timeoutMs: Number(o.timeout) * 1000 });
      row.snapshotSeconds = r.seconds;
      row.snapshotClientPeakRss = r.peakRss;
      row.snapshotServerPeakRss = server.watched.peak();
      row.snapshotServerPeakAnon = server.watched.peakAnon();

      // FindMissing-heavy load: 200 calls of 10k ids, half present (random blocks), 4 in flight.
      server.watched.resetPeak();
      const conn = new Connection({ server: server.addr, channels: 2 });
      const begin = await conn.unary<{ sessionId: string }>('BeginBackup', { dataset: 'fill-load', host: 'bench', paths: ['/fill'], tags: [], time: '' });
      const calls = 200;
      const absent = new ByteStream(`${seed}/absent/${checkpoint}`);
      const blocks = Math.max(1, Math.floor(filled / FILL_BLOCK));
      let missingTotal = 0;
      const t1 = Date.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          while (next < calls) {
            const c = next++;
            const present = fillIds(seed, c % blocks).slice(((c * 5000) % FILL_BLOCK), ((c * 5000) % FILL_BLOCK) + 5000);
            const missing = Array.from({ length: 10_000 - present.length }, () => absent.next(32));
            const reply = await conn.unary<{ missing: Buffer[] }>('FindMissing', { sessionId: begin.sessionId, ids: [...present, ...missing] });
            missingTotal += reply.missing.length;
          }
        }),
      );
      const loadSeconds = (Date.now() - t1) / 1000;
      await conn.unary('AbortBackup', { sessionId: begin.sessionId }).catch(() => undefined);
      conn.close();
      row.findMissingIds = calls * 10_000;
      row.findMissingReportedMissing = missingTotal;
      row.findMissingIdsPerSecond = (calls * 10_000) / loadSeconds;
      row.findMissingServerPeakRss = server.watched.peak();
      row.findMissingServerPeakAnon = server.watched.peakAnon();
      row.afterLoadRss = server.watched.rss();
      log(`index-fill: ${checkpoint}: start ${startSeconds.toFixed(1)} s, idle ${fmt(mib(idleRss))} MiB, snapshot server peak ${fmt(mib(row.snapshotServerPeakRss as number))} MiB, FindMissing ${fmt(row.findMissingIdsPerSecond as number, 0)} ids/s, server peak ${fmt(mib(row.findMissingServerPeakRss as number))} MiB`);
    } catch (err) {
      row.error = (err as Error).message.slice(0, 500);
      log(`index-fill: ${checkpoint} failed: ${row.error}`);
    } finally {
      await stopCairnServer(server);
    }
    rows.push(row);
  }
  out.indexFill = rows;
  console.log('\nServer memory as the index grows (synthetic chunk/ keys in LevelDB)');
  console.log('RSS = all resident pages; anon = RSS less file-backed pages (LevelDB memory-maps its tables).');
  console.log('| chunks in index | LevelDB MiB | server start s | idle RSS MiB | snapshot (64 MiB new): server peak RSS / anon MiB | FindMissing 2M ids: ids/s | server peak RSS / anon MiB |\n|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    const pair = (a: unknown, b: unknown) => `${fmt(mib(a as number), 0)} / ${fmt(mib(b as number), 0)}`;
    console.log(`| ${r.chunks} | ${fmt(mib(r.indexBytes as number), 0)} | ${fmt(r.startSeconds as number, 1)} | ${fmt(mib(r.idleRss as number), 0)} | ${r.error ? 'failed' : pair(r.snapshotServerPeakRss, r.snapshotServerPeakAnon)} | ${r.error ? '-' : fmt(r.findMissingIdsPerSecond as number, 0)} | ${r.error ? '-' : pair(r.findMissingServerPeakRss, r.findMissingServerPeakAnon)} |`);
  }
  if (!o.keep) await rm(dir, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const program = new Command('bench')
    .description('cairn vs restic and borg on the same ML-experiment-like data')
    .addOption(new Option('--mib <n>', 'dataset size, MiB').default('1024'))
    .addOption(new Option('--small <n>', 'number of small JSON files').default('20000'))
    .addOption(new Option('--seed <n>', 'dataset seed').default('1'))
    .option('--json <file>', 'write all results as JSON here')
    .addOption(new Option('--work <dir>', 'scratch directory (datasets, repositories, restores)').default(path.join(os.tmpdir(), 'cairn-bench')))
    .addOption(new Option('--tools <list>', 'tools, comma separated').default('cairn,cairn-s3,restic,borg'))
    .option('--channels <n>', 'cairn client: parallel connections (its default when unset)')
    .option('--no-install', 'do not apt-get install missing restic / borg / time')
    .option('--no-main', 'skip the main comparison (scaling / index-fill only)')
    .option('--scaling', 'no-change snapshot time at 10k and 100k small files', false)
    .option('--scaling-1m', 'also at 1M small files', false)
    .option('--scaling-files <list>', 'scaling run at these file counts instead, e.g. 1000000')
    .option('--index-fill <n>', 'server RSS with an index grown to N chunks (synthetic keys)')
    .option('--profile <dir>', 'cpu-profile cairn client and server during the first snapshot')
    .option('--keep', 'keep the scratch directory', false)
    .option('--no-self-check', 'skip the check of the generator and the restore verifier')
    .addOption(new Option('--page-cache <mode>', 'before every timed step: warm (sync, then read the source and the tool\'s repository), cold (sync and drop the page cache; root only) or as-is').choices([...CACHE_MODES]).default('warm'))
    .addOption(new Option('--rounds <n>', 'run the comparison this many times, each from a fresh dataset, and report each step\'s median round').default('1'))
    .addOption(new Option('--timeout <s>', 'per command').default('1800'))
    .parse();
  const o = program.opts<Options>();
  o.work = path.resolve(o.work);
  if (o.profile) {
    o.profile = path.resolve(o.profile);
    await rm(o.profile, { recursive: true, force: true });
    await mkdir(o.profile, { recursive: true });
  }
  if (!existsSync(path.join(path.dirname(new URL(import.meta.url).pathname), '../server/main.js'))) throw new Error('run `npm run build` first');
  await checkCacheMode(parseCacheMode(o.pageCache));
  await mkdir(o.work, { recursive: true });

  const out: Record<string, unknown> = { date: new Date().toISOString(), machine: machine(), options: { ...o } };
  if (o.install) out.installed = await ensureInstalled(log);
  out.versions = { restic: await toolVersion('restic', ['version']), borg: await toolVersion('borg', ['--version']), node: process.version };
  const started = Date.now();
  const save = async () => {
    out.seconds = (Date.now() - started) / 1000;
    if (o.json) await writeFile(o.json, JSON.stringify(out, null, 2) + '\n');
  };
  try {
    if (o.selfCheck) {
      await selfCheck();
      log('self-check passed: the generator is deterministic and the verifier catches wrong restores');
    }
    if (o.main) await mainComparison(o, out);
    await save();
    if (o.scalingFiles) await scaling(o, o.scalingFiles.split(',').map(Number), out);
    else if (o.scaling || o.scaling1m) await scaling(o, o.scaling1m ? [10_000, 100_000, 1_000_000] : [10_000, 100_000], out);
    await save();
    if (o.indexFill) await indexFill(o, Number(o.indexFill), out);
    await save();
  } catch (err) {
    out.error = (err as Error).message;
    await save();
    throw err;
  } finally {
    if (!o.keep) {
      await rm(path.join(o.work, 'data'), { recursive: true, force: true });
      await rm(path.join(o.work, 'tools'), { recursive: true, force: true });
    }
  }
  if (o.json) log(`results written to ${o.json}`);
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
