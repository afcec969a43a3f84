import { Command, CommanderError, Option } from 'commander';
import os from 'node:os';
import { codeName, toCairnError } from '../common/errors.js';
import type { HelloReply, Snapshot } from '../common/messages.js';
import { formatBytes, parseSize } from '../common/units.js';
import { CLIENT_VERSION } from '../common/version.js';
import { runBackup } from './backup.js';
import { collect, connect, EXIT, out, snapshotRow } from './cli-common.js';
import { ExcludeMatcher } from './excludes.js';
import { localTime, table } from './format.js';
import { Progress } from './progress.js';
import { registerAdminCommands } from './admin-commands.js';
import { registerQueryCommands } from './query-commands.js';
import { parseOverwrite, Restorer } from './restorer.js';

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
    .addOption(new Option('--channels <n>', 'parallel connections to the server').default('2'))
    .option('--json', 'machine-readable output (one JSON object per line for lists)', false)
    .exitOverride()
    .showHelpAfterError();

  program
    .command('snapshot')
    .description('back up directories as a new snapshot of a dataset')
    .argument('<dir...>', 'directories to back up')
    .requiredOption('--dataset <name>', 'dataset name')
    .option('--host <name>', 'host name recorded in the snapshot', os.hostname().split('.')[0] || 'localhost')
    .option('--tag <tag>', 'tag the snapshot (repeatable)', collect, [])
    .option('--time <rfc3339>', 'record this snapshot time instead of now')
    .option('--exclude <pattern>', 'gitignore-style exclude pattern (repeatable)', collect, [])
    .option('--exclude-file <file>', 'read exclude patterns from a file (repeatable)', collect, [])
    .option('--exclude-larger-than <size>', 'skip files larger than this, e.g. 2GiB')
    .option('--no-default-excludes', 'do not skip .git/, node_modules/, __pycache__/, *.pyc, .venv/, venv/, .DS_Store, .cache/ and CACHEDIR.TAG dirs')
    .action(async (dirs: string[], o, cmd: Command) => {
      const { conn, g } = connect(cmd);
      const excludes = await ExcludeMatcher.create({
        excludes: o.exclude,
        excludeFiles: o.excludeFile,
        defaultExcludes: o.defaultExcludes,
        excludeCaches: o.defaultExcludes,
        excludeLargerThan: o.excludeLargerThan ? parseSize(o.excludeLargerThan) : undefined,
      });
      const progress = new Progress();
      const abort = new AbortController();
      const onSignal = () => abort.abort();
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        const r = await runBackup(conn, {
          paths: dirs,
          dataset: o.dataset,
          host: o.host,
          tags: o.tag,
          time: o.time,
          excludes,
          signal: abort.signal,
          onProgress: (s) => progress.update(s.files, s.bytesRead, 'snapshot'),
        });
        progress.done();
        for (const p of r.problems) process.stderr.write(`warning: ${p.path}: ${p.message}\n`);
        if (g.json) {
          out(JSON.stringify({ snapshot: r.snapshot, stats: r.stats, problems: r.problems, uploadedBytes: r.uploadedBytes, seconds: r.seconds, peakRssBytes: peakRss() }));
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
    .option('--dry-run', 'print what would be written, write nothing', false)
    .action(async (target: string, o, cmd: Command) => {
      const { conn, g } = connect(cmd);
      try {
        const overwrite = parseOverwrite(o.overwrite);
        const hello = await conn.unary<HelloReply>('Hello', {});
        const snapshot = await conn.unary<Snapshot>('GetSnapshot', { ref: o.snapshot, dataset: o.dataset ?? '', host: o.host ?? '', tag: '' });
        const progress = new Progress();
        const started = Date.now();
        const restorer = new Restorer(conn, hello, { target, overwrite, includes: o.include, dryRun: o.dryRun, onProgress: (s) => progress.update(s.files, s.bytes, 'restore') });
        const stats = await restorer.restore(snapshot);
        progress.done();
        const seconds = (Date.now() - started) / 1000;
        if (g.json) {
          out(JSON.stringify({ snapshot: snapshot.id, target, stats, conflicts: restorer.conflicts, seconds, dryRun: o.dryRun, peakRssBytes: peakRss() }));
        } else {
          for (const c of restorer.conflicts) process.stderr.write(`kept local: ${c.path}: ${c.reason} (use --overwrite to replace)\n`);
          out(`${o.dryRun ? 'would restore' : 'restored'} snapshot ${snapshot.id.slice(0, 8)} (${snapshot.dataset}@${snapshot.host}, ${localTime(snapshot.time)}) to ${target}`);
          out(`  files ${stats.files} (${stats.filesSkippedSame} already present), dirs ${stats.dirs}, symlinks ${stats.symlinks}, ${formatBytes(stats.bytes)} written, ${stats.filesKeptLocal} local files kept`);
          out(`  ${seconds.toFixed(2)}s, ${formatBytes(stats.bytes / Math.max(seconds, 0.001))}/s`);
        }
        if (restorer.conflicts.length > 0) process.exitCode = EXIT.PARTIAL;
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
      const { conn, g } = connect(cmd);
      try {
        const rows: string[][] = [];
        for await (const s of conn.stream<Snapshot>('ListSnapshots', { dataset: o.dataset ?? '', host: o.host ?? '', tag: o.tag ?? '', since: o.since ?? '', until: o.until ?? '', limit: Number(o.limit) })) {
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
  return program;
}

export async function main(argv: string[]): Promise<number> {
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

main(process.argv).then((code) => {
  process.exitCode = code;
});
