/**
 * The byte-stream data path shared by pipe ends and stream sockets: a sync
 * nonblocking attempt, then (on "would block") a wait in the poller and a
 * retry; and the Web Streams built on top.
 *
 * @module
 */

import type { OwnedFd } from "./ffi/fd.ts";

/** Tries a read now: bytes read, `0` at EOF, `-1` when nothing is ready. */
export type TryRead = (fd: number, into: Uint8Array) => number;
/** Tries a write now: bytes written, `-1` when nothing fits. */
export type TryWrite = (fd: number, from: Uint8Array) => number;

/** Options for a single read. */
export interface ReadOptions {
  /**
   * Microseconds to keep retrying a sync read before parking in the poller.
   * A short spin cuts round-trip latency when the peer answers quickly, at
   * the cost of CPU. Default 0.
   */
  spin?: number;
}

/** Reads into `into`: bytes read, or `null` at EOF. Waits without blocking. */
export async function readAsync(
  owner: OwnedFd,
  tryRead: TryRead,
  into: Uint8Array,
  spin = 0,
): Promise<number | null> {
  if (into.byteLength === 0) {
    owner.assertOpen();
    return 0;
  }
  let deadline = spin > 0 ? performance.now() + spin / 1000 : 0;
  for (;;) {
    const n = tryRead(owner.fd, into);
    if (n > 0) return n;
    if (n === 0) return null;
    if (deadline > 0) {
      if (performance.now() < deadline) continue;
      deadline = 0;
    }
    await owner.wait("read");
  }
}

/** Writes every byte of `from`, waiting in the poller while the peer is full. */
export async function writeAllAsync(
  owner: OwnedFd,
  tryWrite: TryWrite,
  from: Uint8Array,
): Promise<void> {
  let done = 0;
  owner.assertOpen();
  while (done < from.byteLength) {
    const n = tryWrite(owner.fd, from.subarray(done));
    if (n >= 0) {
      done += n;
    } else {
      await owner.wait("write");
    }
  }
}

/** Runs async operations one after another (whole writes never interleave). */
export class Serial {
  #tail: Promise<unknown> = Promise.resolve();

  /** Queues `task` after every task queued before it. */
  run<T>(task: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(task);
    this.#tail = result.catch(() => {});
    return result;
  }
}

/** Default chunk size for default readers of byte streams. */
export const DEFAULT_CHUNK = 64 * 1024;

/**
 * A `ReadableStream` of type "bytes" over a read function. BYOB readers get
 * their buffer filled directly; default readers get chunks of `chunkSize`
 * (trimmed to what was read). Cancelling the stream calls `cancel`; reaching
 * EOF calls `eof` when given (a pipe end is done then; a socket may still
 * write).
 */
export function byteReadable(
  read: (into: Uint8Array) => Promise<number | null>,
  cancel: () => void,
  eof?: () => void,
  chunkSize = DEFAULT_CHUNK,
): ReadableStream<Uint8Array> {
  return new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: chunkSize,
    async pull(controller) {
      const request = controller.byobRequest!;
      const view = request.view as Uint8Array;
      const into = new Uint8Array(
        view.buffer,
        view.byteOffset,
        view.byteLength,
      );
      const n = await read(into);
      if (n === null) {
        eof?.();
        controller.close();
        request.respond(0);
      } else {
        request.respond(n);
      }
    },
    cancel() {
      cancel();
    },
  });
}

/**
 * A `WritableStream` over a write-all function: each chunk is written whole
 * before the next is taken, so the stream's queue gives backpressure.
 */
export function byteWritable(
  write: (chunk: Uint8Array) => Promise<void>,
  close: () => void,
): WritableStream<Uint8Array> {
  return new WritableStream({
    async write(chunk) {
      if (!(chunk instanceof Uint8Array)) {
        throw new TypeError(
          "Cannot write to stream: chunk must be a Uint8Array",
        );
      }
      await write(chunk);
    },
    close() {
      close();
    },
    abort() {
      close();
    },
  });
}
