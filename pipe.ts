/**
 * Unnamed pipes: {@linkcode pipe} and {@linkcode duplex}.
 *
 * Both ends are created CLOEXEC and stay blocking at the open file
 * description, so a child handed one sees an ordinary fd; this process reads
 * and writes them without ever blocking its JS thread (per-call `RWF_NOWAIT`,
 * then a wait in the shared poller).
 *
 * @example Send bytes through a pipe
 * ```ts
 * import { pipe } from "@conduit/ipc/pipe";
 *
 * const { reader, writer } = pipe();
 * await writer.write(new TextEncoder().encode("hello"));
 * writer.close();
 * const text = await new Response(reader.readable).text();
 * console.log(text); // "hello"
 * ```
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { inspectEndpoint } from "./_inspect.ts";
import {
  check,
  ERRNO,
  errno,
  type SystemError,
  systemError,
} from "./ffi/errors.ts";
import { F, O } from "./ffi/layout.ts";
import {
  OwnedFd,
  readBlocking,
  readNoWait,
  writeAllBlocking,
  writeNoWait,
} from "./ffi/fd.ts";
import { checkSpin, flushBeforeSpin, Spinner } from "./ffi/spin.ts";
import {
  asBytes,
  byteReadable,
  byteWritable,
  checkSignal,
  OrderedWrites,
  readChecked,
  type ReadOptions,
  type WriteOptions,
} from "./_byte_io.ts";
import {
  type EndpointKind,
  endpointKind,
  releaseFd,
  streamInUse,
} from "./_keys.ts";

export type { ReadOptions, WriteOptions } from "./_byte_io.ts";

/** Options for {@linkcode pipe}. */
export interface PipeOptions {
  /**
   * The pipe's buffer size in bytes (`F_SETPIPE_SZ`). The kernel rounds it up
   * to a power of two pages; an unprivileged process may ask up to
   * `/proc/sys/fs/pipe-max-size` (1 MiB by default). Default: the kernel's
   * (64 KiB). Sizes in bytes are named `bytes` across the module (like
   * `shmQueue({ bytes })`); a `capacity` is a count of messages.
   */
  bytes?: number;
  /**
   * The old name of {@linkcode PipeOptions.bytes}.
   *
   * @deprecated Use `bytes`; `capacity` will be removed in 0.2.0.
   */
  capacity?: number;
  /**
   * How both ends wait when a read finds nothing or a write finds no room,
   * before they park in the poller, in µs. Omitted (the default): spin only
   * while recent spins were answered quickly. `0`: never spin. A number up
   * to 1,000,000: always spin that long. A read's own `spin` option wins.
   */
  spin?: number;
}

/** Options for the {@linkcode PipeReader} and {@linkcode PipeWriter} constructors. */
export interface PipeEndOptions {
  /** How waits spin before parking; see {@linkcode PipeOptions.spin}. */
  spin?: number;
}

const READ = "Cannot read from PipeReader";
const WRITE = "Cannot write to PipeWriter";

/** Runs a write, naming EPIPE for what it means here: no reader is left. */
function brokenPipe<T>(write: () => T): T {
  try {
    return write();
  } catch (error) {
    if ((error as Partial<SystemError>)?.errno !== ERRNO.EPIPE) throw error;
    throw new Deno.errors.BrokenPipe(
      `${WRITE}: every read end of the pipe is closed (EPIPE)`,
      { cause: error },
    );
  }
}

/**
 * The read end of a pipe, from {@linkcode pipe}, {@linkcode duplex} or
 * `fromFd()`.
 *
 * @example Read until every writer is closed
 * ```ts
 * import { pipe } from "@conduit/ipc/pipe";
 *
 * const { reader, writer } = pipe();
 * await writer.write(new TextEncoder().encode("hello"));
 * writer.close();
 * const buf = new Uint8Array(1024);
 * let total = 0;
 * for (let n; (n = await reader.read(buf)) !== null;) total += n;
 * console.log(total); // 5
 * reader.close();
 * ```
 */
export class PipeReader implements Disposable {
  #fd: OwnedFd;
  #spinner: Spinner;
  #readable: ReadableStream<Uint8Array> | undefined;

  /**
   * Takes ownership of a pipe's read end. Prefer {@linkcode pipe} or
   * `fromFd()`; this is for fds obtained elsewhere.
   *
   * @param fd An fd open for reading on a pipe.
   * @param options How reads wait.
   */
  constructor(fd: number, options: PipeEndOptions = {}) {
    this.#spinner = new Spinner(
      checkSpin(options.spin, "Cannot create PipeReader"),
    );
    this.#fd = new OwnedFd(fd, "PipeReader");
  }

  /** The fd, for interop; the reader still owns it. */
  get rawFd(): number {
    return this.#fd.fd;
  }

  /** Shows the kind, fd and state, as `PipeReader { fd: 7, state: "open" }`. */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return inspectEndpoint("PipeReader", this.#fd.state(), inspect, options);
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#fd.closed;
  }

  /**
   * Reads what is available into `buffer`, waiting (without blocking the
   * thread) until at least one byte arrives.
   *
   * @param buffer Where to put the bytes: a `Uint8Array`, or any other
   * typed array or `DataView`, filled byte for byte.
   * @param options How the read spins, and a `signal` to give up waiting
   * (nothing is taken then: a later read gets the data).
   * @returns The number of bytes read, or `null` at EOF (every writer closed).
   * @throws {TypeError} When `buffer` is not an `ArrayBufferView`, or its
   * buffer was transferred away (also while the read waits: the data stays
   * for the next read). The promise rejects.
   * @throws The signal's reason when it is aborted.
   *
   * @example Stop waiting after 100 ms
   * ```ts
   * import { pipe } from "@conduit/ipc/pipe";
   *
   * using p = pipe();
   * const buf = new Uint8Array(64);
   * try {
   *   await p.reader.read(buf, { signal: AbortSignal.timeout(100) });
   * } catch (error) {
   *   console.log((error as Error).name); // "TimeoutError": nothing came
   * }
   * ```
   */
  read(buffer: ArrayBufferView, options?: ReadOptions): Promise<number | null> {
    return readChecked(
      this.#fd,
      readNoWait,
      buffer,
      options,
      this.#spinner,
      READ,
    );
  }

  /**
   * Reads what is available into `buffer`, blocking the thread until at
   * least one byte arrives.
   *
   * @param buffer Where to put the bytes (any `ArrayBufferView`).
   * @returns The number of bytes read, or `null` at EOF.
   * @throws {TypeError} When `buffer` is not an `ArrayBufferView`, or its
   * buffer was transferred away.
   *
   * @example Read what is already there
   * ```ts
   * import { pipe } from "@conduit/ipc/pipe";
   *
   * using p = pipe();
   * p.writer.writeSync(new Uint8Array([1, 2, 3]));
   * console.log(p.reader.readSync(new Uint8Array(8))); // 3
   * ```
   */
  readSync(buffer: ArrayBufferView): number | null {
    const into = asBytes(buffer, READ);
    if (into.byteLength === 0) {
      this.#fd.assertOpen();
      return 0;
    }
    flushBeforeSpin(); // what this thread sent may be what the peer awaits
    const n = readBlocking(this.#fd.fd, into);
    return n === 0 ? null : n;
  }

  /**
   * A byte stream of everything read until EOF. BYOB readers are filled in
   * place. Reaching EOF or cancelling the stream closes the reader. Its
   * reads wait like {@linkcode read} without options.
   */
  get readable(): ReadableStream<Uint8Array> {
    return this.#readable ??= byteReadable(
      (into) => this.read(into),
      () => this.close(),
      () => this.close(),
    );
  }

  /** Lets pending reads keep the process alive (the default). */
  ref(): void {
    this.#fd.ref();
  }

  /** Lets the process exit while a read is pending. */
  unref(): void {
    this.#fd.unref();
  }

  /** Closes the read end; pending reads reject with `BadResource`. Idempotent. */
  close(): void {
    this.#fd.close();
  }

  /** Closes the read end. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @ignore The kind of endpoint this is. */
  get [endpointKind](): EndpointKind {
    return "PipeReader";
  }

  /** @ignore Gives up the fd without closing it. */
  [releaseFd](): number {
    return this.#fd.release();
  }

  /** @ignore Whether {@linkcode readable} is locked to a reader. */
  [streamInUse](): boolean {
    return this.#readable?.locked === true;
  }
}

/**
 * The write end of a pipe, from {@linkcode pipe}, {@linkcode duplex} or
 * `fromFd()`.
 *
 * @example Pipe a stream of text through
 * ```ts
 * import { pipe } from "@conduit/ipc/pipe";
 *
 * const { reader, writer } = pipe();
 * const text = new Response(reader.readable).text();
 * await ReadableStream.from(["a", "b", "c"])
 *   .pipeThrough(new TextEncoderStream())
 *   .pipeTo(writer.writable); // closes the writer at the end
 * console.log(await text); // "abc"
 * ```
 */
export class PipeWriter implements Disposable {
  #fd: OwnedFd;
  #writes: OrderedWrites;
  #writable: WritableStream<Uint8Array> | undefined;

  /**
   * Takes ownership of a pipe's write end. Prefer {@linkcode pipe} or
   * `fromFd()`; this is for fds obtained elsewhere.
   *
   * @param fd An fd open for writing on a pipe.
   * @param options How writes wait for room.
   */
  constructor(fd: number, options: PipeEndOptions = {}) {
    const spinner = new Spinner(
      checkSpin(options.spin, "Cannot create PipeWriter"),
    );
    this.#fd = new OwnedFd(fd, "PipeWriter");
    this.#writes = new OrderedWrites(
      this.#fd,
      (fd, from) => brokenPipe(() => writeNoWait(fd, from)),
      (fd, from) => brokenPipe(() => writeAllBlocking(fd, from)),
      spinner,
    );
  }

  /** The fd, for interop; the writer still owns it. */
  get rawFd(): number {
    return this.#fd.fd;
  }

  /** Shows the kind, fd and state, as `PipeWriter { fd: 7, state: "open" }`. */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return inspectEndpoint("PipeWriter", this.#fd.state(), inspect, options);
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#fd.closed;
  }

  /**
   * Writes every byte, waiting (without blocking the thread) while the pipe
   * is full. What fits goes into the pipe before this returns; the rest is
   * queued. Concurrent writes leave in call order, never interleaved.
   *
   * A `signal` gives the write up while it waits for room: one that has
   * not started is withdrawn; one partly in the pipe rejects at once while
   * the rest of its bytes still follow (see {@linkcode WriteOptions}).
   *
   * @param bytes The bytes to write: a `Uint8Array`, or any other typed
   * array or `DataView`, written byte for byte.
   * @param options A `signal` to give up waiting for room.
   * @returns Resolves once every byte is in the pipe; rejects with
   * `Deno.errors.BrokenPipe` when no reader is left, with `TypeError`
   * when `bytes` is not an `ArrayBufferView` or its buffer was transferred
   * away, and with the signal's reason when it is aborted.
   *
   * @example Write more than the pipe holds while it is read
   * ```ts
   * import { pipe } from "@conduit/ipc/pipe";
   *
   * using p = pipe();
   * const written = p.writer.write(new Uint8Array(1 << 20)); // waits for room
   * const buf = new Uint8Array(64 * 1024);
   * let total = 0;
   * while (total < 1 << 20) total += (await p.reader.read(buf)) ?? 0;
   * await written;
   * console.log(total); // 1048576
   * ```
   */
  write(bytes: ArrayBufferView, options?: WriteOptions): Promise<void> {
    return this.#write(bytes, options?.signal);
  }

  #write(
    bytes: ArrayBufferView,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    let from: Uint8Array;
    try {
      from = asBytes(bytes, WRITE);
      checkSignal(signal, WRITE);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#writes.write(from, signal);
  }

  /**
   * Writes every byte, blocking the thread while the pipe is full.
   *
   * Calls stay in order: when earlier {@linkcode write} calls are still
   * pending, their remaining bytes are written first (blocking too, and
   * their promises resolve), then these bytes, so they never land inside an
   * earlier write.
   *
   * @param bytes The bytes to write (any `ArrayBufferView`).
   * @throws {TypeError} When `bytes` is not an `ArrayBufferView`, or its
   * buffer was transferred away.
   * @throws {Deno.errors.BrokenPipe} When no reader is left.
   *
   * @example Write without awaiting
   * ```ts
   * import { pipe } from "@conduit/ipc/pipe";
   *
   * using p = pipe();
   * p.writer.writeSync(new TextEncoder().encode("now"));
   * console.log(await p.reader.read(new Uint8Array(8))); // 3
   * ```
   */
  writeSync(bytes: ArrayBufferView): void {
    const from = asBytes(bytes, WRITE);
    flushBeforeSpin(); // what this thread sent may be what the peer awaits
    this.#writes.writeSync(from);
  }

  /**
   * A byte sink: each chunk (any `ArrayBufferView`) is written whole before
   * the next is taken. Closing the stream closes the writer once the writes
   * queued before (direct `write()` calls too) are done. Aborting it
   * discards, as a stream
   * abort does: the chunk that waits for room is given up and the writer
   * closed at once, so a chunk partly in the pipe is cut off there (the
   * reader sees EOF after part of it). A write that fails (`BrokenPipe`
   * once the reader is gone) errors the stream and closes the writer, as
   * Deno's streams close theirs.
   */
  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= byteWritable(
      WRITE,
      (chunk, signal) => this.#write(chunk, signal),
      async () => {
        try {
          await this.#writes.afterWrites();
        } catch {
          // A write that failed told its own caller.
        }
        this.close();
      },
      () => this.close(),
    );
  }

  /** Lets pending writes keep the process alive (the default). */
  ref(): void {
    this.#fd.ref();
  }

  /** Lets the process exit while a write is pending. */
  unref(): void {
    this.#fd.unref();
  }

  /** Closes the write end; pending writes reject with `BadResource`. Idempotent. */
  close(): void {
    this.#fd.close();
  }

  /** Closes the write end. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @ignore The kind of endpoint this is. */
  get [endpointKind](): EndpointKind {
    return "PipeWriter";
  }

  /** @ignore Gives up the fd without closing it. */
  [releaseFd](): number {
    return this.#fd.release();
  }
}

/** The two ends of a pipe. */
export interface Pipe extends Disposable {
  /** The read end. */
  reader: PipeReader;
  /** The write end. */
  writer: PipeWriter;
}

/** The buffer size asked for, under its name or its deprecated one, checked. */
function pipeBytes(options: PipeOptions): number | undefined {
  const { bytes, capacity } = options;
  if (bytes !== undefined && capacity !== undefined && bytes !== capacity) {
    throw new TypeError(
      `Cannot create pipe: bytes (${bytes}) and its deprecated name capacity (${capacity}) disagree; pass bytes only`,
    );
  }
  const value = bytes !== undefined ? bytes : capacity;
  if (value === undefined) return undefined;
  const name = bytes !== undefined ? "bytes" : "capacity";
  if (typeof value !== "number") {
    throw new TypeError(
      `Cannot create pipe: ${name} must be a number, got ${typeof value}`,
    );
  }
  if (!Number.isInteger(value) || value <= 0 || value > 2 ** 31 - 1) {
    throw new RangeError(
      `Cannot create pipe: ${name} must be a positive integer below 2^31, got ${value}`,
    );
  }
  return value;
}

/**
 * Creates a pipe: bytes written to `writer` come out of `reader`.
 *
 * @param options Pipe options.
 * @returns Both ends, each CLOEXEC; `using` closes both.
 *
 * @example A pipe with a 1 MiB buffer
 * ```ts
 * import { pipe } from "@conduit/ipc/pipe";
 *
 * using p = pipe({ bytes: 1 << 20 });
 * await p.writer.write(new Uint8Array([1, 2, 3]));
 * const buf = new Uint8Array(8);
 * console.log(await p.reader.read(buf)); // 3
 * ```
 */
export function pipe(options: PipeOptions = {}): Pipe {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(
      `Cannot create pipe: options must be an object, got ${
        options === null ? "null" : typeof options
      }`,
    );
  }
  const bytes = pipeBytes(options);
  const spin = checkSpin(options.spin, "Cannot create pipe");
  const lib = libc();
  const fds = new Int32Array(2);
  check("pipe2", lib.pipe2(fds, O.CLOEXEC));
  if (bytes !== undefined) {
    if (lib.fcntl(fds[1], F.SETPIPE_SZ, bytes) === -1) {
      const error = systemError(
        "fcntl(F_SETPIPE_SZ)",
        errno(),
        `bytes ${bytes}; see /proc/sys/fs/pipe-max-size`,
      );
      lib.close(fds[0]);
      lib.close(fds[1]);
      throw error;
    }
  }
  const reader = new PipeReader(fds[0], { spin });
  const writer = new PipeWriter(fds[1], { spin });
  return {
    reader,
    writer,
    [Symbol.dispose]() {
      reader.close();
      writer.close();
    },
  };
}

/** One side of a {@linkcode duplex}: it writes to the other side's reader. */
export interface DuplexEnd extends Disposable {
  /** Reads what the other side writes. */
  reader: PipeReader;
  /** Writes to the other side. */
  writer: PipeWriter;
}

/** The two sides of a {@linkcode duplex}; `using` closes all four ends. */
export type Duplex = [DuplexEnd, DuplexEnd] & Disposable;

/**
 * Two pipes in opposite directions: `a.writer` feeds `b.reader`, and
 * `b.writer` feeds `a.reader`. Hand one side to a child, keep the other.
 *
 * @param options Options for both pipes.
 * @returns The two sides; `using` closes both, as each side's own
 * `[Symbol.dispose]` closes its ends.
 *
 * @example Talk both ways
 * ```ts
 * import { duplex } from "@conduit/ipc/pipe";
 *
 * using pipes = duplex();
 * const [a, b] = pipes;
 * await a.writer.write(new TextEncoder().encode("ping"));
 * const buf = new Uint8Array(16);
 * const n = await b.reader.read(buf);
 * console.log(new TextDecoder().decode(buf.subarray(0, n ?? 0))); // "ping"
 * ```
 */
export function duplex(options: PipeOptions = {}): Duplex {
  const ab = pipe(options);
  let ba: Pipe;
  try {
    ba = pipe(options);
  } catch (error) {
    ab[Symbol.dispose]();
    throw error;
  }
  const side = (reader: PipeReader, writer: PipeWriter): DuplexEnd => ({
    reader,
    writer,
    [Symbol.dispose]() {
      reader.close();
      writer.close();
    },
  });
  const a = side(ba.reader, ab.writer);
  const b = side(ab.reader, ba.writer);
  return Object.assign([a, b] as [DuplexEnd, DuplexEnd], {
    [Symbol.dispose]() {
      a[Symbol.dispose]();
      b[Symbol.dispose]();
    },
  });
}
