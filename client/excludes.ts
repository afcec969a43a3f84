import { constants } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import path from 'node:path';
import ignore, { type Ignore } from 'ignore';
import { invalidArgument } from '../common/errors.js';
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

class RuleSet {
  private live: Ignore;
  private lookups = 0;

  constructor(private readonly rules: Ignore) {
    this.live = newIgnore().add(rules);
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
      new RuleSet(rules),
      includes.length > 0 ? new RuleSet(newIgnore().add(includes)) : undefined,
      opts.excludeCaches,
      opts.excludeLargerThan,
    );
  }

  /** relPath: '/'-separated path relative to the snapshot root (the backed-up directory), no leading slash. */
  excludesDir(relPath: string): boolean {
    // Includes never prune directories: whether something deeper could match an include
    // pattern is not decidable from the directory's name alone.
    return this.excluded.matches(`${relPath}/`);
  }

  /** relPath: '/'-separated path relative to the snapshot root (the backed-up directory), no leading slash. */
  excludesFile(relPath: string, size: number): boolean {
    if (this.excludeLargerThan !== undefined && size > this.excludeLargerThan) return true;
    if (this.excluded.matches(relPath)) return true;
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
