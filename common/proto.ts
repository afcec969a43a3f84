import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import { fileURLToPath } from 'node:url';
import { BlobEncoder } from './blob-codec.js';
import type { Blob, Node } from './messages.js';
import { decodeNodes, encodeNodes } from './tree.js';

/** proto/ sits at the package root; this file runs from common/ (sources) or dist/common/. */
function protoPath(): string {
  const here = fileURLToPath(new URL('.', import.meta.url));
  const up = here.includes('/dist/') ? '../../proto/cairn.proto' : '../proto/cairn.proto';
  return fileURLToPath(new URL(up, import.meta.url));
}

/**
 * The conversion both sides and the tree codec share: int64 as decimal strings (nanosecond
 * times pass 2^53), enums as their names, unset fields as defaults, bytes as Buffers.
 */
export const CONVERSION = { keepCase: false, longs: String, enums: String, defaults: true, arrays: true, oneofs: false } as const;

const packageDefinition = protoLoader.loadSync(protoPath(), CONVERSION);
// TreeEntries has the shape of a tree blob (repeated Node nodes = 1), so ReadTree pages go
// through the tree codec: the generic path parsed and printed every 64-bit field as a Long,
// which made reading the parent snapshot's trees a large part of an unchanged snapshot.
// Patched before the client constructor is made: it captures the functions.
const readTree = (packageDefinition['cairn.v1.Cairn'] as grpc.ServiceDefinition).ReadTree;
readTree.responseSerialize = (msg: { nodes: Node[] }) => encodeNodes(msg.nodes);
readTree.responseDeserialize = (bytes: Buffer) => ({ nodes: decodeNodes(bytes, 'ReadTree reply') });
const readChunksEncoder = new BlobEncoder();
(packageDefinition['cairn.v1.Cairn'] as grpc.ServiceDefinition).ReadChunks.responseSerialize = (blob: Blob) => readChunksEncoder.encode(blob);
const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as {
  cairn: { v1: { Cairn: grpc.ServiceClientConstructor } };
};

export const CairnService = loaded.cairn.v1.Cairn;
export const cairnServiceDefinition: grpc.ServiceDefinition = loaded.cairn.v1.Cairn.service;

export const protoRoot = protobuf.loadSync(protoPath());

/** Every RPC of the contract, as named in the .proto (the access-control matrix enumerates these). */
export const RPC_NAMES: readonly string[] = Object.keys(cairnServiceDefinition);
