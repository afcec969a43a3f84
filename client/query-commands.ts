import type { Command } from 'commander';
import { once } from 'node:events';
import { parseDurationMs, parseTimeArg } from '../common/durations.js';
import { Code, dataLoss, invalidArgument, notFound } from '../common/errors.js';
import { shortId, toHex } from '../common/hash.js';
import type { Node, Snapshot } from '../common/messages.js';
import { DEFAULT_STALE_AFTER, type DiffEntry, type FindMatch, type StatsReply, type StatusReply, type StatusRow } from '../common/query-messages.js';
import { joinPath, validateNodes } from '../common/tree.js';
import { formatBytes } from '../common/units.js';
import { ChunkFetcher } from './chunk-fetcher.js';
import { connect, count, EXIT } from './cli-common.js';
import type { Connection } from './connection.js';
import { localTime, relativeTime, table } from './format.js';

/**
 * `cairn cat ... | head` closes the pipe early; like cat(1), stop quietly instead of
 * reporting EPIPE as a failure.
 */
function quietOnClosedStdout(): void {
  if (process.stdout.listenerCount('error') > 0) return;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(EXIT.OK);
    throw err;
  });
}

/** Lines go out at the pace stdout takes them: a listing of a million entries must not pile up in memory. */
async function emit(line: string): Promise<void> {
  quietOnClosedStdout();
  if (!process.stdout.write(line + '\n')) await once(process.stdout, 'drain');
}

const nsToIso = (ns: string) => new Date(Number(BigInt(ns) / 1_000_000n)).toISOString();

interface RefOpts {
  dataset?: string;
  host?: string;
  tag?: string;
}

function getSnapshot(conn: Connection, ref: string, o: RefOpts): Promise<Snapshot> {
  return conn.unary<Snapshot>('GetSnapshot', { ref, dataset: o.dataset ?? '', host: o.host ?? '', tag: o.tag ?? '' });
}

function addRefOptions(cmd: Command): Command {
  return cmd
    .option('--dataset <name>', 'dataset, to narrow "latest"')
    .option('--host <name>', 'host, to narrow "latest"')
    .option('--tag <tag>', 'tag, to narrow "latest"');
}

/** Components of a path inside a snapshot: "/a//b/" and "a/b" are the same; ".." is refused. */
function splitPath(p: string): string[] {
  const parts = p.split('/').filter((s) => s !== '' && s !== '.');
  if (parts.includes('..')) throw invalidArgument(`path ${JSON.stringify(p)} contains "..": paths inside a snapshot are absolute from its root`);
  return parts;
}

interface Located {
  path: string;
  node: Node;
}

/** Streams one directory's entries until `name` turns up; entries are sorted, so it stops once past it. */
async function findEntry(conn: Connection, tree: Buffer, name: string): Promise<Node | undefined> {
  for await (const msg of conn.stream<{ nodes: Node[] }>('ReadTree', { id: tree })) {
    for (const n of msg.nodes) {
      if (n.name === name) return n;
      if (n.name > name) return undefined;
    }
  }
  return undefined;
}

async function locate(conn: Connection, snap: Snapshot, p: string): Promise<Located> {
  const parts = splitPath(p);
  let node: Node = { name: '', type: 'DIR', mode: 0o755, mtimeNs: '0', size: '0', chunks: [], subtree: Buffer.from(snap.rootTree, 'hex'), target: '', inode: '0', ctimeNs: '0', links: 0 };
  for (let i = 0; i < parts.length; i++) {
    const here = parts.slice(0, i).join('/');
    if (node.type !== 'DIR') throw notFound(`path ${parts.join('/')} does not exist in snapshot ${shortId(snap.id)}: ${here} is a ${node.type.toLowerCase()}, not a directory`);
    const next = await findEntry(conn, node.subtree, parts[i]);
    if (!next) throw notFound(`path ${parts.join('/')} does not exist in snapshot ${shortId(snap.id)} (${snap.dataset}@${snap.host}, ${snap.time})`);
    node = next;
  }
  return { path: parts.join('/'), node };
}

/**
 * A directory's entries in path order, each directory followed by what it holds. Entries
 * arrive as ReadTree pages, so a huge directory is never held whole; a deeper directory is
 * read while its parent's stream waits.
 */
async function* walk(conn: Connection, tree: Buffer, dir: string, recursive: boolean, ancestors: ReadonlySet<string> = new Set()): AsyncGenerator<Located> {
  // Content-addressed trees cannot contain themselves: a cycle means a hostile or broken server.
  const here = new Set(ancestors).add(toHex(tree));
  for await (const msg of conn.stream<{ nodes: Node[] }>('ReadTree', { id: tree })) {
    validateNodes(msg.nodes, `directory /${dir} (tree ${toHex(tree)})`, Code.DATA_LOSS);
    for (const node of msg.nodes) {
      const path = joinPath(dir, node.name);
      yield { path, node };
      if (!recursive || node.type !== 'DIR') continue;
      if (here.has(toHex(node.subtree))) throw dataLoss(`directory /${path} (tree ${toHex(node.subtree)}) contains itself; the server's trees are corrupt`);
      yield* walk(conn, node.subtree, path, true, here);
    }
  }
}

function modeString(n: Node): string {
  const kind = n.type === 'DIR' ? 'd' : n.type === 'SYMLINK' ? 'l' : '-';
  const rwx = 'rwxrwxrwx';
  let bits = '';
  for (let i = 0; i < 9; i++) bits += n.mode & (1 << (8 - i)) ? rwx[i] : '-';
  return kind + bits;
}

function lsRecord({ path, node }: Located): Record<string, unknown> {
  return {
    path,
    type: node.type.toLowerCase(),
    mode: (node.mode & 0o7777).toString(8).padStart(4, '0'),
    size: Number(node.size),
    mtime: nsToIso(node.mtimeNs),
    ...(node.type === 'SYMLINK' ? { target: node.target } : {}),
  };
}

function lsLine({ path, node }: Located, long: boolean): string {
  const name = node.type === 'DIR' ? `${path}/` : path;
  if (!long) return name;
  const size = node.type === 'FILE' ? formatBytes(Number(node.size)) : '-';
  return `${modeString(node)}  ${size.padStart(10)}  ${localTime(nsToIso(node.mtimeNs))}  ${name}${node.type === 'SYMLINK' ? ` -> ${node.target}` : ''}`;
}

const DIFF_MARK: Record<string, string> = { added: '+', removed: '-', modified: 'M', metadata: 'm' };

function diffSize(e: DiffEntry): string {
  if (e.type !== 'FILE') return '';
  const [o, n] = [formatBytes(Number(e.oldSize)), formatBytes(Number(e.newSize))];
  return e.change === 'added' ? n : e.change === 'removed' ? o : o === n ? n : `${o} -> ${n}`;
}

function statusState(r: StatusRow): string {
  if (!r.lastSnapshot) return 'NEVER';
  return r.stale ? 'STALE' : 'ok';
}

/** What the ERROR column says: a pair failing now, else a latest snapshot that left entries out. */
function statusProblem(r: StatusRow, nowMs: number): string {
  if (failing(r)) return `failing since ${relativeTime(r.lastErrorTime, nowMs)}: ${r.lastError}`;
  const unreadable = Number(r.unreadable);
  return unreadable > 0 ? `last snapshot left out or could not read whole ${unreadable} ${unreadable === 1 ? 'entry' : 'entries'}` : '';
}

/** The last error, if it came after the last success: a pair that is failing right now. */
function failing(r: StatusRow): boolean {
  return r.lastErrorTime !== '' && r.lastErrorTime > r.lastSuccessTime;
}

/** --since/--until of `history` also take durations and dates; --page walks through --limit-sized pages. */
function extendHistory(program: Command): void {
  const history = program.commands.find((c) => c.name() === 'history');
  if (!history) return;
  for (const opt of history.options) {
    if (opt.long === '--since') opt.description = 'only snapshots at or after this time: 7d, 26h, 2026-11-01 or RFC 3339';
    if (opt.long === '--until') opt.description = 'only snapshots before this time: 2d, 2026-11-01 or RFC 3339';
  }
  history.option('--page <n>', 'with --limit N: show the n-th page of N snapshots (1 = newest)');
  history.hook('preAction', async (cmd) => {
    const o = cmd.opts<{ since?: string; until?: string; limit?: string; page?: string; dataset?: string; host?: string; tag?: string }>();
    if (o.since) cmd.setOptionValue('since', parseTimeArg(o.since, '--since'));
    if (o.until) cmd.setOptionValue('until', parseTimeArg(o.until, '--until'));
    const page = o.page === undefined ? 1 : count(o.page, '--page');
    if (page === 1) return;
    const limit = count(o.limit ?? '0', '--limit');
    if (page < 1 || limit === 0) throw invalidArgument('--page needs --limit N and a page number of 1 or more');
    // Page n starts below the last snapshot of page n-1: find its time and use it as an exclusive --until.
    const { conn } = connect(cmd);
    try {
      const skip = (page - 1) * limit;
      let seen = 0;
      let last: Snapshot | undefined;
      const filter = { dataset: o.dataset ?? '', host: o.host ?? '', tag: o.tag ?? '', since: cmd.getOptionValue('since') ?? '', until: cmd.getOptionValue('until') ?? '', limit: skip };
      for await (const s of conn.stream<Snapshot>('ListSnapshots', filter)) {
        last = s;
        seen++;
      }
      // Past the end: an empty window, so the page is empty rather than a repeat of page 1.
      cmd.setOptionValue('until', seen < skip || !last ? '1970-01-01T00:00:00.000Z' : last.time);
      if (seen < skip) cmd.setOptionValue('since', '1970-01-01T00:00:00.000Z');
    } finally {
      conn.close();
    }
  });
}

export function registerQueryCommands(program: Command): void {
  extendHistory(program);

  addRefOptions(
    program
      .command('ls')
      .description('list a directory (or one file) inside a snapshot, without restoring it')
      .argument('<snapshot>', 'snapshot id, unique id prefix, or latest')
      .argument('[path]', 'path inside the snapshot', ''),
  )
    .option('-l, --long', 'mode, size and modification time', false)
    .option('-R, --recursive', 'everything beneath the directory', false)
    .action(async (ref: string, p: string, o, cmd: Command) => {
      const { conn, g } = connect(cmd);
      try {
        const snap = await getSnapshot(conn, ref, o);
        const target = await locate(conn, snap, p);
        const entries = target.node.type === 'DIR' ? walk(conn, target.node.subtree, target.path, o.recursive) : [target];
        for await (const e of entries) await emit(g.json ? JSON.stringify(lsRecord(e)) : lsLine(e, o.long));
      } finally {
        conn.close();
      }
    });

  addRefOptions(
    program
      .command('cat')
      .description("write one file's bytes from a snapshot to stdout, every chunk verified")
      .argument('<snapshot>', 'snapshot id, unique id prefix, or latest')
      .argument('<path>', 'file inside the snapshot'),
  ).action(async (ref: string, p: string, o, cmd: Command) => {
    const { conn } = connect(cmd);
    try {
      const snap = await getSnapshot(conn, ref, o);
      const { path, node } = await locate(conn, snap, p);
      if (node.type === 'DIR') throw invalidArgument(`${path || '/'} is a directory in snapshot ${shortId(snap.id)}; use cairn ls`);
      if (node.type === 'SYMLINK') throw invalidArgument(`${path} is a symlink to ${JSON.stringify(node.target)} in snapshot ${shortId(snap.id)}; cat its target`);
      const avg = node.chunks.length > 0 ? Math.max(1, Math.ceil(Number(node.size) / node.chunks.length)) : 1;
      quietOnClosedStdout();
      let written = 0;
      for await (const chunk of new ChunkFetcher(conn).chunks(node.chunks, `file ${path}`, avg)) {
        written += chunk.length;
        if (!process.stdout.write(chunk)) await once(process.stdout, 'drain');
      }
      if (written !== Number(node.size)) throw dataLoss(`file ${path}: the snapshot says ${node.size} bytes, its chunks hold ${written}`);
    } finally {
      conn.close();
    }
  });

  program
    .command('diff')
    .description('what changed between two snapshots: added, removed, modified, metadata-only')
    .argument('<a>', 'older snapshot: id, unique id prefix, or latest')
    .argument('<b>', 'newer snapshot: id, unique id prefix, or latest')
    .option('--dataset <name>', 'dataset, to narrow "latest"')
    .option('--host <name>', 'host, to narrow "latest"')
    .action(async (refA: string, refB: string, o, cmd: Command) => {
      const { conn, g } = connect(cmd);
      try {
        const a = await getSnapshot(conn, refA, o);
        const b = await getSnapshot(conn, refB, o);
        const totals = { added: 0, removed: 0, modified: 0, metadata: 0, addedBytes: 0, removedBytes: 0, treesRead: 0 };
        if (!g.json) await emit(`diff ${shortId(a.id)} (${localTime(a.time)}) -> ${shortId(b.id)} (${localTime(b.time)})`);
        for await (const e of conn.stream<DiffEntry>('Diff', { a: a.id, b: b.id })) {
          totals.treesRead = Math.max(totals.treesRead, Number(e.treesRead));
          if (!e.change) continue;
          totals[e.change]++;
          totals.addedBytes += Number(e.newSize) * (e.change === 'added' ? 1 : 0);
          totals.removedBytes += Number(e.oldSize) * (e.change === 'removed' ? 1 : 0);
          const path = e.type === 'DIR' ? `${e.path}/` : e.path;
          if (g.json) await emit(JSON.stringify({ path: e.path, change: e.change, type: e.type.toLowerCase(), oldSize: Number(e.oldSize), newSize: Number(e.newSize) }));
          else await emit(`${DIFF_MARK[e.change]}  ${diffSize(e).padEnd(21)}  ${path}`);
        }
        if (g.json) await emit(JSON.stringify({ summary: { a: a.id, b: b.id, ...totals } }));
        else {
          await emit(
            `${totals.added} added (${formatBytes(totals.addedBytes)}), ${totals.removed} removed (${formatBytes(totals.removedBytes)}), ${totals.modified} modified, ${totals.metadata} metadata only`,
          );
        }
      } finally {
        conn.close();
      }
    });

  program
    .command('find')
    .description('which snapshots hold paths matching a glob ("*.ckpt" at any depth, "reports/**" from the root)')
    .argument('<pattern>', 'glob; without "/" it matches names at any depth')
    .option('--dataset <name>', 'only this dataset')
    .option('--host <name>', 'only this host')
    .option('--since <time>', 'only snapshots at or after this time: 30d, 26h, 2026-11-01 or RFC 3339')
    .option('--limit <n>', 'stop after this many matches (0 = all)', '0')
    .action(async (pattern: string, o, cmd: Command) => {
      const { conn, g } = connect(cmd);
      try {
        const req = { pattern, dataset: o.dataset ?? '', host: o.host ?? '', since: o.since ? parseTimeArg(o.since, '--since') : '', limit: count(o.limit, '--limit') };
        let n = 0;
        for await (const m of conn.stream<FindMatch>('Find', req)) {
          const record = { snapshot: m.snapshot, time: m.time, path: m.path, type: m.type.toLowerCase(), size: Number(m.size), mtime: nsToIso(m.mtimeNs) };
          if (g.json) await emit(JSON.stringify(record));
          else {
            if (n === 0) await emit(`${'SNAPSHOT'.padEnd(8)}  ${'TIME'.padEnd(20)}  ${'SIZE'.padStart(10)}  ${'MTIME'.padEnd(20)}  PATH`);
            const size = m.type === 'FILE' ? formatBytes(record.size) : '-';
            await emit(`${shortId(m.snapshot)}  ${localTime(m.time).padEnd(20)}  ${size.padStart(10)}  ${localTime(record.mtime).padEnd(20)}  ${m.type === 'DIR' ? `${m.path}/` : m.path}`);
          }
          n++;
        }
        if (n === 0 && !g.json) await emit('no matches');
      } finally {
        conn.close();
      }
    });

  program
    .command('stats')
    .description('repository size: logical and stored bytes, dedup and compression ratios, chunks, packs')
    .option('--dataset <name>', 'count snapshots and logical bytes of this dataset only')
    .action(async (o, cmd: Command) => {
      const { conn, g } = connect(cmd);
      try {
        const s = await conn.unary<StatsReply>('Stats', { dataset: o.dataset ?? '' });
        const record = {
          ...(o.dataset ? { dataset: o.dataset } : {}),
          snapshots: Number(s.snapshots),
          logicalBytes: Number(s.logicalBytes),
          storedBytes: Number(s.storedBytes),
          rawBytes: Number(s.rawBytes),
          chunks: Number(s.chunks),
          packs: Number(s.packs),
          dedupRatio: s.dedupRatio,
          compressionRatio: s.compressionRatio,
        };
        if (g.json) {
          await emit(JSON.stringify(record));
          return;
        }
        const rows: Array<[string, string]> = [
          [o.dataset ? `snapshots of ${o.dataset}` : 'snapshots', String(record.snapshots)],
          [o.dataset ? `logical bytes of ${o.dataset}` : 'logical bytes', formatBytes(record.logicalBytes)],
          ['unique bytes (raw)', formatBytes(record.rawBytes)],
          ['stored bytes', formatBytes(record.storedBytes)],
          ['chunks', String(record.chunks)],
          ['packs', String(record.packs)],
          ['dedup ratio', `${record.dedupRatio.toFixed(2)}x`],
          ['compression ratio', `${record.compressionRatio.toFixed(2)}x`],
        ];
        const width = Math.max(...rows.map(([k]) => k.length));
        for (const [k, v] of rows) await emit(`${k.padEnd(width)}  ${v}`);
      } finally {
        conn.close();
      }
    });

  program
    .command('status')
    .description('freshness of every dataset and host; exits 1 when any is stale or never backed up')
    .option('--stale-after <duration>', 'a pair whose last snapshot is older than this is STALE', DEFAULT_STALE_AFTER)
    .option('--now <time>', 'judge freshness as of this RFC 3339 time instead of now')
    .option('--dataset <name>', 'only this dataset')
    .option('--host <name>', 'only this host')
    .action(async (o, cmd: Command) => {
      parseDurationMs(o.staleAfter);
      const now = o.now ? parseTimeArg(o.now, '--now') : '';
      const { conn, g } = connect(cmd);
      try {
        const reply = await conn.unary<StatusReply>('Status', { staleAfter: o.staleAfter, now });
        const rows = reply.rows.filter((r) => (!o.dataset || r.dataset === o.dataset) && (!o.host || r.host === o.host));
        const nowMs = now ? Date.parse(now) : Date.now();
        if (g.json) {
          for (const r of rows) {
            await emit(JSON.stringify({ ...r, state: statusState(r), failing: failing(r), bytes: Number(r.bytes), files: Number(r.files), unreadable: Number(r.unreadable) }));
          }
        } else if (rows.length === 0) {
          await emit('no snapshots or heartbeats');
        } else {
          const lines = rows.map((r) => [
            r.dataset,
            r.host,
            r.lastSnapshot ? shortId(r.lastSnapshot) : 'never',
            r.lastTime ? localTime(r.lastTime) : '-',
            r.lastTime ? relativeTime(r.lastTime, nowMs) : '-',
            r.lastSnapshot ? formatBytes(Number(r.bytes)) : '-',
            r.lastSnapshot ? r.files : '-',
            statusState(r),
            statusProblem(r, nowMs),
          ]);
          await emit(table(['DATASET', 'HOST', 'LAST', 'TIME', 'AGE', 'SIZE', 'FILES', 'STATE', 'ERROR'], lines));
        }
        const bad = rows.filter((r) => r.stale);
        if (bad.length > 0) {
          process.stderr.write(`cairn: ${bad.length} of ${rows.length} dataset/host pairs stale (older than ${o.staleAfter}) or never backed up: ${bad.map((r) => `${r.dataset}@${r.host}`).join(', ')}\n`);
          process.exitCode = EXIT.ERROR;
        }
        // A pair whose runs fail while its last snapshot is still fresh is the alarm to raise
        // now, not when the snapshot ages past --stale-after.
        const failingNow = rows.filter((r) => !r.stale && failing(r));
        if (failingNow.length > 0) {
          process.stderr.write(`cairn: ${failingNow.length} of ${rows.length} dataset/host pairs failing: ${failingNow.map((r) => `${r.dataset}@${r.host}`).join(', ')}\n`);
          process.exitCode = EXIT.ERROR;
        }
      } finally {
        conn.close();
      }
    });
}
