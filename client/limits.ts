/** Largest message the client sends or accepts: a tree blob of the server's limit plus framing. */
export const MAX_CLIENT_MESSAGE_BYTES = 80 * 1024 * 1024;
/** Blobs are batched into Upload messages of about this size: fewer messages, same memory bound. */
export const UPLOAD_MESSAGE_BYTES = 1024 * 1024;
/**
 * ...or this many blobs. gRPC buffers 16 messages per stream on each side; at a few hundred
 * bytes per small-file blob, 1 MiB messages meant ~100k blob objects in flight (measured:
 * ~130 MiB of heap on client and server at 100k small files).
 */
export const UPLOAD_MESSAGE_BLOBS = 256;
/**
 * Bytes of written Upload messages one stream holds before gRPC has framed and sent them:
 * enough to keep the socket busy, where gRPC's own limit of sixteen messages let a hundred
 * megabytes of chunks queue beyond the window.
 */
export const UPLOAD_STREAM_QUEUE_BYTES = 2 * 1024 * 1024;
/** Ids per FindMissing call. */
export const FIND_MISSING_BATCH = 512;
/** Chunk bytes between reading and acknowledged upload: the snapshot's memory bound. */
export const SNAPSHOT_WINDOW_BYTES = 16 * 1024 * 1024;
/** Blobs in the same window: small files would otherwise put ten thousand tasks in flight. */
export const SNAPSHOT_WINDOW_BLOBS = 2048;
/**
 * HTTP/2 flow-control window the client grants each stream and connection it receives on
 * (restores, tree reads). At the default 64 KiB the server could send only 64 KiB and then
 * wait while this process inflated and hashed a chunk before it read the socket again, so
 * serving and verifying took turns. A 1 GiB restore on 2 cores took 5.4-6.3 s with the default
 * and 4.0-5.2 s with 1 to 16 MiB, with the same client RSS; a paused stream holds at most this
 * many unacknowledged bytes, so it also bounds what each stream can buffer.
 */
export const RECEIVE_WINDOW_BYTES = 4 * 1024 * 1024;
