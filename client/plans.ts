import { promises as fs } from 'node:fs';
import path from 'node:path';
import { shortId } from '../common/hash.js';
import { formatBytes } from '../common/units.js';
import type { DryRunResult } from './backup.js';
import { out } from './cli-common.js';
import { localTime } from './format.js';
import type { RestoreStats } from './restorer.js';
import { describeLargest } from './scan.js';

/** What a restore will do, decided file by file before anything is written. */
export interface RestorePlan {
  filesToWrite: number;
  bytesToWrite: number;
  /** Of filesToWrite, those that replace a local file (--overwrite always or if-newer). */
  filesReplaced: number;
  /** Of filesToWrite, those made as hard links to another restored path: they take no space. */
  filesLinked: number;
  /** Local files that differ from the snapshot and stay as they are. */
  filesKeptLocal: number;
  /** Local files that already hold the snapshot's bytes: not fetched again. */
  filesIdentical: number;
  /**
   * Taken from the snapshot's totals (a restore into an empty directory, which the tree need
   * not be walked for): they count a hard-linked file once per path and know no links.
   */
  estimated: boolean;
  /** The existing directory the target is, or will be created in, and its free space. */
  filesystem: string;
  freeBytes: number;
}

/** Free space where `target` will be written: at the target, or at its nearest existing ancestor. */
export async function freeSpace(target: string): Promise<{ dir: string; bytes: number }> {
  let dir = path.resolve(target);
  for (;;) {
    try {
      const st = await fs.statfs(dir);
      return { dir, bytes: st.bavail * st.bsize };
    } catch (err) {
      const parent = path.dirname(dir);
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || parent === dir) throw err;
      dir = parent;
    }
  }
}

export function restorePlan(dryRun: RestoreStats, free: { dir: string; bytes: number }, estimated = false): RestorePlan {
  return {
    filesToWrite: dryRun.files - dryRun.filesSkippedSame,
    bytesToWrite: dryRun.bytes,
    filesReplaced: dryRun.filesOverwritten,
    filesLinked: dryRun.hardLinks,
    filesKeptLocal: dryRun.filesKeptLocal,
    filesIdentical: dryRun.filesSkippedSame,
    estimated,
    filesystem: free.dir,
    freeBytes: free.bytes,
  };
}

export function describePlan(p: RestorePlan): string {
  const replaced = p.filesReplaced > 0 ? `, replacing ${p.filesReplaced} local files` : '';
  const linked = p.filesLinked > 0 ? ` (${p.filesLinked} of them hard links to another)` : '';
  const atMost = p.estimated ? ' at most (the snapshot\'s totals: a hard-linked file counts once per path)' : '';
  const fits = p.bytesToWrite <= p.freeBytes ? '' : ' (NOT ENOUGH SPACE: the restore would be refused)';
  return [
    `  write      ${p.filesToWrite} files${linked}, ${formatBytes(p.bytesToWrite)}${atMost}${replaced}`,
    `  keep       ${p.filesKeptLocal} local files that are newer or differ${p.filesKeptLocal > 0 ? ' (--overwrite if-newer or always replaces them)' : ''}`,
    `  identical  ${p.filesIdentical} files already hold the snapshot's bytes (not fetched)`,
    `  space      ${formatBytes(p.freeBytes)} free in ${p.filesystem}${fits}`,
  ].join('\n');
}

export function printDryRun(r: DryRunResult, json: boolean): void {
  const s = r.stats;
  const changed = { files: s.files - s.filesReused, bytes: s.bytesRead };
  if (json) {
    out(
      JSON.stringify({
        dryRun: true,
        dataset: r.dataset,
        host: r.host,
        parent: r.parent?.id ?? null,
        read: changed,
        unchanged: { files: s.filesReused, bytes: s.bytesReused },
        skipped: s.skipped,
        errors: s.errors,
        upload: r.upload,
        scan: r.scan,
        problems: r.problems,
        seconds: r.seconds,
      }),
    );
    return;
  }
  for (const p of r.problems) process.stderr.write(`warning: ${p.path}: ${p.message}\n`);
  const parent = r.parent ? `${shortId(r.parent.id)} from ${localTime(r.parent.time)}` : `none: the first snapshot of ${r.dataset}@${r.host} reads every file`;
  out(`dry run: snapshot of ${r.dataset}@${r.host} not recorded, nothing uploaded`);
  out(`  parent     ${parent}`);
  out(`  read       ${changed.files} new or changed files, ${formatBytes(changed.bytes)} (chunked and hashed)`);
  out(`  unchanged  ${s.filesReused} files, ${formatBytes(s.bytesReused)} (same size, mtime, ctime and inode as the parent: not read)`);
  out(`  excluded   ${s.skipped} files or directories${s.errors > 0 ? `; ${s.errors} unreadable` : ''}`);
  out(`  upload     ${r.upload.chunks} chunks, ${formatBytes(r.upload.bytes)} new to the server before compression; ${r.upload.trees} trees, ${formatBytes(r.upload.treeBytes)}`);
  if (r.scan.largest.length > 0) out(`  largest    ${describeLargest(r.scan.largest)}`);
}
