import { Command, Option } from 'commander';
import path from 'node:path';
import { createLogger } from '../common/log.js';
import { toCairnError, codeName } from '../common/errors.js';
import { SERVER_VERSION } from '../common/version.js';
import { rebuildIndex } from './rebuild-index.js';
import { CairnServer, DEFAULT_REPOSITORY, openStore } from './server.js';
import { parseSize } from '../common/units.js';
import { parseDurationMs } from '../common/durations.js';

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
}

async function serve(opts: ServeOptions): Promise<void> {
  const log = createLogger(opts.logLevel, 'cairn-server');
  const server = await CairnServer.start({
    listen: opts.listen,
    store: openStore(opts.store, opts, log),
    indexDir: opts.index ?? defaultIndexDir(opts.store),
    log,
    packSize: parseSize(opts.packSize),
    leaseTtlMs: parseDurationMs(opts.leaseTtl),
  });
  const shutdown = (signal: string) => {
    log.info({ signal }, 'shutting down');
    server.stop().then(() => process.exit(0), () => process.exit(1));
  };
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.once('SIGTERM', () => shutdown('SIGTERM'));
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
  .action(serve);

program
  .command('rebuild-index')
  .description('recreate the LevelDB index from the object store (index segments, else pack trailers); stop the server first')
  .option('--repository <name>', 'repository to rebuild', DEFAULT_REPOSITORY)
  .action(async (o: { repository: string }, cmd: Command) => {
    const g = cmd.optsWithGlobals<ServeOptions>();
    const store = openStore(g.store, g);
    try {
      const r = await rebuildIndex({ store, indexDir: g.index ?? defaultIndexDir(g.store), repository: o.repository, log: createLogger(g.logLevel, 'cairn-server') });
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
