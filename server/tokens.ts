import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { CairnError, Code, failedPrecondition, invalidArgument, notFound } from '../common/errors.js';
import type { ObjectStore } from './object-store.js';
import { validateName } from './repository.js';

/**
 * Tokens and the repository registry live at the store root, beside `repos/` and outside
 * every repository, so a token of one repository can never reach them, and every replica
 * of the server reading the same store sees the same tokens.
 *
 *   auth/tokens/<sha256 of the token, hex>  -> TokenRecord (JSON)
 *   auth/claims/<repo>/<token name>/<seq>   -> NameClaim (JSON), the highest seq in force
 *   auth/repos/<name>                       -> { created }  (the repositories `repo create` made)
 *
 * A token is 32 random bytes; only its SHA-256 is stored, so reading the store does not
 * reveal a usable token. One object per token: creating is a conditional put and revoking a
 * delete, so two admins at once cannot lose each other's change, and checking a presented
 * token is one read of one key. A name is claimed before its token is written: a name is a
 * principal (sessions belong to it), so two tokens created at once under one name must not
 * both succeed. Claims are never overwritten or taken back: whoever takes a name over (its
 * token revoked, or never written by a creator that died) writes the next sequence number
 * with a conditional put, so of two takers exactly one wins.
 */
export const TOKENS_PREFIX = 'auth/tokens/';
export const NAMES_PREFIX = 'auth/claims/';
export const REPOS_PREFIX = 'auth/repos/';
/**
 * A claim whose token never appeared (the creating process died between the two puts) is
 * taken over after this long; a younger one may still be on its way to its token.
 */
const CLAIM_GRACE_MS = 60_000;

/** `hash` names the token the claim was made for; a released claim frees the name. */
interface NameClaim {
  hash?: string;
  released?: boolean;
  claimed: string;
}
export const DEFAULT_REPOSITORY = 'default';

export type Role = 'agent' | 'reader' | 'admin';
export const ROLES: readonly Role[] = ['agent', 'reader', 'admin'];

export interface TokenRecord {
  version: 1;
  name: string;
  repo: string;
  role: Role;
  created: string;
  /** SHA-256 of the token, hex; also the object's key. */
  hash: string;
}

/** `cairn_` marks the secret for scanners; 43 base64url characters carry the 32 random bytes. */
const TOKEN_RE = /^cairn_[A-Za-z0-9_-]{43}$/;

export function hashToken(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

export function isWellFormedToken(token: string): boolean {
  return TOKEN_RE.test(token);
}

export function parseRole(value: string): Role {
  if ((ROLES as readonly string[]).includes(value)) return value as Role;
  throw invalidArgument(`role ${JSON.stringify(value)} is not one of ${ROLES.join(', ')}`);
}

/** Anything unexpected in a record makes the token unusable rather than the server crash. */
function parseRecord(data: Buffer, key: string): TokenRecord {
  let r: Partial<TokenRecord>;
  try {
    r = JSON.parse(data.toString('utf8')) as Partial<TokenRecord>;
  } catch {
    throw new CairnError(Code.DATA_LOSS, `${key} is not JSON`);
  }
  const hashHex = key.slice(TOKENS_PREFIX.length);
  if (
    r === null ||
    typeof r !== 'object' ||
    r.version !== 1 ||
    typeof r.name !== 'string' ||
    typeof r.repo !== 'string' ||
    typeof r.created !== 'string' ||
    !(ROLES as readonly unknown[]).includes(r.role) ||
    r.hash !== hashHex ||
    !/^[0-9a-f]{64}$/.test(hashHex)
  ) {
    throw new CairnError(Code.DATA_LOSS, `${key} is not a valid token record`);
  }
  return r as TokenRecord;
}

export class TokenStore {
  constructor(private readonly store: ObjectStore) {}

  /** The record of a presented token, or undefined when it is unknown or revoked. */
  async lookup(token: string): Promise<TokenRecord | undefined> {
    const digest = hashToken(token);
    const key = TOKENS_PREFIX + digest.toString('hex');
    let data: Buffer;
    try {
      data = await this.store.get(key);
    } catch (err) {
      if (err instanceof CairnError && err.code === Code.NOT_FOUND) return undefined;
      throw err;
    }
    const record = parseRecord(data, key);
    // The key already matched; comparing the recorded hash in constant time keeps the
    // decision itself free of an early-exit comparison on secret-derived bytes.
    return timingSafeEqual(Buffer.from(record.hash, 'hex'), digest) ? record : undefined;
  }

  async any(): Promise<boolean> {
    for await (const _ of this.store.list(TOKENS_PREFIX)) return true;
    return false;
  }

  async list(): Promise<TokenRecord[]> {
    const out: TokenRecord[] = [];
    for await (const o of this.store.list(TOKENS_PREFIX)) out.push(parseRecord(await this.store.get(o.key), o.key));
    return out.sort((a, b) => a.repo.localeCompare(b.repo) || a.name.localeCompare(b.name));
  }

  async create(opts: { repo: string; role: Role; name: string }): Promise<{ token: string; record: TokenRecord }> {
    const name = validateName('token name', opts.name);
    const repo = validateName('repository', opts.repo);
    if (!(await repositoryExists(this.store, repo))) {
      throw notFound(`repository ${repo} does not exist; create it first with: cairn-server repo create ${repo}`);
    }
    const taken = () => failedPrecondition(`a token named ${name} already exists for repository ${repo}; revoke it first or pick another name`);
    // Tokens made before names were claimed have no claim: the listing still finds them.
    if ((await this.list()).some((t) => t.repo === repo && t.name === name)) throw taken();
    const token = `cairn_${randomBytes(32).toString('base64url')}`;
    const hash = hashToken(token).toString('hex');
    const claims = new NameClaims(this.store, repo, name);
    const seq = await claims.next();
    if (seq === undefined || !(await claims.put(seq, { hash, claimed: new Date().toISOString() }))) throw taken();
    const record: TokenRecord = { version: 1, name, repo, role: opts.role, created: new Date().toISOString(), hash };
    if (!(await this.store.putIfAbsent(TOKENS_PREFIX + hash, Buffer.from(JSON.stringify(record, null, 2))))) {
      await claims.put(seq + 1, { released: true, claimed: new Date().toISOString() });
      throw new CairnError(Code.ABORTED, 'token collision; run the command again');
    }
    await claims.dropBefore(seq);
    return { token, record };
  }

  /**
   * Deletes the token named `name` (in `repo`, when the name is used in several repositories)
   * and its claim. Several tokens of one name in one repository (made at once before names
   * were claimed) are all one principal, and are revoked together.
   */
  async revoke(name: string, repo?: string): Promise<TokenRecord[]> {
    const matches = (await this.list()).filter((t) => t.name === name && (repo === undefined || t.repo === repo));
    if (matches.length === 0) throw notFound(`no token named ${name}${repo ? ` for repository ${repo}` : ''}`);
    const repos = [...new Set(matches.map((t) => t.repo))];
    if (repos.length > 1) throw invalidArgument(`token name ${name} exists in repositories ${repos.join(', ')}; say which with --repo`);
    await this.store.delete(matches.map((t) => TOKENS_PREFIX + t.hash));
    // Frees the name at once, but only the claim of a token just revoked: a claim a creator
    // made meanwhile is that creator's, and releasing it would let a third create a twin.
    const claims = new NameClaims(this.store, repos[0]!, name);
    const latest = await claims.latest();
    const ours = latest && !latest.claim.released && matches.some((t) => t.hash === latest.claim.hash);
    if (ours && (await claims.put(latest.seq + 1, { released: true, claimed: new Date().toISOString() }))) {
      await claims.dropBefore(latest.seq + 1);
    }
    return matches;
  }
}

/** The claims on one token name (see the top of this file). */
class NameClaims {
  private readonly prefix: string;

  constructor(
    private readonly store: ObjectStore,
    repo: string,
    name: string,
  ) {
    this.prefix = `${NAMES_PREFIX}${repo}/${name}/`;
  }

  private key(seq: number): string {
    return this.prefix + String(seq).padStart(10, '0');
  }

  /** 0 for a key that is not one of ours, so nothing else can block the name. */
  private seqOf(key: string): number {
    const tail = key.slice(this.prefix.length);
    return /^\d{10}$/.test(tail) ? Number(tail) : 0;
  }

  async latest(): Promise<{ seq: number; claim: NameClaim } | undefined> {
    let seq = 0;
    for await (const o of this.store.list(this.prefix)) seq = Math.max(seq, this.seqOf(o.key));
    if (seq === 0) return undefined;
    try {
      return { seq, claim: JSON.parse((await this.store.get(this.key(seq))).toString('utf8')) as NameClaim };
    } catch (err) {
      if (err instanceof CairnError && err.code !== Code.NOT_FOUND && err.code !== Code.DATA_LOSS) throw err;
      // Unreadable: nothing holds the name through it.
      return { seq, claim: { released: true, claimed: '' } };
    }
  }

  /**
   * The sequence number a new claim takes, or undefined while the name is held: by a live
   * token, or by a claim younger than CLAIM_GRACE_MS whose creator may still be writing it.
   */
  async next(): Promise<number | undefined> {
    const latest = await this.latest();
    if (!latest) return 1;
    const { claim } = latest;
    if (!claim.released && typeof claim.hash === 'string' && /^[0-9a-f]{64}$/.test(claim.hash)) {
      if ((await this.store.head(TOKENS_PREFIX + claim.hash)) !== undefined) return undefined;
      if (Date.now() - Date.parse(claim.claimed) < CLAIM_GRACE_MS) return undefined;
    }
    return latest.seq + 1;
  }

  put(seq: number, claim: NameClaim): Promise<boolean> {
    return this.store.putIfAbsent(this.key(seq), Buffer.from(JSON.stringify(claim)));
  }

  /** Claims below the one in force say nothing any more; removing them is tidiness only. */
  async dropBefore(seq: number): Promise<void> {
    const old: string[] = [];
    for await (const o of this.store.list(this.prefix)) if (this.seqOf(o.key) < seq) old.push(o.key);
    if (old.length > 0) await this.store.delete(old);
  }
}

export async function repositoryExists(store: ObjectStore, name: string): Promise<boolean> {
  return name === DEFAULT_REPOSITORY || (await store.head(REPOS_PREFIX + name)) !== undefined;
}

/** Registers a repository; the server initialises its config and index when it first opens it. */
export async function createRepository(store: ObjectStore, name: string): Promise<void> {
  validateName('repository', name);
  if (name === DEFAULT_REPOSITORY) throw failedPrecondition(`repository ${DEFAULT_REPOSITORY} always exists`);
  if (!(await store.putIfAbsent(REPOS_PREFIX + name, Buffer.from(JSON.stringify({ created: new Date().toISOString() }))))) {
    throw failedPrecondition(`repository ${name} already exists`);
  }
}

export async function listRepositories(store: ObjectStore): Promise<string[]> {
  const names = new Set([DEFAULT_REPOSITORY]);
  for await (const o of store.list(REPOS_PREFIX)) names.add(o.key.slice(REPOS_PREFIX.length));
  return [...names].sort();
}
