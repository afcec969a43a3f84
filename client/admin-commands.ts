import type { Command } from 'commander';
import { emptyPolicy, type CheckProblem, type CheckReply, type ForgetDecision, type ForgetReply, type Policy, type PruneReply } from '../common/admin-messages.js';
import { invalidArgument } from '../common/errors.js';
import { shortId } from '../common/hash.js';
import type { Snapshot } from '../common/messages.js';
import { formatBytes } from '../common/units.js';
import { collect, connect, count, EXIT, out } from './cli-common.js';
import { NO_DEADLINE } from './connection.js';
import { localTime, table } from './format.js';

const COUNT_FLAGS = [
  ['last', 'keepLast', 'keep the last n snapshots'],
  ['hourly', 'keepHourly', 'keep the newest snapshot of each of the last n hours that have one'],
  ['daily', 'keepDaily', 'keep the newest snapshot of each of the last n days that have one'],
  ['weekly', 'keepWeekly', 'keep the newest snapshot of each of the last n ISO weeks that have one'],
  ['monthly', 'keepMonthly', 'keep the newest snapshot of each of the last n months that have one'],
  ['yearly', 'keepYearly', 'keep the newest snapshot of each of the last n years that have one'],
] as const;

const WITHIN_FLAGS = [
  ['within', 'keepWithin', 'keep every snapshot within this duration of the newest, e.g. 30d, 1y6m'],
  ['within-hourly', 'keepWithinHourly', 'keep hourly snapshots within this duration of the newest'],
  ['within-daily', 'keepWithinDaily', 'keep daily snapshots within this duration of the newest'],
  ['within-weekly', 'keepWithinWeekly', 'keep weekly snapshots within this duration of the newest'],
  ['within-monthly', 'keepWithinMonthly', 'keep monthly snapshots within this duration of the newest'],
  ['within-yearly', 'keepWithinYearly', 'keep yearly snapshots within this duration of the newest'],
] as const;

function addPolicyOptions(cmd: Command): Command {
  for (const [flag, , help] of COUNT_FLAGS) cmd.option(`--keep-${flag} <n>`, help);
  for (const [flag, , help] of WITHIN_FLAGS) cmd.option(`--keep-${flag} <duration>`, `${help} (restic syntax: y, m = months, d, h)`);
  return cmd.option('--keep-tag <tag>', 'keep snapshots carrying this tag, or every tag of a list such as daily,important (repeatable)', collect, []);
}

function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
}

/** The policy named by --keep-* options, and whether any was given. */
function policyFromOptions(o: Record<string, unknown>, dataset: string): { policy: Policy; given: boolean } {
  const policy: Policy = { ...emptyPolicy(dataset), keepTags: (o.keepTag as string[]) ?? [] };
  let given = policy.keepTags.length > 0;
  for (const [flag, field] of COUNT_FLAGS) {
    const v = o[camel(`keep-${flag}`)];
    if (v === undefined) continue;
    policy[field] = count(String(v), `--keep-${flag}`);
    given = true;
  }
  for (const [flag, field] of WITHIN_FLAGS) {
    const v = o[camel(`keep-${flag}`)];
    if (v === undefined) continue;
    policy[field] = String(v);
    given = true;
  }
  return { policy, given };
}

/** Human form of a policy, in restic's flag names: "keep-last 3, keep-within 30d". */
function describePolicy(p: Policy): string {
  const parts: string[] = [];
  for (const [flag, field] of COUNT_FLAGS) if (p[field] > 0) parts.push(`keep-${flag} ${p[field]}`);
  for (const [flag, field] of WITHIN_FLAGS) if (p[field]) parts.push(`keep-${flag} ${p[field]}`);
  for (const t of p.keepTags) parts.push(`keep-tag ${t}`);
  return parts.length > 0 ? parts.join(', ') : 'none (nothing is removed)';
}

/** A share from "5%" (or "unlimited"); proto3 cannot tell 0 from unset, so 0% goes out as the smallest positive share. */
function parseMaxUnused(text: string): number {
  if (text.trim() === 'unlimited') return 1;
  const m = /^(\d+(?:\.\d+)?)%$/.exec(text.trim());
  const pct = Number(m?.[1]);
  if (!m || pct > 100) throw invalidArgument(`--max-unused ${JSON.stringify(text)} must be a percentage from 0% to 100% (e.g. 5%) or "unlimited"`);
  return pct === 0 ? Number.MIN_VALUE : pct / 100;
}

function parseSubset(text: string): { readDataSubset: number; readDataPart: string } {
  const t = text.trim();
  if (/^\d+\/\d+$/.test(t)) return { readDataSubset: 0, readDataPart: t };
  const m = /^(\d+(?:\.\d+)?)%$/.exec(t);
  const pct = Number(m?.[1]);
  if (!m || !(pct > 0 && pct <= 100)) throw invalidArgument(`--read-data-subset ${JSON.stringify(text)} must be a percentage above 0% and at most 100% (e.g. 10%) or n/m (e.g. 1/5)`);
  return { readDataSubset: pct / 100, readDataPart: '' };
}

/** --json records with a fixed field order (the wire decoder puts repeated fields first). */
function policyRecord(p: Policy): Policy {
  return {
    dataset: p.dataset,
    keepLast: p.keepLast,
    keepHourly: p.keepHourly,
    keepDaily: p.keepDaily,
    keepWeekly: p.keepWeekly,
    keepMonthly: p.keepMonthly,
    keepYearly: p.keepYearly,
    keepWithin: p.keepWithin,
    keepWithinHourly: p.keepWithinHourly,
    keepWithinDaily: p.keepWithinDaily,
    keepWithinWeekly: p.keepWithinWeekly,
    keepWithinMonthly: p.keepWithinMonthly,
    keepWithinYearly: p.keepWithinYearly,
    keepTags: p.keepTags,
  };
}

function problemRecord(p: CheckProblem): CheckProblem {
  return { kind: p.kind, message: p.message, pack: p.pack, chunk: p.chunk, snapshots: p.snapshots, files: p.files };
}

function decisionRecord(d: ForgetDecision) {
  const s = d.snapshot;
  return { id: s.id, time: s.time, dataset: s.dataset, host: s.host, tags: s.tags, protected: s.protected, keep: d.keep, reasons: d.reasons };
}

function pruneRecord(r: PruneReply) {
  return {
    dryRun: r.dryRun,
    packsDeleted: Number(r.packsDeleted),
    packsRewritten: Number(r.packsRewritten),
    chunksRemoved: Number(r.chunksRemoved),
    bytesFreed: Number(r.bytesFreed),
    bytesUnusedKept: Number(r.bytesUnusedKept),
    requests: JSON.parse(r.requests || '{}') as Record<string, number>,
  };
}

function printPrune(r: ReturnType<typeof pruneRecord>): void {
  const requests = Object.entries(r.requests)
    .filter(([k, v]) => v > 0 && !k.startsWith('bytes'))
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  if (r.dryRun) out('dry run: nothing was deleted; prune would do this:');
  out(
    table(
      ['PRUNE', ''],
      [
        ['packs deleted', String(r.packsDeleted)],
        ['packs rewritten', String(r.packsRewritten)],
        ['blobs removed', String(r.chunksRemoved)],
        ['space freed', formatBytes(r.bytesFreed)],
        ['unused kept', formatBytes(r.bytesUnusedKept)],
        ['store requests', requests || 'none'],
      ],
    ),
  );
}

/** A server older than the counts (ForgetReply fields 3-5) sends them as 0: its list is then whole. */
function decisionCounts(reply: ForgetReply): { kept: number; removed: number; omitted: number } {
  const [kept, removed, omitted] = [Number(reply.kept), Number(reply.removed), Number(reply.decisionsOmitted)];
  if (kept + removed > 0 || reply.decisions.length === 0) return { kept, removed, omitted };
  const listedKept = reply.decisions.filter((d) => d.keep).length;
  return { kept: listedKept, removed: reply.decisions.length - listedKept, omitted: 0 };
}

function printDecisions(reply: ForgetReply, dryRun: boolean): void {
  const groups = new Map<string, ForgetDecision[]>();
  for (const d of reply.decisions) {
    const key = `${d.snapshot.dataset}@${d.snapshot.host}`;
    const group = groups.get(key);
    if (group) group.push(d);
    else groups.set(key, [d]);
  }
  for (const [key, ds] of groups) {
    const kept = ds.filter((d) => d.keep).length;
    out(`${key}: keep ${kept}, remove ${ds.length - kept}`);
    out(table(['ID', 'TIME', 'ACTION', 'REASONS'], ds.map((d) => [shortId(d.snapshot.id), localTime(d.snapshot.time), d.keep ? 'keep' : 'remove', d.reasons.join(', ')])));
    out('');
  }
  const { kept, removed, omitted } = decisionCounts(reply);
  if (omitted > 0) out(`(${omitted} more decisions not listed: the reply lists at most 32 MiB of them)`);
  if (kept + removed === 0) out('no snapshots matched');
  else out(dryRun ? `would remove ${removed} snapshot${removed === 1 ? '' : 's'}, keep ${kept} (dry run: nothing changed)` : `removed ${removed} snapshot${removed === 1 ? '' : 's'}, kept ${kept}`);
}

function printProblems(problems: CheckProblem[], omitted: number, byKind: Record<string, number>): void {
  const total = problems.length + omitted;
  const kinds = Object.entries(byKind).map(([kind, n]) => `${n} ${kind}`);
  out(`${total} problem${total === 1 ? '' : 's'} found${kinds.length > 1 ? ` (${kinds.join(', ')})` : ''}${omitted > 0 ? `; ${problems.length} are listed, the first of each kind among them` : ''}:`);
  out(table(['KIND', 'PACK', 'CHUNK', 'SNAPSHOTS', 'FILES', 'MESSAGE'], problems.map((p) => [p.kind, shortId(p.pack) || '-', shortId(p.chunk) || '-', String(p.snapshots.length), String(p.files.length), p.message])));
  problems.forEach((p, i) => {
    out('');
    out(`problem ${i + 1}: ${p.kind}: ${p.message}`);
    const rows: string[][] = [];
    if (p.pack) rows.push(['pack', p.pack]);
    if (p.chunk) rows.push(['chunk', p.chunk]);
    if (p.snapshots.length > 0) rows.push(['snapshots', p.snapshots.map(shortId).join(' ')]);
    p.files.forEach((f, j) => rows.push([j === 0 ? 'files' : '', f]));
    for (const [k, v] of rows) out(`  ${k.padEnd(10)} ${v}`);
  });
}

/** Retention, garbage collection, verification and protection: the administration commands. */
export function registerAdminCommands(program: Command): void {
  addPolicyOptions(
    program
      .command('forget')
      .description("remove snapshots by a retention policy (restic's forget rules) or by id; data goes at the next prune")
      .argument('[snapshot...]', 'snapshot ids or unique prefixes to forget instead of a policy')
      .option('--dataset <name>', 'only this dataset')
      .option('--host <name>', 'only this host'),
  )
    .option('--dry-run', 'show what would be removed and why each kept snapshot stays; change nothing', false)
    .option('--prune', 'prune right after forgetting', false)
    .option('--max-unused <share>', 'with --prune: unused space tolerated in kept packs, e.g. 5% or unlimited', '5%')
    .action(async (ids: string[], o, cmd: Command) => {
      const { policy, given } = policyFromOptions(o, o.dataset ?? '');
      if (!given && ids.length === 0) throw invalidArgument('name snapshots to forget or give keep options (--keep-last, --keep-daily, --keep-within, ...)');
      const maxUnused = parseMaxUnused(o.maxUnused);
      const { conn, g } = connect(cmd);
      try {
        const reply = await conn.unary<ForgetReply>('Forget', { policy: given ? policy : null, dataset: o.dataset ?? '', host: o.host ?? '', dryRun: o.dryRun, prune: false, snapshotIds: ids }, undefined, NO_DEADLINE);
        const pruned = o.prune ? pruneRecord(await conn.unary<PruneReply>('Prune', { dryRun: o.dryRun, maxUnused }, undefined, NO_DEADLINE)) : null;
        if (g.json) {
          const { kept, removed, omitted } = decisionCounts(reply);
          out(JSON.stringify({ dryRun: o.dryRun, kept, removed, decisionsOmitted: omitted, decisions: reply.decisions.map(decisionRecord), prune: pruned }));
        } else {
          printDecisions(reply, o.dryRun);
          if (pruned) {
            out('');
            printPrune(pruned);
          }
        }
      } finally {
        conn.close();
      }
    });

  program
    .command('prune')
    .description('delete data no snapshot references (safe while backups run); repack partly used packs')
    .option('--dry-run', 'report what would be deleted and rewritten; change nothing', false)
    .option('--max-unused <share>', 'unused space tolerated in kept packs, e.g. 5%, 0% or unlimited', '5%')
    .action(async (o, cmd: Command) => {
      const maxUnused = parseMaxUnused(o.maxUnused);
      const { conn, g } = connect(cmd);
      try {
        const r = pruneRecord(await conn.unary<PruneReply>('Prune', { dryRun: o.dryRun, maxUnused }, undefined, NO_DEADLINE));
        if (g.json) out(JSON.stringify(r));
        else printPrune(r);
      } finally {
        conn.close();
      }
    });

  program
    .command('check')
    .description('verify the repository: snapshot trees and chunk index, and with --read-data every stored blob')
    .option('--read-data', 'read every pack and re-hash every blob', false)
    .option('--read-data-subset <share>', 'read only part of the packs: a random share such as 10%, or n/m for the n-th of m groups')
    .action(async (o, cmd: Command) => {
      const subset = o.readDataSubset ? parseSubset(o.readDataSubset) : { readDataSubset: 0, readDataPart: '' };
      const { conn, g } = connect(cmd);
      try {
        const r = await conn.unary<CheckReply>('Check', { readData: o.readData, ...subset }, undefined, NO_DEADLINE);
        const counts = { snapshotsChecked: Number(r.snapshotsChecked), treesChecked: Number(r.treesChecked), packsChecked: Number(r.packsChecked), packsRead: Number(r.packsRead), blobsRead: Number(r.blobsRead), problemsOmitted: Number(r.problemsOmitted) };
        const problemCounts = Object.fromEntries(r.problemCounts.map((c) => [c.kind, Number(c.count)]));
        if (g.json) {
          out(JSON.stringify({ ok: r.problems.length === 0, ...counts, problemCounts, problems: r.problems.map(problemRecord) }));
        } else {
          out(`checked ${counts.snapshotsChecked} snapshots, ${counts.treesChecked} trees, ${counts.packsChecked} packs; read ${counts.packsRead} packs, ${counts.blobsRead} blobs`);
          if (r.problems.length === 0) out('no problems found');
          else printProblems(r.problems, counts.problemsOmitted, problemCounts);
        }
        if (r.problems.length > 0) process.exitCode = EXIT.ERROR;
      } finally {
        conn.close();
      }
    });

  const policy = program.command('policy').description("a dataset's retention policy, stored on the server and applied (forget, not prune) after each snapshot of it");
  addPolicyOptions(policy.command('set').description('store the retention policy of a dataset').requiredOption('--dataset <name>', 'dataset')).action(async (o, cmd: Command) => {
    const { policy: p, given } = policyFromOptions(o, o.dataset);
    if (!given) throw invalidArgument('name at least one --keep option (policy clear removes a policy)');
    await showPolicy(cmd, 'SetPolicy', { policy: p });
  });
  policy
    .command('show')
    .description('print the retention policy of a dataset')
    .requiredOption('--dataset <name>', 'dataset')
    .action(async (o, cmd: Command) => showPolicy(cmd, 'GetPolicy', { dataset: o.dataset }));
  policy
    .command('clear')
    .description('remove the retention policy of a dataset')
    .requiredOption('--dataset <name>', 'dataset')
    .action(async (o, cmd: Command) => showPolicy(cmd, 'SetPolicy', { policy: policyFromOptions({}, o.dataset).policy }));

  for (const on of [true, false]) {
    program
      .command(on ? 'protect' : 'unprotect')
      .description(on ? 'protect a snapshot: forget and retention policies never remove it' : 'let forget and retention policies remove a snapshot again')
      .argument('<snapshot>', 'snapshot id, unique prefix, or latest')
      .action(async (ref: string, _o, cmd: Command) => {
        const { conn, g } = connect(cmd);
        try {
          const s = await conn.unary<Snapshot>('Protect', { ref, protected: on });
          if (g.json) out(JSON.stringify(s));
          else out(`snapshot ${shortId(s.id)} (${s.dataset}@${s.host}, ${localTime(s.time)}) is ${on ? 'protected' : 'no longer protected'}`);
        } finally {
          conn.close();
        }
      });
  }
}

async function showPolicy(cmd: Command, rpc: 'SetPolicy' | 'GetPolicy', req: unknown): Promise<void> {
  const { conn, g } = connect(cmd);
  try {
    const p = await conn.unary<Policy>(rpc, req);
    if (g.json) out(JSON.stringify(policyRecord(p)));
    else out(`retention policy of dataset ${p.dataset}: ${describePolicy(p)}`);
  } finally {
    conn.close();
  }
}
