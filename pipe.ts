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
import { check, errno, systemError } from "./ffi/errors.ts";
import { F, O } from "./ffi/layout.ts";
import {
  OwnedFd,
  readBlocking,
  readNoWait,
  writeAllBlocking,
  writeNoWait,
} from "./ffi/fd.ts";
import {
  byteReadable,
  byteWritable,
  readAsync,
  type ReadOptions,
  Serial,
  writeAllAsync,
} from "./_byte_io.ts";

export type { ReadOptions } from "./_byte_io.ts";

/** Options for {@linkcode pipe}. */
export interface PipeOptions {
  /**
   * The pipe's buffer size in bytes (`F_SETPIPE_SZ`). The kernel rounds it up
   * to a power of two pages; an unprivileged process may ask up to
   * `/proc/sys/fs/pipe-max-size` (1 MiB by default). Default: the kernel's
   * (64 KiB).
   */
  capacity?: number;
}

/** The read end of a pipe. */
export class PipeReader implements Disposable {
  #fd: OwnedFd;
  #readable: ReadableStream<Uint8Array> | undefined;

  /**
   * Takes ownership of a pipe's read end. Prefer {@linkcode pipe} or
   * `fromFd()`; this is for fds obtained elsewhere.
   *
   * @param fd An fd open for reading on a pipe.
   */
  constructor(fd: number) {
    this.#fd = new OwnedFd(fd, "PipeReader");
  }

  /** The fd, for interop; the reader still owns it. */
  get rawFd(): number {
    return this.#fd.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#fd.closed;
  }

  /**
   * Reads what is available into `buffer`, waiting (without blocking the
   * thread) until at least one byte arrives.
   *
   * @param buffer Where to put the bytes.
   * @param options Read options.
   * @returns The number of bytes read, or `null` at EOF (every writer closed).
   */
  read(buffer: Uint8Array, options?: ReadOptions): Promise<number | null> {
    return readAsync(this.#fd, readNoWait, buffer, options?.spin);
  }

  /**
   * Reads what is available into `buffer`, blocking the thread until at
   * least one byte arrives.
   *
   * @param buffer Where to put the bytes.
   * @returns The number of bytes read, or `null` at EOF.
   */
  readSync(buffer: Uint8Array): number | null {
    if (buffer.byteLength === 0) {
      this.#fd.assertOpen();
      return 0;
    }
    const n = readBlocking(this.#fd.fd, buffer);
    return n === 0 ? null : n;
  }

  /**
   * A byte stream of everything read until EOF. BYOB readers are filled in
   * place. Reaching EOF or cancelling the stream closes the reader.
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

  /** @internal Gives up the fd without closing it. */
  _release(): number {
    return this.#fd.release();
  }
}

/** The write end of a pipe. */
export class PipeWriter implements Disposable {
  #fd: OwnedFd;
  #serial = new Serial();
  #writable: WritableStream<Uint8Array> | undefined;

  /**
   * Takes ownership of a pipe's write end. Prefer {@linkcode pipe} or
   * `fromFd()`; this is for fds obtained elsewhere.
   *
   * @param fd An fd open for writing on a pipe.
   */
  constructor(fd: number) {
    this.#fd = new OwnedFd(fd, "PipeWriter");
  }

  /** The fd, for interop; the writer still owns it. */
  get rawFd(): number {
    return this.#fd.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#fd.closed;
  }

  /**
   * Writes every byte, waiting (without blocking the thread) while the pipe
   * is full. Concurrent writes are queued, never interleaved.
   *
   * @param bytes The bytes to write.
   * @returns Resolves once every byte is in the pipe; rejects with
   * `Deno.errors.BrokenPipe` when no reader is left.
   */
  write(bytes: Uint8Array): Promise<void> {
    return this.#serial.run(() => writeAllAsync(this.#fd, writeNoWait, bytes));
  }

  /**
   * Writes every byte, blocking the thread while the pipe is full.
   *
   * @param bytes The bytes to write.
   */
  writeSync(bytes: Uint8Array): void {
    writeAllBlocking(this.#fd.fd, bytes);
  }

  /**
   * A byte sink: each chunk is written whole before the next is taken.
   * Closing or aborting the stream closes the writer.
   */
  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= byteWritable(
      (chunk) => this.write(chunk),
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

  /** @internal Gives up the fd without closing it. */
  _release(): number {
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
 * using p = pipe({ capacity: 1 << 20 });
 * await p.writer.write(new Uint8Array([1, 2, 3]));
 * const buf = new Uint8Array(8);
 * console.log(await p.reader.read(buf)); // 3
 * ```
 */
export function pipe(options: PipeOptions = {}): Pipe {
  const { capacity } = options;
  if (
    capacity !== undefined &&
    (!Number.isInteger(capacity) || capacity <= 0 || capacity > 2 ** 31 - 1)
  ) {
    throw new RangeError(
      `Cannot create pipe: capacity must be a positive integer, got ${capacity}`,
    );
  }
  const lib = libc();
  const fds = new Int32Array(2);
  check("pipe2", lib.pipe2(fds, O.CLOEXEC));
  if (capacity !== undefined) {
    if (lib.fcntl(fds[1], F.SETPIPE_SZ, capacity) === -1) {
      const error = systemError(
        "fcntl(F_SETPIPE_SZ)",
        errno(),
        `capacity ${capacity}; see /proc/sys/fs/pipe-max-size`,
      );
      lib.close(fds[0]);
      lib.close(fds[1]);
      throw error;
    }
  }
  const reader = new PipeReader(fds[0]);
  const writer = new PipeWriter(fds[1]);
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

/**
 * Two pipes in opposite directions: `a.writer` feeds `b.reader`, and
 * `b.writer` feeds `a.reader`. Hand one side to a child, keep the other.
 *
 * @param options Options for both pipes.
 * @returns The two sides.
 *
 * @example Talk both ways
 * ```ts
 * import { duplex } from "@conduit/ipc/pipe";
 *
 * const [a, b] = duplex();
 * await a.writer.write(new TextEncoder().encode("ping"));
 * const buf = new Uint8Array(16);
 * const n = await b.reader.read(buf);
 * console.log(new TextDecoder().decode(buf.subarray(0, n ?? 0))); // "ping"
 * a[Symbol.dispose]();
 * b[Symbol.dispose]();
 * ```
 */
export function duplex(options: PipeOptions = {}): [DuplexEnd, DuplexEnd] {
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
  return [side(ba.reader, ab.writer), side(ab.reader, ba.writer)];
}
