import { Command, CommanderError, Option } from 'commander';
import { parseTimeArg } from '../common/durations.js';
import { codeName, resourceExhausted, toCairnError } from '../common/errors.js';
import type { HelloReply, Snapshot } from '../common/messages.js';
import { formatBytes, parseSize } from '../common/units.js';
import { CLIENT_VERSION } from '../common/version.js';
import type { ArchiveStats } from './archiver.js';
import { defaultHost, dryRunBackup, parseShare, runBackup, type BackupOptions } from './backup.js';
import { defaultCacheDir } from './cache-dir.js';
import { collect, connect, count, EXIT, out, snapshotRow } from './cli-common.js';
import { ExcludeMatcher } from './excludes.js';
import { localTime, table } from './format.js';
import { Progress } from './progress.js';
import { registerAdminCommands } from './admin-commands.js';
import { registerAgentCommand } from './agent.js';
import { registerQueryCommands } from './query-commands.js';
import { describePlan, freeSpace, printDryRun, restorePlan } from './plans.js';
import { parseOverwrite, Restorer, type RestoreStats } from './restorer.js';
import { MAX_TRACKED_LINKS } from './hard-links.js';
import { promises as fs } from 'node:fs';

async function isEmptyOrMissing(dir: string): Promise<boolean> {
  try {
    return (await fs.readdir(dir)).length === 0;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw err;
  }
}

/** What restoring a whole snapshot into an empty directory writes, from its summary. */
function statsOf(s: Snapshot): RestoreStats {
  const n = (v: string) => Number(v);
  return { files: n(s.summary.files), dirs: n(s.summary.dirs), symlinks: n(s.summary.symlinks), bytes: n(s.summary.bytes), filesSkippedSame: 0, filesKeptLocal: 0, filesOverwritten: 0, hardLinks: 0, hardLinksAsCopies: 0 };
}

/** Peak resident memory of this process, reported so memory bounds can be checked from outside. */
function peakRss(): number {
  return process.resourceUsage().maxRSS * 1024;
}

export function buildProgram(): Command {
  const program = new Command('cairn')
    .description('Cairn backup client: deduplicated, compressed snapshots of data directories')
    .version(CLIENT_VERSION)
    .addOption(new Option('--server <host:port>', 'cairn-server address').env('CAIRN_SERVER').default('127.0.0.1:7420'))
    .addOption(new Option('--token <token>', 'bearer token').env('CAIRN_TOKEN'))
    .addOption(new Option('--tls', 'connect with TLS, trusting the system CAs').env('CAIRN_TLS'))
    .addOption(new Option('--tls-ca <file>', 'connect with TLS, trusting this PEM CA (implies --tls)').env('CAIRN_TLS_CA'))
    .addOption(new Option('--tls-cert <file>', 'client certificate (PEM) for servers that require one').env('CAIRN_TLS_CERT'))
    .addOption(new Option('--tls-key <file>', 'private key (PEM) of --tls-cert').env('CAIRN_TLS_KEY'))
    .addOption(new Option('--tls-server-name <name>', "name the server's certificate carries, when --server uses another (e.g. an IP)"))
    .addOption(new Option('--channels <n>', 'parallel connections to the server').default('2'))
    .option('--json', 'machine-readable output (one JSON object per line for lists)', false)
    .exitOverride()
    .showHelpAfterError();

  program
    .command('snapshot')
    .description('back up directories as a new snapshot of a dataset')
    .argument('<dir...>', 'directories to back up')
    .requiredOption('--dataset <name>', 'dataset name')
    .option('--host <name>', 'host name recorded in the snapshot', defaultHost())
    .option('--tag <tag>', 'tag the snapshot (repeatable)', collect, [])
    .option('--time <rfc3339>', 'record this snapshot time instead of now')
    .option('--exclude <pattern>', 'gitignore-style exclude pattern (repeatable)', collect, [])
    .option('--exclude-file <file>', 'read exclude patterns from a file (repeatable)', collect, [])
    .option('--include <pattern>', 'gitignore-style pattern of files to keep (repeatable); every other file is left out', collect, [])
    .option('--exclude-larger-than <size>', 'skip files larger than this, e.g. 2GiB')
    .option('--no-default-excludes', 'do not skip .git/, node_modules/, __pycache__/, *.pyc, .venv/, venv/, .DS_Store, .cache/ and CACHEDIR.TAG dirs')
    .option('--max-size <size>', 'refuse, before uploading anything, when the directories hold more than this, e.g. 50GiB')
    .option('--max-shrink <percent>', 'refuse when the dataset lost more than this share of its files or bytes since its last snapshot', '50%')
    .option('--allow-shrink', 'record the snapshot even if a directory is empty or shrank past --max-shrink', false)
    .option('--dry-run', 'show what would be read, skipped and uploaded; upload and record nothing', false)
    .option('--cache-dir <dir>', "keep each dataset's latest trees here, so the next snapshot reads its parent locally (default: $CAIRN_CACHE_DIR, else $XDG_CACHE_HOME/cairn or ~/.cache/cairn)")
    .option('--no-cache', 'neither read nor write the local tree cache')
    .action(async (dirs: string[], o, cmd: Command) => {
      const { conn, g } = connect(cmd);
      const opts: BackupOptions = {
        paths: dirs,
        dataset: o.dataset,
        host: o.host,
        tags: o.tag,
        time: o.time === undefined ? undefined : parseTimeArg(o.time, '--time'),
        excludes: await ExcludeMatcher.create({
          excludes: o.exclude,
          includes: o.include,
          excludeFiles: o.excludeFile,
          defaultExcludes: o.defaultExcludes,
          excludeCaches: o.defaultExcludes,
          excludeLargerThan: o.excludeLargerThan ? parseSize(o.excludeLargerThan) : undefined,
        }),
        maxSize: o.maxSize ? parseSize(o.maxSize) : undefined,
        maxShrink: parseShare(o.maxShrink, '--max-shrink'),
        allowShrink: o.allowShrink,
        cacheDir: o.cache ? (o.cacheDir ?? defaultCacheDir()) : undefined,
      };
      const progress = new Progress();
      const abort = new AbortController();
      const onSignal = () => abort.abort();
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        const run = { ...opts, signal: abort.signal, onProgress: (s: ArchiveStats) => progress.update(s.files, s.bytesRead, o.dryRun ? 'dry run' : 'snapshot') };
        if (o.dryRun) {
          const r = await dryRunBackup(conn, run);
          progress.done();
          printDryRun(r, g.json);
          return;
        }
        const r = await runBackup(conn, run);
        progress.done();
        for (const p of r.problems) process.stderr.write(`warning: ${p.path}: ${p.message}\n`);
        if (g.json) {
          out(JSON.stringify({ snapshot: r.snapshot, stats: r.stats, problems: r.problems, uploadedBytes: r.uploadedBytes, treeCache: r.treeCache, seconds: r.seconds, peakRssBytes: peakRss() }));
        } else {
          const s = r.stats;
          out(`snapshot ${r.snapshot.id.slice(0, 8)} saved (${r.snapshot.dataset}@${r.snapshot.host})`);
          out(`  files ${s.files} (${s.filesReused} unchanged, not read), dirs ${s.dirs}, symlinks ${s.symlinks}, skipped ${s.skipped}, errors ${s.errors}`);
          out(`  bytes ${formatBytes(s.bytes)}, read ${formatBytes(s.bytesRead)}, new stored ${formatBytes(Number(r.snapshot.summary.newBytes))} in ${r.snapshot.summary.newChunks} chunks`);
          out(`  ${r.seconds.toFixed(2)}s, ${formatBytes(s.bytesRead / Math.max(r.seconds, 0.001))}/s read`);
        }
        if (r.problems.length > 0) process.exitCode = EXIT.PARTIAL;
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        conn.close();
      }
    });

  program
    .command('restore')
    .description('restore a snapshot into a directory')
    .argument('<target>', 'directory to restore into (created if missing)')
    .option('--snapshot <ref>', 'snapshot id, unique id prefix, or latest', 'latest')
    .option('--dataset <name>', 'dataset, for latest')
    .option('--host <name>', 'host, for latest')
    .option('--include <glob>', 'restore only paths matching (repeatable), e.g. reports/**', collect, [])
    .option('--overwrite <mode>', 'existing files that differ: never, if-newer, always', 'never')
    .option('--confine-symlinks', 'skip symlinks whose target is absolute or leaves the target directory (reported; exit 3)', false)
    .option('--dry-run', 'print the plan (files to write, local files kept, files already identical) and write nothing', false)
    .action(async (target: string, o, cmd: Command) => {
      const { conn, g } = connect(cmd);
      try {
        const overwrite = parseOverwrite(o.overwrite);
        // With --overwrite always, what is still kept is a directory that only a person may empty.
        const overwriteHint = overwrite === 'always' ? '' : ' (use --overwrite to replace)';
        const hello = await conn.unary<HelloReply>('Hello', {});
        const snapshot = await conn.unary<Snapshot>('GetSnapshot', { ref: o.snapshot, dataset: o.dataset ?? '', host: o.host ?? '', tag: '' });
        // The plan is a dry run of this very restore, so it decides each file exactly as the restore will.
        // Into an empty target nothing can conflict: the snapshot's own totals are the plan, and
        // the tree is walked once, not twice.
        const planner = new Restorer(conn, hello, { target, overwrite, includes: o.include, dryRun: true, confineSymlinks: o.confineSymlinks });
        const fresh = !o.dryRun && o.include.length === 0 && (await isEmptyOrMissing(target));
        const free = await freeSpace(target);
        let plan = fresh ? restorePlan(statsOf(snapshot), free, true) : restorePlan(await planner.restore(snapshot), free);
        // The summary counts a hard-linked file once per path: walked, it may fit after all.
        if (fresh && plan.bytesToWrite > plan.freeBytes) plan = restorePlan(await planner.restore(snapshot), free);
        // Only a restore with --include has a planner that walked the tree (fresh needs none).
        const unmatched = fresh ? [] : planner.unmatchedIncludes();
        for (const g of unmatched) process.stderr.write(`warning: --include ${g} matches nothing in snapshot ${snapshot.id.slice(0, 8)} (patterns match paths from the snapshot's root, such as reports/** or runs/run-1/weights.bin)\n`);
        if (o.dryRun) {
          if (g.json) out(JSON.stringify({ snapshot: snapshot.id, target, dryRun: true, plan, stats: planner.stats, conflicts: planner.conflicts, unmatchedIncludes: unmatched }));
          else {
            for (const c of planner.conflicts) process.stderr.write(`would keep local: ${c.path}: ${c.reason}${overwriteHint}\n`);
            out(`restore of snapshot ${snapshot.id.slice(0, 8)} (${snapshot.dataset}@${snapshot.host}, ${localTime(snapshot.time)}) to ${target} would:`);
            out(describePlan(plan));
          }
          return;
        }
        if (plan.bytesToWrite > plan.freeBytes) {
          throw resourceExhausted(
            `restore needs ${formatBytes(plan.bytesToWrite)} for ${plan.filesToWrite} files in ${plan.filesystem} but only ${formatBytes(plan.freeBytes)} is free there; nothing was written. Free some space, restore elsewhere, or restore part of the snapshot with --include.`,
          );
        }
        // A fresh target gets everything: the plan is worth a line when local files are at stake, or someone is watching.
        if (process.stderr.isTTY || plan.filesKeptLocal + plan.filesIdentical + plan.filesReplaced > 0) process.stderr.write(`plan:\n${describePlan(plan)}\n`);
        const progress = new Progress();
        const started = Date.now();
        const restorer = new Restorer(conn, hello, { target, overwrite, includes: o.include, dryRun: false, confineSymlinks: o.confineSymlinks, onProgress: (s) => progress.update(s.files, s.bytes, 'restore') });
        const stats = await restorer.restore(snapshot);
        progress.done();
        const seconds = (Date.now() - started) / 1000;
        if (g.json) {
          out(JSON.stringify({ snapshot: snapshot.id, target, plan, stats, conflicts: restorer.conflicts, unmatchedIncludes: unmatched, seconds, dryRun: false, peakRssBytes: peakRss() }));
        } else {
          for (const c of restorer.conflicts) process.stderr.write(`kept local: ${c.path}: ${c.reason}${overwriteHint}\n`);
          out(`restored snapshot ${snapshot.id.slice(0, 8)} (${snapshot.dataset}@${snapshot.host}, ${localTime(snapshot.time)}) to ${target}`);
          out(`  files ${stats.files} (${stats.filesSkippedSame} already present), dirs ${stats.dirs}, symlinks ${stats.symlinks}, ${formatBytes(stats.bytes)} written, ${stats.filesKeptLocal} local files kept`);
          if (stats.hardLinks + stats.hardLinksAsCopies > 0) out(`  hard links ${stats.hardLinks} made${stats.hardLinksAsCopies > 0 ? `, ${stats.hardLinksAsCopies} paths written as separate files (their first path holds a local file that differs or has other names, the file system refused the link, or past ${MAX_TRACKED_LINKS} hard-linked paths)` : ''}`);
          out(`  ${seconds.toFixed(2)}s, ${formatBytes(stats.bytes / Math.max(seconds, 0.001))}/s`);
        }
        for (const r of restorer.refused) process.stderr.write(`refused: ${r.path}: ${r.reason}\n`);
        if (restorer.conflicts.length + restorer.refused.length + unmatched.length > 0) process.exitCode = EXIT.PARTIAL;
      } finally {
        conn.close();
      }
    });

  program
    .command('history')
    .alias('snapshots')
    .description('list snapshots, newest first')
    .option('--dataset <name>', 'only this dataset')
    .option('--host <name>', 'only this host')
    .option('--tag <tag>', 'only snapshots with this tag')
    .option('--since <time>', 'only snapshots at or after this time (RFC 3339)')
    .option('--until <time>', 'only snapshots before this time (RFC 3339)')
    .option('--limit <n>', 'at most this many', '0')
    .action(async (o, cmd: Command) => {
      const limit = count(o.limit, '--limit');
      const { conn, g } = connect(cmd);
      try {
        const rows: string[][] = [];
        for await (const s of conn.stream<Snapshot>('ListSnapshots', { dataset: o.dataset ?? '', host: o.host ?? '', tag: o.tag ?? '', since: o.since ?? '', until: o.until ?? '', limit })) {
          if (g.json) out(JSON.stringify(s));
          else rows.push(snapshotRow(s));
        }
        if (!g.json) out(rows.length === 0 ? 'no snapshots' : table(['ID', 'TIME', 'AGE', 'DATASET', 'HOST', 'FILES', 'SIZE', 'NEW', 'TAGS'], rows));
      } finally {
        conn.close();
      }
    });

  registerQueryCommands(program);
  registerAdminCommands(program);
  registerAgentCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  // Snapshot and restore issue many small file-system calls at once; libuv's default of 4
  // threads serialises them. Read when the pool first starts, which has not happened yet.
  process.env.UV_THREADPOOL_SIZE ??= '16';
  // `cairn history | head` closes our stdout early: that is the reader's choice, not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(EXIT.OK);
    throw err;
  });
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    }
    const e = toCairnError(err);
    const json = process.argv.includes('--json');
    if (json) process.stdout.write(JSON.stringify({ error: { code: codeName(e.code), message: e.message } }) + '\n');
    process.stderr.write(`cairn: ${codeName(e.code)}: ${e.message}\n`);
    return EXIT.ERROR;
  }
}

let finished = false;
// The event loop ran dry while a command still awaited something (a bug): Node would exit 0
// with the work undone, and a script would take a half-done restore for a good one.
process.on('beforeExit', () => {
  if (finished) return;
  finished = true;
  process.stderr.write('cairn: INTERNAL: stopped with the command unfinished (nothing was left to wait for); this is a bug\n');
  process.exitCode = EXIT.ERROR;
});
main(process.argv).then((code) => {
  finished = true;
  process.exitCode = code;
});
