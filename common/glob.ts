import { invalidArgument } from './errors.js';

/**
 * Path globs for `find` (matched by the server, on patterns any reader may send) and
 * `restore --include`. Matching takes time proportional to pattern length times path length
 * whatever the pattern: glob libraries that compile to backtracking regular expressions
 * (picomatch, which this replaced) spent 25 s on one 255-character name against
 * `*a*a*a*a*b`, and a server matching it stopped answering everyone.
 *
 * Syntax, with dot files matched like any other:
 * - `*` any run of characters within one path segment, `?` one character,
 * - `[abc]`, `[a-z]`, `[!a-z]` or `[^a-z]` one character of (or not of) a set,
 * - `**` as a whole segment: any number of segments, none included,
 * - `{a,b}` alternatives (nested allowed; at most MAX_ALTERNATIVES patterns in all),
 * - `\x` the character x itself,
 * - a leading `!` matches the paths the rest does not match.
 * Paths are '/'-separated, relative, without leading or trailing '/'.
 */
export interface Glob {
  matches(path: string): boolean;
  /**
   * The literal directory every match lies in or on the way to ('' when there is none):
   * a walk need not enter directories off that path.
   */
  readonly base: string;
}

export const MAX_PATTERN_LENGTH = 4096;
export const MAX_ALTERNATIVES = 256;

type Token = { kind: 'char'; ch: string } | { kind: 'any' } | { kind: 'star' } | { kind: 'set'; negated: boolean; items: Array<[string, string]> };
/** One path segment's tokens, or the globstar. */
type Segment = Token[] | 'globstar';

/**
 * `anyDepth`: a pattern without '/' matches the last segment at any depth, as in gitignore
 * ("*.ckpt" finds checkpoints anywhere).
 */
export function compileGlob(pattern: string, opts: { anyDepth?: boolean } = {}): Glob {
  if (pattern === '') throw invalidArgument('empty glob pattern');
  if (pattern.length > MAX_PATTERN_LENGTH) throw invalidArgument(`glob pattern of ${pattern.length} characters; the limit is ${MAX_PATTERN_LENGTH}`);
  const negated = pattern.startsWith('!');
  const body = negated ? pattern.slice(1) : pattern;
  if (body === '') throw invalidArgument('glob pattern "!" negates nothing');
  const anyDepth = opts.anyDepth === true && findUnescaped(body, '/') < 0;
  const alternatives = expandBraces(body).map((alt) => {
    const segments = splitSegments(alt).map(parseSegment);
    return anyDepth ? (['globstar', ...segments] as Segment[]) : segments;
  });
  const base = negated || anyDepth ? '' : commonPrefix(alternatives.map(literalPrefix));
  return {
    base,
    matches(path: string): boolean {
      const parts = path.split('/').map(characters);
      const hit = alternatives.some((alt) => matchSegments(alt, parts));
      return hit !== negated;
    },
  };
}

/** A name's characters: its UTF-16 units, unless it has surrogate pairs, which '?' must take as one. */
function characters(name: string): ArrayLike<string> {
  return /[\uD800-\uDFFF]/.test(name) ? Array.from(name) : name;
}

/** `a{b,c{d,e}}f` to abf, acdf, acef; a brace without a top-level comma stays literal. */
function expandBraces(s: string): string[] {
  const out: string[] = [];
  const expand = (rest: string, prefix: string): void => {
    const open = findUnescaped(rest, '{');
    if (open < 0) {
      push(prefix + rest);
      return;
    }
    const close = matchingBrace(rest, open);
    const options = close < 0 ? [] : splitTopLevel(rest.slice(open + 1, close));
    if (options.length < 2) {
      // Not a list: the brace is a literal character.
      expand(rest.slice(open + 1), `${prefix}${rest.slice(0, open)}\\{`);
      return;
    }
    for (const o of options) expand(o + rest.slice(close + 1), prefix + rest.slice(0, open));
  };
  let total = 0;
  const push = (p: string): void => {
    if (out.length >= MAX_ALTERNATIVES) throw invalidArgument(`glob pattern expands to more than ${MAX_ALTERNATIVES} alternatives`);
    // Every alternative is matched in turn: their total length is what matching costs.
    total += p.length;
    if (total > MAX_PATTERN_LENGTH) throw invalidArgument(`glob pattern expands to more than ${MAX_PATTERN_LENGTH} characters of alternatives`);
    out.push(p);
  };
  expand(s, '');
  return out;
}

/**
 * Where the set opening at s[open] ends (its ']'), or `open` when it is not a set: braces,
 * commas and slashes inside "[...]" are members, not syntax. Same rules as parseSet.
 */
function skipSet(s: string, open: number): number {
  if (s[open] !== '[') return open;
  let i = open + 1;
  if (s[i] === '!' || s[i] === '^') i++;
  for (let first = true; i < s.length; i++, first = false) {
    if (s[i] === '\\') i++;
    else if (s[i] === ']' && !first) return i;
  }
  return open;
}

function findUnescaped(s: string, ch: string): number {
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\') i++;
    else if (s[i] === ch) return i;
    else i = skipSet(s, i);
  }
  return -1;
}

function matchingBrace(s: string, open: number): number {
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    if (s[i] === '\\') i++;
    else if (s[i] === '{') depth++;
    else if (s[i] === '}' && --depth === 0) return i;
    else i = skipSet(s, i);
  }
  return -1;
}

function splitTopLevel(s: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let from = 0;
  for (let i = 0; i < s.length; i++) {
    i = skipSet(s, i);
    if (s[i] === '\\') i++;
    else if (s[i] === '{') depth++;
    else if (s[i] === '}') depth--;
    else if (s[i] === ',' && depth === 0) {
      parts.push(s.slice(from, i));
      from = i + 1;
    }
  }
  parts.push(s.slice(from));
  return parts;
}

function splitSegments(s: string): string[] {
  const segments: string[] = [];
  let from = 0;
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\') i++;
    else if (s[i] === '/') {
      segments.push(s.slice(from, i));
      from = i + 1;
    } else i = skipSet(s, i);
  }
  segments.push(s.slice(from));
  // "a//b" and a leading or trailing '/' name no segment of their own.
  return segments.filter((seg) => seg !== '');
}

function parseSegment(seg: string): Segment {
  if (seg === '**') return 'globstar';
  const chars = Array.from(seg);
  const tokens: Token[] = [];
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === '\\' && i + 1 < chars.length) tokens.push({ kind: 'char', ch: chars[++i]! });
    else if (c === '*') {
      // "a**b" within a segment is one star; consecutive stars match what one does.
      if (tokens.at(-1)?.kind !== 'star') tokens.push({ kind: 'star' });
    } else if (c === '?') tokens.push({ kind: 'any' });
    else if (c === '[') {
      const set = parseSet(chars, i);
      if (set) {
        tokens.push(set.token);
        i = set.end;
      } else tokens.push({ kind: 'char', ch: c });
    } else tokens.push({ kind: 'char', ch: c });
  }
  return tokens;
}

/** `[...]` starting at chars[open]; undefined when it is not closed (then '[' is literal). */
function parseSet(chars: string[], open: number): { token: Token; end: number } | undefined {
  let i = open + 1;
  const negated = chars[i] === '!' || chars[i] === '^';
  if (negated) i++;
  const items: Array<[string, string]> = [];
  // A ']' right after the opening is a member, as in POSIX.
  for (let first = true; i < chars.length; first = false) {
    let c = chars[i]!;
    if (c === ']' && !first) return { token: { kind: 'set', negated, items }, end: i };
    if (c === '\\' && i + 1 < chars.length) c = chars[++i]!;
    if (chars[i + 1] === '-' && i + 2 < chars.length && chars[i + 2] !== ']') {
      let hi = chars[i + 2]!;
      i += 2;
      if (hi === '\\' && i + 1 < chars.length) hi = chars[++i]!;
      items.push([c, hi]);
    } else items.push([c, c]);
    i++;
  }
  return undefined;
}

function tokenMatches(t: Token, ch: string): boolean {
  switch (t.kind) {
    case 'char':
      return t.ch === ch;
    case 'any':
      return true;
    case 'set': {
      const cp = ch.codePointAt(0)!;
      const inSet = t.items.some(([lo, hi]) => cp >= lo.codePointAt(0)! && cp <= hi.codePointAt(0)!);
      return inSet !== t.negated;
    }
    case 'star':
      return false;
  }
}

/**
 * Wildcard matching that backtracks only to the last star: O(subject × pattern) at worst, and
 * correct because a star matches any run, so a later star can always take over what an
 * earlier one would have had to give back. Used twice: characters of a segment against its
 * tokens, and segments of a path against the pattern's (the globstar being the star there).
 */
function wildcard<P, S>(pattern: ArrayLike<P>, subject: ArrayLike<S>, isStar: (p: P) => boolean, one: (p: P, s: S) => boolean): boolean {
  let p = 0;
  let i = 0;
  let starP = -1;
  let starI = 0;
  while (i < subject.length) {
    if (p < pattern.length && isStar(pattern[p]!)) {
      starP = p++;
      starI = i;
    } else if (p < pattern.length && one(pattern[p]!, subject[i]!)) {
      p++;
      i++;
    } else if (starP >= 0) {
      p = starP + 1;
      i = ++starI;
    } else return false;
  }
  while (p < pattern.length && isStar(pattern[p]!)) p++;
  return p === pattern.length;
}

const isStar = (t: Token): boolean => t.kind === 'star';
const isGlobstar = (seg: Segment): boolean => seg === 'globstar';

function matchSegments(pattern: Segment[], parts: Array<ArrayLike<string>>): boolean {
  return wildcard(pattern, parts, isGlobstar, (seg, name) => wildcard(seg as Token[], name, isStar, tokenMatches));
}

/** The leading segments that are plain names, joined: "reports/2026" of "reports/2026/*.csv". */
function literalPrefix(segments: Segment[]): string[] {
  const names: string[] = [];
  for (const seg of segments.slice(0, -1)) {
    if (seg === 'globstar' || seg.some((t) => t.kind !== 'char')) break;
    names.push(seg.map((t) => (t as { ch: string }).ch).join(''));
  }
  return names;
}

function commonPrefix(prefixes: string[][]): string {
  const [first, ...rest] = prefixes;
  let n = first?.length ?? 0;
  for (const p of rest) {
    let k = 0;
    while (k < n && k < p.length && p[k] === first![k]) k++;
    n = k;
  }
  return (first ?? []).slice(0, n).join('/');
}
