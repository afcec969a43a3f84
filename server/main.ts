import { Command, Option } from 'commander';
import path from 'node:path';
import { createLogger } from '../common/log.js';
import { toCairnError, codeName } from '../common/errors.js';
import { SERVER_VERSION } from '../common/version.js';
import { rebuildIndex } from './rebuild-index.js';
import { CairnServer, DEFAULT_REPOSITORY, openStore } from './server.js';
import { parseSize } from '../common/units.js';
import { parseDurationMs } from '../common/durations.js';
import { invalidArgument } from '../common/errors.js';
import type { ObjectStore } from './object-store.js';
import { loadServerTls } from './tls.js';
import { createRepository, listRepositories, parseRole, TokenStore } from './tokens.js';

function defaultIndexDir(store: string): string {
  const dir = store.startsWith('file:') ? store.slice('file:'.length) : store.includes(':') ? './cairn-index' : store;
  return path.join(dir, 'index');
}

interface ServeOptions {
  listen: string;
  store: string;
  index?: string;
  logLevel: string;
  packSize: string;
  endpoint?: string;
  region?: string;
  s3PathStyle?: boolean;
  leaseTtl: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
  insecure?: boolean;
  sessionTimeout: string;
  maxSessionsPerToken: string;
  maxUploadsPerToken: string;
  keepalive: string;
  tokenCache: string;
}

function positiveInt(value: string, flag: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw invalidArgument(`${flag} must be a positive whole number, got ${JSON.stringify(value)}`);
  return n;
}

async function serve(opts: ServeOptions): Promise<void> {
  const log = createLogger(opts.logLevel, 'cairn-server');
  const store = await openStore(opts.store, opts, log);
  const started = CairnServer.start({
    listen: opts.listen,
    store,
    indexDir: opts.index ?? defaultIndexDir(opts.store),
    log,
    packSize: parseSize(opts.packSize),
    leaseTtlMs: parseDurationMs(opts.leaseTtl),
    keepaliveMs: parseDurationMs(opts.keepalive),
    tls: loadServerTls({ cert: opts.tlsCert, key: opts.tlsKey, clientCa: opts.tlsClientCa }),
    insecure: opts.insecure,
    sessionIdleMs: parseDurationMs(opts.sessionTimeout),
    maxSessionsPerToken: positiveInt(opts.maxSessionsPerToken, '--max-sessions-per-token'),
    maxUploadsPerToken: positiveInt(opts.maxUploadsPerToken, '--max-uploads-per-token'),
    tokenCacheMs: parseDurationMs(opts.tokenCache),
  });
  // The handlers go in before start() announces it is ready: a SIGTERM that arrived between the
  // announcement and their installation took Node's default action and left the writer lease
  // behind. A signal during start-up stops the server once it has started; a second one exits.
  let stopping = false;
  const shutdown = (signal: string) => {
    if (stopping) {
      log.warn({ signal }, 'second signal: exiting without a clean stop');
      process.exit(1);
    }
    stopping = true;
    log.info({ signal }, 'shutting down');
    started.then((server) => server.stop()).then(() => process.exit(0), () => process.exit(1));
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  await started;
}

const program = new Command('cairn-server')
  .description('Cairn backup server: stores deduplicated, compressed snapshots in an object store')
  .version(SERVER_VERSION)
  .addOption(new Option('--listen <host:port>', 'address to serve gRPC on').default('127.0.0.1:7420'))
  .addOption(new Option('--store <spec>', 'object store: file:DIR or s3://bucket/prefix').default('file:./cairn-data'))
  .addOption(new Option('--endpoint <url>', 'S3 endpoint (R2, MinIO, Ceph, Lambda); default: AWS'))
  .addOption(new Option('--region <region>', 'S3 region (R2: auto)'))
  .addOption(new Option('--s3-path-style', 'path-style S3 addressing (MinIO and most self-hosted stores)'))
  .addOption(new Option('--lease-ttl <duration>', 'writer lease lifetime; a second server waits this long to take over a dead one').default('60s'))
  .addOption(new Option('--index <dir>', 'LevelDB index directory (default: <store dir>/index)'))
  .addOption(new Option('--pack-size <size>', 'target pack size').default('16MiB'))
  .addOption(new Option('--log-level <level>', 'pino log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('info'))
  .addOption(new Option('--tls-cert <file>', 'serve TLS with this PEM certificate chain (with --tls-key)'))
  .addOption(new Option('--tls-key <file>', 'PEM private key of --tls-cert'))
  .addOption(new Option('--tls-client-ca <file>', 'require client certificates signed by this PEM CA (mutual TLS)'))
  .addOption(new Option('--insecure', 'allow a non-loopback --listen with no token and no client certificates (anyone reaching the port is admin)'))
  .addOption(new Option('--session-timeout <duration>', 'a backup session idle this long expires and its pins are released').default('1h'))
  .addOption(new Option('--max-sessions-per-token <n>', 'backup sessions one token may hold open at once').default('64'))
  .addOption(new Option('--max-uploads-per-token <n>', 'Upload streams one token may have open at once: one per channel of each running backup (each may buffer a 65 MiB message)').default('32'))
  .addOption(new Option('--keepalive <duration>', 'ping a connection idle this long; one that does not answer (within 20s at most) is closed and its streams ended').default('60s'))
  .addOption(new Option('--token-cache <duration>', 'reuse a token check this long (0s: a revoked token is refused at once; more saves store reads on S3)').default('0s'))
  .action(serve);

/** Runs `fn` on the store named by the global flags; token and repo commands work while the server runs. */
async function withStore<T>(cmd: Command, fn: (store: ObjectStore) => Promise<T>): Promise<T> {
  const g = cmd.optsWithGlobals<ServeOptions>();
  const store = await openStore(g.store, g);
  try {
    return await fn(store);
  } finally {
    await store.close();
  }
}

const token = program.command('token').description('bearer tokens: each grants one role on one repository; stored hashed under auth/tokens/ in the store');

token
  .command('create')
  .description('create a token and print it once (it is stored only as a hash)')
  .requiredOption('--name <name>', 'token name; for an agent token, the host it backs up')
  .requiredOption('--role <role>', 'agent (back up its own host, read), reader (restore and queries), admin (everything, including forget and prune)')
  .option('--repo <name>', 'repository the token grants access to', DEFAULT_REPOSITORY)
  .action(async (o: { name: string; role: string; repo: string }, cmd: Command) => {
    const role = parseRole(o.role);
    const { token: secret, record } = await withStore(cmd, (store) => new TokenStore(store).create({ repo: o.repo, role, name: o.name }));
    process.stderr.write(`token ${record.name} created: role ${record.role} on repository ${record.repo}. It is shown only this once; store it now.\n`);
    process.stdout.write(`${secret}\n`);
  });

token
  .command('list')
  .description('list tokens (names, repositories and roles; never the tokens themselves)')
  .option('--json', 'one JSON object per line')
  .action(async (o: { json?: boolean }, cmd: Command) => {
    const tokens = await withStore(cmd, (store) => new TokenStore(store).list());
    for (const t of tokens) {
      process.stdout.write(o.json ? `${JSON.stringify({ name: t.name, repo: t.repo, role: t.role, created: t.created })}\n` : `${t.name}\t${t.repo}\t${t.role}\t${t.created}\n`);
    }
  });

token
  .command('revoke')
  .description('revoke a token; a running server refuses it from its next call')
  .argument('<name>', 'token name')
  .option('--repo <name>', 'repository, when several have a token of this name')
  .action(async (name: string, o: { repo?: string }, cmd: Command) => {
    const records = await withStore(cmd, (store) => new TokenStore(store).revoke(name, o.repo));
    for (const r of records) process.stderr.write(`token ${r.name} (${r.role} on ${r.repo}, created ${r.created}) revoked\n`);
  });

const repo = program.command('repo').description('repositories: isolated prefixes repos/<name>/ of one store, each with its own index');

repo
  .command('create')
  .description('create a repository; a running server opens it when a token for it is first used')
  .argument('<name>', 'repository name, e.g. ml-team')
  .action(async (name: string, _o: unknown, cmd: Command) => {
    await withStore(cmd, (store) => createRepository(store, name));
    process.stderr.write(`repository ${name} created; give it tokens with: cairn-server token create --repo ${name} --role admin --name NAME\n`);
  });

repo
  .command('list')
  .description('list repositories')
  .action(async (_o: unknown, cmd: Command) => {
    for (const name of await withStore(cmd, listRepositories)) process.stdout.write(`${name}\n`);
  });

program
  .command('rebuild-index')
  .description('recreate the LevelDB index from the object store (index segments, else pack trailers); stop the server first')
  .option('--repository <name>', 'repository to rebuild', DEFAULT_REPOSITORY)
  .action(async (o: { repository: string }, cmd: Command) => {
    const g = cmd.optsWithGlobals<ServeOptions>();
    const store = await openStore(g.store, g);
    try {
      const r = await rebuildIndex({ store, indexDir: g.index ?? defaultIndexDir(g.store), repository: o.repository, log: createLogger(g.logLevel, 'cairn-server'), leaseTtlMs: parseDurationMs(g.leaseTtl) });
      process.stdout.write(`${JSON.stringify(r)}\n`);
    } finally {
      await store.close();
    }
  });

program.parseAsync(process.argv).catch((err) => {
  const e = toCairnError(err);
  process.stderr.write(`cairn-server: ${codeName(e.code)}: ${e.message}\n`);
  process.exit(1);
});
