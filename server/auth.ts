import type { Logger } from 'pino';
import { CairnError, Code, permissionDenied } from '../common/errors.js';
import type { Repository } from './repository.js';
import type { Authorizer } from './service.js';
import { DEFAULT_REPOSITORY, hashToken, isWellFormedToken, type Role, type TokenRecord, type TokenStore } from './tokens.js';

interface HostScoped {
  host?: string;
  time?: string;
}

/** What one RPC allows: the roles, and for agent tokens a check of the request itself. */
interface Rule {
  roles: readonly Role[];
  agent?: (req: HostScoped, token: TokenRecord) => string | undefined;
}

const EVERYONE: readonly Role[] = ['agent', 'reader', 'admin'];
const WRITERS: readonly Role[] = ['agent', 'admin'];
const ADMINS: readonly Role[] = ['admin'];

/** An agent token's name is its host: it may write only that host's snapshots and status. */
const ownHost = (req: HostScoped, token: TokenRecord) =>
  req.host === token.name ? undefined : `agent token ${token.name} may only act for host ${token.name}, not ${JSON.stringify(req.host ?? '')}`;

/**
 * Backdating would let an agent slot snapshots into retention buckets and push real ones out
 * under a stored policy; an agent records the server's clock.
 */
const ownHostNow = (req: HostScoped, token: TokenRecord) =>
  ownHost(req, token) ?? (req.time ? `agent token ${token.name} may not set the snapshot time; the server records it` : undefined);

/**
 * Every RPC of the contract and who may call it. An RPC missing here is refused for every
 * role, and test/auth.test.ts fails until it gets a decision.
 */
export const ACCESS: Readonly<Record<string, Rule>> = {
  Hello: { roles: EVERYONE },
  BeginBackup: { roles: WRITERS, agent: ownHostNow },
  FindMissing: { roles: WRITERS },
  Upload: { roles: WRITERS },
  CommitBackup: { roles: WRITERS },
  AbortBackup: { roles: WRITERS },
  ListSnapshots: { roles: EVERYONE },
  GetSnapshot: { roles: EVERYONE },
  ReadTree: { roles: EVERYONE },
  ReadChunks: { roles: EVERYONE },
  Diff: { roles: EVERYONE },
  Find: { roles: EVERYONE },
  Stats: { roles: EVERYONE },
  Status: { roles: EVERYONE },
  GetPolicy: { roles: EVERYONE },
  Heartbeat: { roles: WRITERS, agent: ownHost },
  Forget: { roles: ADMINS },
  Prune: { roles: ADMINS },
  Check: { roles: ADMINS },
  SetPolicy: { roles: ADMINS },
  Protect: { roles: ADMINS },
};

type AnyCall = Parameters<Authorizer>[0];

export interface AccessControlOptions {
  tokens: TokenStore;
  /** Opens (or returns) the repository a token names. */
  repository: (name: string) => Promise<Repository>;
  /** How long a token check is reused; 0 reads the token store on every call, so a revocation acts at once. */
  cacheMs: number;
  log: Logger;
}

/**
 * The one gate every RPC passes: who is calling (bearer token), which repository the call
 * acts on (the token's), and whether the token's role may make this call (ACCESS).
 * With no token in the store access control is off: every call acts as a local admin on the
 * default repository. The first token turns it on for good, even if all are revoked later.
 */
export class AccessControl {
  private enabled = false;
  private enabledCheck: { at: number; pending?: Promise<boolean> } = { at: -Infinity };
  private readonly cache = new Map<string, { at: number; settled: boolean; record: Promise<TokenRecord | undefined> }>();

  constructor(private readonly opts: AccessControlOptions) {}

  /** Whether any token exists; sticky once true, re-checked at most every cacheMs while false. */
  async refreshEnabled(): Promise<boolean> {
    if (this.enabled) return true;
    const c = this.enabledCheck;
    if (!c.pending && Date.now() - c.at >= this.opts.cacheMs) {
      c.pending = this.opts.tokens.any().finally(() => {
        c.at = Date.now();
        c.pending = undefined;
      });
    }
    if (c.pending && (await c.pending) && !this.enabled) {
      this.enabled = true;
      this.opts.log.info('a token exists: access control is on, every call needs a valid token');
    }
    return this.enabled;
  }

  readonly authorize: Authorizer = async (call, rpc) => {
    const rule = ACCESS[rpc];
    if (!rule) throw permissionDenied(`RPC ${rpc} has no access rule on this server; it is refused for every token`);
    if (!(await this.refreshEnabled())) return { repo: await this.opts.repository(DEFAULT_REPOSITORY), principal: 'local' };
    const token = await this.tokenOf(call, rpc);
    if (!rule.roles.includes(token.role)) {
      this.refuse(call, rpc, token, 'role');
      throw permissionDenied(`${rpc} needs a token with role ${rule.roles.join(' or ')}; token ${token.name} of repository ${token.repo} has role ${token.role}`);
    }
    const why = token.role === 'agent' && rule.agent ? rule.agent(((call as { request?: HostScoped }).request ?? {}) as HostScoped, token) : undefined;
    if (why) {
      this.refuse(call, rpc, token, why);
      throw permissionDenied(why);
    }
    return { repo: await this.opts.repository(token.repo), principal: `${token.repo}/${token.name}` };
  };

  private async tokenOf(call: AnyCall, rpc: string): Promise<TokenRecord> {
    const header = call.metadata.get('authorization')[0];
    const value = typeof header === 'string' ? header : header?.toString('utf8');
    if (!value) throw new CairnError(Code.UNAUTHENTICATED, 'this server requires a token: pass --token or set CAIRN_TOKEN');
    const m = /^Bearer (.+)$/.exec(value);
    if (!m || !isWellFormedToken(m[1])) {
      this.opts.log.warn({ rpc, peer: call.getPeer() }, 'malformed token refused');
      throw new CairnError(Code.UNAUTHENTICATED, 'the token is malformed: expected "authorization: Bearer cairn_..." as printed by cairn-server token create');
    }
    const record = await this.lookup(m[1]);
    if (!record) {
      this.opts.log.warn({ rpc, peer: call.getPeer() }, 'unknown or revoked token refused');
      throw new CairnError(Code.UNAUTHENTICATED, 'the token is unknown or has been revoked');
    }
    return record;
  }

  /** Concurrent checks of one token share a read; only known tokens are kept, so guessing cannot fill memory. */
  private lookup(token: string): Promise<TokenRecord | undefined> {
    const key = hashToken(token).toString('hex');
    const hit = this.cache.get(key);
    if (hit && (!hit.settled || Date.now() - hit.at < this.opts.cacheMs)) return hit.record;
    const entry = { at: Date.now(), settled: false, record: this.opts.tokens.lookup(token) };
    this.cache.set(key, entry);
    const settle = (known: boolean) => {
      entry.settled = true;
      entry.at = Date.now();
      if (!known && this.cache.get(key) === entry) this.cache.delete(key);
    };
    entry.record.then((r) => settle(r !== undefined), () => settle(false));
    return entry.record;
  }

  private refuse(call: AnyCall, rpc: string, token: TokenRecord, why: string): void {
    this.opts.log.warn({ rpc, token: token.name, repository: token.repo, role: token.role, peer: call.getPeer(), why }, 'call refused by access control');
  }
}
