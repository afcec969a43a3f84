/**
 * TypeScript shapes of the proto messages as they cross the wire, converted with
 * CONVERSION in proto.ts: camelCase fields, 64-bit integers as decimal strings, enums as names,
 * bytes as Buffers. The .proto is the contract; these mirror it and nothing else defines them.
 */

export type NodeType = 'FILE' | 'DIR' | 'SYMLINK';
export type BlobKind = 'DATA' | 'TREE';
export type CompressionName = 'NONE' | 'ZSTD';

export interface ChunkerParamsMsg {
  minSize: number;
  avgSize: number;
  maxSize: number;
}

export interface HelloReply {
  serverVersion: string;
  repositoryId: string;
  chunker: ChunkerParamsMsg;
  maxMessageBytes: number;
  maxBlobRawBytes: number;
  compressionLevel: number;
  repository: string;
  storeRequests: string;
}

export interface Node {
  name: string;
  type: NodeType;
  mode: number;
  mtimeNs: string;
  size: string;
  chunks: Buffer[];
  subtree: Buffer;
  target: string;
  inode: string;
  ctimeNs: string;
  /** Hard links to this file when more than one, else 0: a restore links paths of one inode again. */
  links: number;
}

export interface Blob {
  id: Buffer;
  kind: BlobKind;
  compression: CompressionName;
  rawLength: number;
  data: Buffer;
}

export interface SnapshotSummary {
  files: string;
  dirs: string;
  bytes: string;
  bytesRead: string;
  newBytes: string;
  newChunks: string;
  durationSeconds: number;
  errors: string;
  symlinks: string;
}

export interface Snapshot {
  id: string;
  dataset: string;
  host: string;
  paths: string[];
  tags: string[];
  time: string;
  parent: string;
  rootTree: string;
  summary: SnapshotSummary;
  clientVersion: string;
  protected: boolean;
}

export interface BeginBackupRequest {
  dataset: string;
  host: string;
  paths: string[];
  tags: string[];
  time: string;
}

export interface BeginBackupReply {
  sessionId: string;
  parent: Snapshot | null;
}

export interface FindMissingRequest {
  sessionId: string;
  ids: Buffer[];
}

export interface UploadRequest {
  sessionId: string;
  blobs: Blob[];
}

export interface UploadReply {
  blobsReceived: string;
  blobsStored: string;
  bytesStored: string;
}

export interface CommitBackupRequest {
  sessionId: string;
  rootTree: Buffer;
  summary: SnapshotSummary | null;
  clientVersion: string;
}

export interface ListSnapshotsRequest {
  dataset: string;
  host: string;
  tag: string;
  since: string;
  until: string;
  limit: number;
}

export interface GetSnapshotRequest {
  ref: string;
  dataset: string;
  host: string;
  tag: string;
}

export function emptySummary(): SnapshotSummary {
  return { files: '0', dirs: '0', bytes: '0', bytesRead: '0', newBytes: '0', newChunks: '0', durationSeconds: 0, errors: '0', symlinks: '0' };
}
