import { constants } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import ignore, { type Ignore } from 'ignore';
import { invalidArgument } from '../common/errors.js';
import { compileGlob, type Glob } from '../common/glob.js';
import { parseSize } from '../common/units.js';

export { parseSize };

/** What almost nobody wants in a backup: rebuildable or machine-local clutter. */
export const DEFAULT_EXCLUDES: readonly string[] = [
  '.git/',
  'node_modules/',
  '__pycache__/',
  '*.pyc',
  '.venv/',
  'venv/',
  '.DS_Store',
  '.cache/',
];

export interface ExcludeOptions {
  /** gitignore patterns, e.g. from repeated --exclude; they come last, so they win. */
  excludes: string[];
  /** gitignore patterns of files to keep; when non-empty, every other file is left out. */
  includes?: string[];
  /** Files of gitignore patterns, read in order after the defaults and before `excludes`. */
  excludeFiles: string[];
  defaultExcludes: boolean;
  /** Skip directories tagged with CACHEDIR.TAG; the CLI should default it to `defaultExcludes`. */
  excludeCaches: boolean;
  /** Files of more than this many bytes are left out; a file of exactly this size is kept. */
  excludeLargerThan?: number;
}

const CACHEDIR_SIGNATURE = Buffer.from('Signature: 8a477f597d28d172789f06886806bc55', 'ascii');

/**
 * `ignore` memoises the answer for every path it is asked about, for the life of the instance
 * (~140 bytes a path). A scan of millions of files would keep all of them, so after this many
 * lookups the cache is dropped by starting a fresh instance over the same compiled rules.
 */
const LOOKUPS_PER_CACHE = 100_000;

function newIgnore(): Ignore {
  // Backups mostly run on case-sensitive filesystems, where git matches case-sensitively too;
  // the library's default would let '*.PNG' exclude 'x.png'.
  return ignore({ ignorecase: false });
}

/**
 * gitignore lines that match a name wherever it is, whatever its directory: no '/' but a
 * trailing one (directories only), no '!', '\\', '**', braces, sets or comment, no blank ends
 * (where `ignore` reads an unclosed '[' its own way). The defaults and most --exclude patterns
 * are such lines.
 */
const BASENAME_RULE = /^(?![#!])(?!.*\*\*)[^/\\{}[\]\s](?:[^/\\{}[\]]*[^/\\{}[\]\s])?\/?$/;

/**
 * Basename rules sorted by how they can be answered: exact names and '*suffix' rules (all of
 * the defaults) without running a glob at all.
 */
class BasenameRules {
  private readonly exact = [new Set<string>(), new Set<string>()];
  private readonly suffixes: Array<Array<string>> = [[], []];
  private readonly globs: Array<Glob[]> = [[], []];

  constructor(lines: readonly string[]) {
    for (const line of lines) {
      const dirOnly = line.endsWith('/');
      const body = dirOnly ? line.slice(0, -1) : line;
      // Index 1 holds what applies to directories, 0 what applies to files too.
      const at = dirOnly ? 1 : 0;
      if (!/[*?]/.test(body)) this.exact[at]!.add(body);
      else if (/^\*[^*?]+$/.test(body)) this.suffixes[at]!.push(body.slice(1));
      else this.globs[at]!.push(compileGlob(body));
    }
  }

  matches(name: string, isDir: boolean): boolean {
    for (let at = 0; at <= (isDir ? 1 : 0); at++) {
      if (this.exact[at]!.has(name)) return true;
      for (const suffix of this.suffixes[at]!) if (name.endsWith(suffix)) return true;
      for (const glob of this.globs[at]!) if (glob.matches(name)) return true;
    }
    return false;
  }
}

class RuleSet {
  private live: Ignore;
  private lookups = 0;

  /**
   * `basename`: the same rules as name globs, when all of them are basename rules. The scanner
   * asks about an entry only after every directory above it was kept, so such rules decide by
   * the entry's own name, and our glob does that several times faster than `ignore`, which
   * re-checks each path in full (30-40 ms of an unchanged 20,000-file snapshot).
   */
  constructor(
    private readonly rules: Ignore,
    private readonly basename?: BasenameRules,
  ) {
    this.live = newIgnore().add(rules);
  }

  static basenameRules(lines: readonly string[]): BasenameRules | undefined {
    return lines.every((l) => BASENAME_RULE.test(l)) ? new BasenameRules(lines) : undefined;
  }

  /** Whether a rule matches the entry at `relPath`, in a directory that is itself kept. */
  matchesEntry(relPath: string, isDir: boolean): boolean {
    if (!this.basename) return this.matches(isDir ? `${relPath}/` : relPath);
    return this.basename.matches(relPath.slice(relPath.lastIndexOf('/') + 1), isDir);
  }

  /**
   * True if a rule matches `relPath` or any directory above it. A directory must be passed with
   * a trailing '/': without it, dir-only patterns such as 'logs/' do not match.
   */
  matches(relPath: string): boolean {
    if (++this.lookups > LOOKUPS_PER_CACHE) {
      this.live = newIgnore().add(this.rules);
      this.lookups = 1;
    }
    return this.live.ignores(relPath);
  }
}

/**
 * Decides what a snapshot leaves out, with gitignore semantics relative to the snapshot root.
 * The scanner asks `excludesDir` (then `excludesCacheDir`) before descending into a directory
 * and `excludesFile` for each file of a directory it did descend into.
 */
export class ExcludeMatcher {
  private constructor(
    private readonly excluded: RuleSet,
    private readonly included: RuleSet | undefined,
    private readonly excludeCaches: boolean,
    private readonly excludeLargerThan: number | undefined,
  ) {}

  static async create(opts: ExcludeOptions): Promise<ExcludeMatcher> {
    // Later rules override earlier ones, so the defaults go first where a user's '!pattern'
    // can re-include something they exclude.
    const rules = newIgnore();
    if (opts.defaultExcludes) rules.add(DEFAULT_EXCLUDES);
    const lines = [...(opts.defaultExcludes ? DEFAULT_EXCLUDES : []), ...opts.excludes];
    for (const file of opts.excludeFiles) {
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch (err) {
        throw invalidArgument(`cannot read exclude file ${file}: ${(err as Error).message}`);
      }
      // A string (not an array) makes `ignore` split lines, drop CRs and a BOM, skip comments
      // and blanks, exactly as it reads a .gitignore.
      rules.add(text);
    }
    rules.add(opts.excludes);

    const includes = opts.includes ?? [];
    return new ExcludeMatcher(
      new RuleSet(rules, opts.excludeFiles.length === 0 ? RuleSet.basenameRules(lines) : undefined),
      includes.length > 0 ? new RuleSet(newIgnore().add(includes)) : undefined,
      opts.excludeCaches,
      opts.excludeLargerThan,
    );
  }

  /** relPath: '/'-separated path relative to the snapshot root (the backed-up directory), no leading slash. */
  excludesDir(relPath: string): boolean {
    // Includes never prune directories: whether something deeper could match an include
    // pattern is not decidable from the directory's name alone.
    return this.excluded.matchesEntry(relPath, true);
  }

  /** relPath: '/'-separated path relative to the snapshot root (the backed-up directory), no leading slash. */
  excludesFile(relPath: string, size: number): boolean {
    if (this.excludeLargerThan !== undefined && size > this.excludeLargerThan) return true;
    if (this.excluded.matchesEntry(relPath, false)) return true;
    return this.included !== undefined && !this.included.matches(relPath);
  }

  /**
   * CACHEDIR.TAG (https://bford.info/cachedir/): a directory holding a regular file CACHEDIR.TAG
   * that starts with the 43-byte signature is excluded, when `excludeCaches` is set.
   */
  async excludesCacheDir(absDir: string): Promise<boolean> {
    if (!this.excludeCaches) return false;
    let handle;
    try {
      // O_NONBLOCK: a FIFO that happens to be named CACHEDIR.TAG must not hang the scan.
      handle = await open(path.join(absDir, 'CACHEDIR.TAG'), constants.O_RDONLY | constants.O_NONBLOCK);
    } catch {
      // Missing, or unreadable: either way nothing proves the directory is a cache, so back it up.
      return false;
    }
    try {
      if (!(await handle.stat()).isFile()) return false;
      const head = Buffer.alloc(CACHEDIR_SIGNATURE.length);
      const { bytesRead } = await handle.read(head, 0, head.length, 0);
      return bytesRead === head.length && head.equals(CACHEDIR_SIGNATURE);
    } catch {
      return false;
    } finally {
      await handle.close();
    }
  }
}
