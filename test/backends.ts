import { randomBytes } from 'node:crypto';
import type { ObjectStore } from '../server/object-store.js';
import { parseS3Url, S3Store } from '../server/s3-store.js';
import { FileStore } from '../server/file-store.js';
import type { ServerOptions } from './harness.js';
import { startS3rver, type S3rverHandle } from './s3/s3rver.js';

/** An object store every core suite runs against; each serverOptions() call gets a fresh repository. */
export interface Backend {
  name: string;
  serverOptions(): Promise<ServerOptions>;
  cleanup?(): Promise<void>;
}

/** A client of the same store a server was started on, for tests that look at the objects themselves. */
export function inspectStore(opts: ServerOptions): ObjectStore {
  if (opts.store?.startsWith('file:')) return new FileStore(opts.store.slice('file:'.length));
  if (!opts.store?.startsWith('s3://')) throw new Error('inspectStore needs an explicit store spec');
  const args = opts.args ?? [];
  const { bucket, prefix } = parseS3Url(opts.store);
  return new S3Store({
    bucket,
    prefix,
    endpoint: args[args.indexOf('--endpoint') + 1],
    region: args[args.indexOf('--region') + 1],
    pathStyle: true,
    credentials: { accessKeyId: opts.env!.AWS_ACCESS_KEY_ID, secretAccessKey: opts.env!.AWS_SECRET_ACCESS_KEY },
  });
}

function s3Options(endpoint: string, bucket: string, accessKeyId: string, secretAccessKey: string, region = 'us-east-1'): ServerOptions {
  return {
    store: `s3://${bucket}/t-${randomBytes(6).toString('hex')}`,
    args: ['--endpoint', endpoint, '--region', region, '--s3-path-style'],
    env: { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey },
  };
}

/**
 * The folder store always; s3rver (an S3 API server the harness starts) always; and any real
 * S3 endpoint named by CAIRN_TEST_S3_* (RADOS Gateway in CI, or MinIO/R2 by hand).
 */
export function storeBackends(): Backend[] {
  const backends: Backend[] = [{ name: 'file', serverOptions: async () => ({}) }];
  let s3rver: S3rverHandle | undefined;
  backends.push({
    name: 's3rver',
    async serverOptions() {
      s3rver ??= await startS3rver();
      return s3Options(s3rver.endpoint, s3rver.bucket, s3rver.accessKeyId, s3rver.secretAccessKey);
    },
    async cleanup() {
      await s3rver?.stop();
      s3rver = undefined;
    },
  });
  const env = process.env;
  if (env.CAIRN_TEST_S3_ENDPOINT && env.CAIRN_TEST_S3_BUCKET && env.CAIRN_TEST_S3_ACCESS_KEY && env.CAIRN_TEST_S3_SECRET_KEY) {
    backends.push({
      name: 'real-s3',
      serverOptions: async () => s3Options(env.CAIRN_TEST_S3_ENDPOINT!, env.CAIRN_TEST_S3_BUCKET!, env.CAIRN_TEST_S3_ACCESS_KEY!, env.CAIRN_TEST_S3_SECRET_KEY!, env.CAIRN_TEST_S3_REGION),
    });
  }
  return backends;
}
