/**
 * The byte-stream data path shared by pipe ends and stream sockets: a sync
 * nonblocking attempt, then (on "would block") a wait in the poller and a
 * retry; and the Web Streams built on top.
 *
 * @module
 */

import type { OwnedFd } from "./ffi/fd.ts";
import { checkSpin, Spinner, untilReady } from "./ffi/spin.ts";
import { CallQueue, type QueuedCall, type QueueHost } from "./_call_queue.ts";
import { TurnSlice, yieldTurn } from "./_turn.ts";

/** Tries a read now: bytes read, `0` at EOF, `-1` when nothing is ready. */
export type TryRead = (fd: number, into: Uint8Array) => number;
/** Tries a write now: bytes written, `-1` when nothing fits. */
export type TryWrite = (fd: number, from: Uint8Array) => number;
/** Writes every byte, blocking the thread while nothing fits. */
export type WriteAllBlocking = (fd: number, from: Uint8Array) => void;

/** Options for a single read. */
export interface ReadOptions {
  /**
   * How a read that finds nothing waits before it parks in the poller, in
   * µs. Omitted (the default): it spins only while recent spins were answered
   * quickly, so a tight exchange never parks and slow or one-way traffic
   * parks at once. `0`: never spin. A number up to 1,000,000: always spin
   * that long first.
   */
  spin?: number;
  /**
   * Aborting it while the read waits rejects the read with the signal's
   * reason; nothing is taken, so a later read gets the data. Already
   * aborted: the read rejects at once, without reading.
   */
  signal?: AbortSignal;
}

/** Options for a single write. */
export interface WriteOptions {
  /**
   * Aborting it while the write waits for room gives the write up: the
   * promise rejects with the signal's reason. A write that has not started
   * is taken out of the queue and nothing of it is written. A write that is
   * partly out cannot be taken back: its promise rejects at once, and the
   * rest of its bytes (copied, so the buffer may be reused) still go out
   * ahead of later writes, so the peer never sees a torn stream. Already
   * aborted: the write rejects at once, without writing. `close()` of the
   * endpoint discards what is still queued, that rest included: await an
   * empty `write()` first (it settles once everything queued before it is
   * out), or close through the `writable`, whose close waits for it.
   */
  signal?: AbortSignal;
}

/**
 * The spinner for one wait: a fixed one when `spin` is given, else the
 * endpoint's own adaptive one (which keeps what it learnt across calls).
 *
 * @throws {TypeError|RangeError} When `spin` is not a valid spin option;
 * `doing` starts the message, such as `"Cannot read from PipeReader"`.
 */
export function spinnerFor(
  spin: number | undefined,
  own: Spinner,
  doing: string,
): Spinner {
  if (spin === undefined) return own;
  return new Spinner(checkSpin(spin, doing));
}

/** A short name for the type of `value`, for messages. */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value !== "object") return typeof value;
  return (value as { constructor?: { name?: string } }).constructor?.name ??
    "object";
}

/**
 * Checks a `signal` option before a call starts.
 *
 * @throws {TypeError} When `signal` is neither `undefined` nor an
 * `AbortSignal`; `doing` starts the message.
 * @throws The signal's reason when it is already aborted.
 */
export function checkSignal(signal: unknown, doing: string): void {
  if (signal === undefined) return;
  if (!(signal instanceof AbortSignal)) {
    throw new TypeError(
      `${doing}: signal must be an AbortSignal, got ${describe(signal)}`,
    );
  }
  if (signal.aborted) throw signal.reason;
}

/** Whether the memory under `view` was transferred away (detached). */
export function isDetached(view: ArrayBufferView): boolean {
  return (view.buffer as ArrayBuffer).detached === true;
}

/**
 * The error of a call whose buffer was transferred away (detached); `doing`
 * starts the message, and `detail`, when given, ends it.
 */
export function detachedError(doing: string, detail = ""): TypeError {
  return new TypeError(
    `${doing}: the buffer was transferred (detached)${detail}`,
  );
}

/**
 * The bytes of `value` as a `Uint8Array` over the same memory: any typed
 * array (of any element size) or `DataView` is written or filled byte for
 * byte, exactly `byteLength` bytes.
 *
 * @throws {TypeError} When `value` is not an `ArrayBufferView`, or its
 * buffer was transferred away; `doing` starts the message, such as
 * `"Cannot write to PipeWriter"`.
 */
export function asBytes(value: unknown, doing: string): Uint8Array {
  if (ArrayBuffer.isView(value)) {
    // A transferred buffer leaves views of length 0: only then look.
    if (value.byteLength === 0 && isDetached(value)) {
      throw detachedError(doing);
    }
    if (value instanceof Uint8Array) return value;
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  throw new TypeError(
    `${doing}: expected a Uint8Array or another ArrayBufferView, got ${
      describe(value)
    }`,
  );
}

/**
 * `read(buffer, options)` of a byte-stream endpoint: the buffer, spin and
 * signal checked (a bad one rejects), then {@linkcode readAsync}.
 *
 * @param own The endpoint's own adaptive spinner, used without a `spin`.
 * @param doing What a refusal says was refused, e.g. "Cannot read from PipeReader".
 */
export function readChecked(
  owner: OwnedFd,
  tryRead: TryRead,
  buffer: unknown,
  options: ReadOptions | undefined,
  own: Spinner,
  doing: string,
): Promise<number | null> {
  let into: Uint8Array;
  let spinner: Spinner;
  try {
    into = asBytes(buffer, doing);
    spinner = spinnerFor(options?.spin, own, doing);
    checkSignal(options?.signal, doing);
  } catch (error) {
    return Promise.reject(error);
  }
  return readAsync(owner, tryRead, into, spinner, options?.signal);
}

/**
 * Reads into `into`: bytes read, or `null` at EOF. Tries now, then spins as
 * `spinner` allows, then waits in the poller and tries again. `signal`,
 * checked by the caller ({@linkcode checkSignal}), ends the wait (never a
 * read: what arrives stays for the next one).
 *
 * A buffer transferred away while the read waits fails the read with a
 * `TypeError`, never a false EOF; the data stays for the next read.
 */
export function readAsync(
  owner: OwnedFd,
  tryRead: TryRead,
  into: Uint8Array,
  spinner: Spinner,
  signal: AbortSignal | undefined,
): Promise<number | null> {
  if (into.byteLength === 0) {
    try {
      owner.assertOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    return Promise.resolve(0);
  }
  const attempt = () => {
    const n = tryRead(owner.fd, into);
    if (n > 0) return n;
    if (n < 0) return undefined;
    // A transferred buffer reads 0 bytes too: that is no EOF.
    if (into.byteLength === 0) {
      throw detachedError(
        `Cannot read from ${owner.what}`,
        " while the read waited; the data stays for the next read",
      );
    }
    return null;
  };
  let now: number | null | undefined;
  try {
    now = attempt();
  } catch (error) {
    return Promise.reject(error);
  }
  if (now !== undefined) {
    // A peer that keeps the fd full never lets a read wait: timers and
    // other I/O get a turn after each slice of such reads.
    return sliceOf(owner).delivered(now ?? 0)
      ? yieldTurn().then(() => now)
      : Promise.resolve(now);
  }
  return untilReady(attempt, () => owner.wait("read", signal), spinner, true);
}

/** Each fd's slice of reads that did not wait (see `_turn.ts`). */
const readSlices = new WeakMap<OwnedFd, TurnSlice>();

function sliceOf(owner: OwnedFd): TurnSlice {
  let slice = readSlices.get(owner);
  if (slice === undefined) readSlices.set(owner, slice = new TurnSlice());
  return slice;
}

/** One queued write: its bytes and how many are out. */
interface WriteJob extends QueuedCall<void> {
  /** The caller's bytes ({@linkcode pinned}), or a copy of the rest. */
  bytes: Uint8Array;
  /** How many bytes `bytes` had when the write was queued. */
  length: number;
  done: number;
}

/**
 * The view a call that has to wait keeps of the caller's bytes: the view
 * itself, or, over a resizable or growable buffer, one of fixed length over
 * the same bytes. Growing the buffer meanwhile then changes nothing, and
 * shrinking it below those bytes leaves the view out of bounds (length 0)
 * instead of silently shorter: {@linkcode lostWhileWaiting} tells.
 */
export function pinned(view: Uint8Array): Uint8Array {
  const buffer = view.buffer as ArrayBuffer & { growable?: boolean };
  if (buffer.resizable !== true && buffer.growable !== true) return view;
  return new Uint8Array(buffer, view.byteOffset, view.byteLength);
}

/**
 * Whether the bytes a waiting call kept ({@linkcode pinned}) are gone: the
 * call was made with `length` bytes, and its buffer has been transferred
 * away or shrunk below them since.
 */
export function lostWhileWaiting(view: Uint8Array, length: number): boolean {
  return view.byteLength !== length;
}

/**
 * The error of a queued write or send whose bytes were lost while it
 * waited (its buffer transferred away or shrunk): how much of it went out,
 * so a torn stream is never silent.
 */
export function transferredWhileWaiting(
  doing: string,
  call: "write" | "send",
  done: number,
  view?: Uint8Array,
): TypeError {
  const past = call === "write" ? "written" : "sent";
  const detail = done === 0
    ? ` while the ${call} waited; none of it was ${past}`
    : ` while the ${call} waited, after ${done} of its bytes were ${past}; the rest were not`;
  if (view === undefined || isDetached(view)) {
    return detachedError(doing, detail);
  }
  return new TypeError(
    `${doing}: the buffer was resized below the bytes given${detail}`,
  );
}

/** What an empty write that waits its turn writes. */
const NO_BYTES = new Uint8Array(0);

/**
 * The writes of one byte-stream endpoint, in the order they were called.
 *
 * `write()` sends what fits at once and queues the rest behind earlier
 * writes (in the module's one {@linkcode CallQueue}), so whole writes never
 * interleave; a queued write waits with the shared spin-then-park.
 * `writeSync()` first finishes every queued write (blocking), then writes
 * its own bytes: bytes leave in call order whichever form each call used,
 * and a sync write never lands inside a pending one. A write's signal
 * gives it up as {@linkcode WriteOptions.signal} says.
 */
export class OrderedWrites implements QueueHost<WriteJob, void> {
  #owner: OwnedFd;
  #tryWrite: TryWrite;
  #writeAllBlocking: WriteAllBlocking;
  #queue: CallQueue<WriteJob>;

  /**
   * @param owner The endpoint's fd.
   * @param tryWrite A write that never blocks.
   * @param writeAllBlocking A write of every byte that may block.
   * @param spinner How a queued write waits for room.
   */
  constructor(
    owner: OwnedFd,
    tryWrite: TryWrite,
    writeAllBlocking: WriteAllBlocking,
    spinner: Spinner,
  ) {
    this.#owner = owner;
    this.#tryWrite = tryWrite;
    this.#writeAllBlocking = writeAllBlocking;
    this.#queue = new CallQueue(this, spinner);
  }

  /**
   * Writes every byte after every earlier write; waits while full. The
   * caller has checked `signal` ({@linkcode checkSignal}).
   */
  write(bytes: Uint8Array, signal: AbortSignal | undefined): Promise<void> {
    let done = 0;
    try {
      this.#owner.assertOpen();
      if (this.#queue.clear) {
        done = this.#some(bytes, 0);
        if (done === bytes.byteLength) return Promise.resolve();
      }
    } catch (error) {
      return Promise.reject(error);
    }
    const kept = pinned(bytes);
    return this.#queue.push({
      bytes: kept,
      length: kept.byteLength,
      done,
      signal,
    });
  }

  /**
   * Settles once every write queued before it is done or failed (an empty
   * write that waits its turn).
   */
  afterWrites(): Promise<void> {
    if (this.#queue.length === 0) return Promise.resolve();
    return this.#queue.push({
      bytes: NO_BYTES,
      length: 0,
      done: 0,
      signal: undefined,
    });
  }

  /** Finishes every queued write, then writes `bytes`, blocking. */
  writeSync(bytes: Uint8Array): void {
    this.#queue.drainBlocking();
    this.#writeAllBlocking(this.#owner.fd, bytes);
  }

  /** Writes what fits of `bytes` from `done` on; returns the new count. */
  #some(bytes: Uint8Array, done: number): number {
    const fd = this.#owner.fd;
    while (done < bytes.byteLength) {
      const n = this.#tryWrite(fd, bytes.subarray(done));
      if (n < 0) break;
      done += n;
    }
    return done;
  }

  /** Throws when a queued write's bytes were lost while it waited. */
  #checkKept(job: WriteJob): void {
    if (lostWhileWaiting(job.bytes, job.length)) {
      throw transferredWhileWaiting(
        `Cannot write to ${this.#owner.what}`,
        "write",
        job.done,
        job.bytes,
      );
    }
  }

  /** @internal Writes what fits of the first queued write. */
  advance(jobs: readonly WriteJob[]): number {
    const job = jobs[0];
    this.#checkKept(job);
    job.done = this.#some(job.bytes, job.done);
    return job.done === job.bytes.byteLength ? 1 : 0;
  }

  /** @internal Whether some of a queued write is out. */
  started(job: WriteJob): boolean {
    return job.done > 0;
  }

  /** @internal Its caller gave up: keep a copy of what is left. */
  abandon(job: WriteJob): void {
    this.#checkKept(job);
    job.bytes = job.bytes.slice(job.done);
    job.length = job.bytes.byteLength;
    job.done = 0;
  }

  /** @internal Waits for room. */
  park(_head: WriteJob, signal: AbortSignal | undefined): Promise<void> {
    return this.#owner.wait("write", signal);
  }

  /** @internal A queued write is done. */
  done(): void {}

  /** @internal A queued write failed. */
  failed(_job: WriteJob, error: unknown): unknown {
    return error;
  }

  /** @internal Finishes a queued write, blocking. */
  finishBlocking(job: WriteJob): void {
    this.#checkKept(job);
    this.#writeAllBlocking(this.#owner.fd, job.bytes.subarray(job.done));
    job.done = job.bytes.byteLength;
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
 * A `WritableStream` over a write-all function: each chunk (any
 * `ArrayBufferView`, written byte for byte) is written whole before the
 * next is taken, so the stream's queue gives backpressure. Closing the
 * stream calls `close` and waits for it. Aborting the stream gives up the
 * write in flight (through its signal), then calls `abort` at once: abort
 * discards what has not gone out. A failed write errors the stream, which
 * cannot be closed after that: it calls `failed` (`abort` by default) (as Deno's own
 * streams close their resource then), so that a writer given up on a
 * `BrokenPipe` does not keep its fd. A chunk that is no view is refused
 * before anything is written: the stream errors, the endpoint stays as it
 * was.
 *
 * @param doing What a refused chunk's error starts with, e.g. "Cannot write to PipeWriter".
 */
export function byteWritable(
  doing: string,
  write: (chunk: Uint8Array, signal: AbortSignal) => Promise<void>,
  close: () => void | Promise<void>,
  abort: () => void,
  failed: () => void = abort,
): WritableStream<Uint8Array> {
  return new WritableStream<Uint8Array>({
    async write(chunk, controller) {
      const bytes = asBytes(chunk, `${doing} through its writable`);
      try {
        await write(bytes, controller.signal);
      } catch (error) {
        try {
          failed();
        } catch {
          // Closed already: the failure to report is the write's.
        }
        throw error;
      }
    },
    close() {
      return close();
    },
    abort() {
      abort();
    },
  });
}
