/**
 * The send path of a `UnixSocket`: one attempt at once when
 * nothing waits, and otherwise the module's one send queue
 * ({@linkcode CallQueue}), which gathers the messages of one turn into
 * `sendmmsg` batches. A send that has to wait carries private copies of
 * its fds, closed once it is done.
 *
 * @module
 */

import {
  closedError,
  endpointFd,
  ERRNO,
  type SystemError,
} from "./ffi/errors.ts";
import { F, SOCK } from "./ffi/layout.ts";
import { libc } from "./ffi/libc.ts";
import { dupCloexec, type OwnedFd } from "./ffi/fd.ts";
import { Spinner } from "./ffi/spin.ts";
import { CallQueue, type QueuedCall, type QueueHost } from "./_call_queue.ts";
import type { FdEndpoint } from "./spawn.ts";
import {
  closeAll,
  MAX_FDS,
  sendAllBlocking,
  sendBlocking,
  sendMessage,
  sendMessages,
  sendNoWait,
} from "./_scm.ts";
import { getIntOption, type SocketType } from "./_socket_options.ts";
import {
  checkSignal,
  describe,
  detachedError,
  isDetached,
  lostWhileWaiting,
  pinned,
  transferredWhileWaiting,
} from "./_byte_io.ts";

const SEND = "Cannot send on UnixSocket";
const WRITE = "Cannot write to UnixSocket";
const EMPTY = new Uint8Array(0);
/** What a queued call rejects with when writing is shut at once. */
function shutAtOnce(call: string): Deno.errors.BrokenPipe {
  return new Deno.errors.BrokenPipe(
    `${call}: this socket's writing was shut down (its writable was aborted, or a write through it failed)`,
  );
}

/** Options for `UnixSocket.send()`. */
export interface SocketSendOptions {
  /**
   * Endpoints (or raw fds) to pass along (SCM_RIGHTS), at most 253. The
   * receiver gets its own copies; this process keeps its own unless
   * `closeSent` is set. On a stream socket they travel with the first byte
   * of this send, so the data must not be empty. A receiving `UnixSocket`
   * makes each an endpoint as `fromFd()` does: a raw fd of a kind none fits
   * (a regular file, a terminal, `/dev/null`) fails that receive, and the
   * message is lost.
   */
  fds?: readonly (FdEndpoint | number)[];
  /**
   * Close the endpoints in `fds` once they have been sent (raw fd numbers
   * are left alone). Default `false`.
   */
  closeSent?: boolean;
  /**
   * Aborting it while the send waits for room gives the send up: the
   * promise rejects with the signal's reason. A message, or stream bytes
   * not yet started, is taken out of the queue: nothing of it is sent (its
   * fds neither). Stream bytes partly out cannot be taken back: the promise
   * rejects at once, and the rest (copied, so the buffer may be reused)
   * still goes out ahead of later sends, so the peer never sees a torn
   * stream. Already aborted: the send rejects at once, without sending.
   */
  signal?: AbortSignal;
}

/** One send: what is left, the fds it carries, and who waits for it. */
interface SendJob extends QueuedCall<void> {
  /**
   * The message (datagram, seqpacket) or bytes (stream): the caller's
   * view, {@linkcode pinned} once the send waits, or a copy of the rest.
   */
  data: Uint8Array;
  /** How many bytes `data` had when the send was made. */
  length: number;
  /**
   * The fds to pass: the caller's own numbers while the send is tried at
   * once, this socket's private copies once it waits in the queue.
   */
  fds: number[];
  /** Whether `fds` are private copies, closed when the send is done. */
  copied: boolean;
  endpoints: FdEndpoint[];
  closeSent: boolean;
  /** Stream sockets: bytes already written. */
  offset: number;
  fdsSent: boolean;
  signal: AbortSignal | undefined;
  /** What a failure says was refused: "Cannot send on UnixSocket", ... */
  call: string;
  /**
   * Set on a mark that sends nothing: once every send queued before it is
   * done, this runs (the `shutdown(2)` of a `shutdown("write")` made while
   * sends waited).
   */
  barrier?: () => void;
}

const NO_OPTIONS: SocketSendOptions = Object.freeze({});

/** The sends of one socket, in call order. */
export class SocketSends implements QueueHost<SendJob, void> {
  #fd: OwnedFd;
  #type: SocketType;
  #queue: CallQueue<SendJob>;
  /** Whether this side's writing was shut down (or is, once sends drain). */
  #shut = false;
  /**
   * Whether it is shut down now: `shutdown(2)` was made (a pending
   * `shutdown("write")` waits behind queued sends, whose EPIPE is the
   * peer's doing), or writing was shut at once.
   */
  #shutNow = false;
  /** Barriers in the queue: a batch of messages stops before one. */
  #barriers = 0;
  /** What the queue was cancelled with when writing was shut at once. */
  #shutError: Error | undefined;

  /**
   * @param fd The socket's fd.
   * @param type Its type.
   */
  constructor(fd: OwnedFd, type: SocketType) {
    this.#fd = fd;
    this.#type = type;
    this.#queue = new CallQueue<SendJob>(this, new Spinner());
  }

  /** `UnixSocket.write()`: a send without fds. */
  write(bytes: Uint8Array, signal: AbortSignal | undefined): Promise<void> {
    return this.#send(bytes, NO_OPTIONS, signal, WRITE);
  }

  /** `UnixSocket.send()`. */
  send(bytes: Uint8Array, options: SocketSendOptions): Promise<void> {
    return this.#send(bytes, options, options.signal, SEND);
  }

  /**
   * Shuts down this side's writing with `now` (the `shutdown(2)` call):
   * at once when no send is queued (`now` throwing throws), else once the
   * sends queued before it are done, and the promise returned settles
   * then (rejecting with `now`'s error, or with the queue's when the
   * socket closes first). Sends made from here on are refused.
   */
  shutWrite(now: () => void): Promise<void> | undefined {
    if (this.#queue.length === 0) {
      now();
      this.#shut = true;
      this.#shutNow = true;
      return undefined;
    }
    this.#shut = true;
    this.#barriers++;
    return this.#queue.push({
      data: EMPTY,
      length: 0,
      fds: [],
      copied: false,
      endpoints: [],
      closeSent: false,
      offset: 0,
      fdsSent: true,
      signal: undefined,
      call: "Cannot shut down UnixSocket",
      barrier: () => {
        now();
        this.#shutNow = true;
      },
    });
  }

  /**
   * Writing was shut down at once: later sends are refused, and queued
   * ones, which could never finish now, reject (one partly out still holds
   * its place, its caller answered).
   */
  markShut(): void {
    this.#shut = true;
    this.#shutNow = true;
    // Each queued call rejects in its own words (see failed()); a stream
    // write partly out, which hears at once, with this one.
    const error = shutAtOnce(WRITE);
    this.#shutError = error;
    this.#queue.cancel(error);
  }

  /** Whether this side's writing is shut down, or will be once sends drain. */
  get shut(): boolean {
    return this.#shut;
  }

  #send(
    bytes: Uint8Array,
    options: SocketSendOptions,
    signal: AbortSignal | undefined,
    call: string,
  ): Promise<void> {
    let job: SendJob | undefined;
    try {
      checkSignal(signal, call);
      job = this.#prepareSend(bytes, options, signal, call);
      // Nothing waits before it: try right away. Further messages of this
      // turn are gathered and leave together (sendmmsg).
      if (this.#queue.clear) {
        const done = this.#step(job);
        if (this.#type !== "stream") this.#queue.gather();
        if (done) {
          this.#finishSend(job);
          return Promise.resolve();
        }
      }
      // The caller may close or reuse its fds before this send goes out:
      // it carries copies of its own.
      this.#copyFds(job);
      job.data = pinned(job.data);
    } catch (error) {
      return Promise.reject(
        this.#sendError(error, bytes?.byteLength ?? 0, call, job?.fds),
      );
    }
    return this.#queue.push(job);
  }

  /** `UnixSocket.sendSync()`: sends still queued go first. */
  sendSync(bytes: Uint8Array, options: SocketSendOptions): void {
    let job: SendJob | undefined;
    try {
      job = this.#prepareSend(bytes, options, undefined, SEND);
      this.#queue.drainBlocking();
      this.#sendWhole(job);
      this.#finishSend(job);
    } catch (error) {
      throw this.#sendError(error, bytes?.byteLength ?? 0, SEND, job?.fds);
    }
  }

  /** `UnixSocket.writeSync()`: writes still queued go first. */
  writeSync(from: Uint8Array): void {
    try {
      this.#assertNotShut(WRITE);
      this.#queue.drainBlocking();
      sendAllBlocking(this.#fd.fd, from);
    } catch (error) {
      throw this.#sendError(error, from.byteLength, WRITE);
    }
  }

  /**
   * Before the fd goes: sends gathered this turn that fit still leave (as
   * they would have at once), the rest reject with `BadResource`.
   */
  end(): void {
    this.#queue.end(closedError("UnixSocket"));
  }

  /**
   * Sends what is queued, as far as the socket takes it now: the first
   * stream write, or as many messages as one `sendmmsg` takes. How many
   * are done; a failure is the first one's.
   */
  advance(jobs: readonly SendJob[]): number {
    const head = jobs[0];
    if (head.barrier !== undefined) return 1;
    this.#checkAttached(head);
    if (this.#type === "stream") return this.#step(head) ? 1 : 0;
    // A batch stops before a barrier: what follows it waits for it.
    const upTo = this.#barriers > 0
      ? jobs.findIndex((job) => job.barrier !== undefined)
      : -1;
    const sent = sendMessages(
      this.#fd.fd,
      upTo === -1 ? jobs : jobs.slice(0, upTo),
      0,
    );
    return sent < 0 ? 0 : sent;
  }

  /** Whether some of a queued send is out: stream bytes only. */
  started(job: SendJob): boolean {
    return this.#type === "stream" && job.offset > 0;
  }

  /** Its caller gave up a started stream send: keep a copy of the rest. */
  abandon(job: SendJob): void {
    this.#checkAttached(job);
    job.data = job.data.slice(job.offset);
    job.length = job.data.byteLength;
    job.offset = 0;
  }

  /**
   * Throws when a queued send's bytes were lost meanwhile: its buffer
   * transferred away or shrunk below them.
   */
  #checkAttached(job: SendJob): void {
    if (lostWhileWaiting(job.data, job.length)) {
      throw transferredWhileWaiting(SEND, "send", job.offset, job.data);
    }
  }

  /** Waits for room. */
  park(_head: SendJob, signal: AbortSignal | undefined): Promise<void> {
    return this.#fd.wait("write", signal);
  }

  /**
   * A queued send went out: its copies closed, its fds closed if asked. A
   * barrier runs its call now.
   */
  done(job: SendJob): void {
    if (job.barrier !== undefined) {
      this.#barriers--;
      job.barrier();
      return;
    }
    this.#closeCopies(job);
    this.#finishSend(job);
  }

  /** A queued send failed: its copies closed; the error the caller gets. */
  failed(job: SendJob, error: unknown): unknown {
    if (error !== undefined && error === this.#shutError) {
      error = shutAtOnce(job.call);
    }
    if (job.barrier !== undefined) {
      this.#barriers--;
      return error;
    }
    this.#closeCopies(job);
    return this.#sendError(error, job.data.byteLength, job.call);
  }

  /** Sends all of a queued job, blocking while the peer is full. */
  finishBlocking(job: SendJob): void {
    if (job.barrier !== undefined) return;
    this.#checkAttached(job);
    this.#sendWhole(job);
  }

  #closeCopies(job: SendJob): void {
    if (job.copied) {
      closeAll(job.fds);
      job.copied = false;
    }
  }

  /**
   * Refuses a send once this side's writing is shut down: the kernel's
   * EPIPE would say the peer is gone.
   */
  #assertNotShut(call: string): void {
    if (!this.#shut) return;
    throw new Deno.errors.BrokenPipe(
      `${call}: this socket's writing was shut down (shutdown("write"))`,
    );
  }

  #prepareSend(
    bytes: Uint8Array,
    options: SocketSendOptions,
    signal: AbortSignal | undefined,
    call: string,
  ): SendJob {
    this.#fd.assertOpen();
    if (!(bytes instanceof Uint8Array)) {
      throw new TypeError(
        `${call}: bytes must be a Uint8Array, got ${describe(bytes)}`,
      );
    }
    // A transferred buffer leaves a view of length 0: only then look.
    if (bytes.byteLength === 0 && isDetached(bytes)) {
      throw detachedError(call);
    }
    const given = options.fds ?? [];
    if (!Array.isArray(given)) {
      throw new TypeError(
        `${call}: fds must be an array of endpoints or fds, got ${
          describe(given)
        }`,
      );
    }
    if (given.length > MAX_FDS) {
      throw new RangeError(
        `${call}: ${given.length} fds in one message, at most ${MAX_FDS} allowed`,
      );
    }
    this.#assertNotShut(call);
    const fds: number[] = [];
    const endpoints: FdEndpoint[] = [];
    for (const [i, value] of given.entries()) {
      const fd = typeof value === "number"
        ? value
        : typeof value === "object" && value !== null && "rawFd" in value
        ? endpointFd(value, call, `fds[${i}]`)
        : undefined;
      if (fd === undefined || !Number.isInteger(fd) || fd < 0) {
        throw new TypeError(
          `${call}: fds[${i}] is not an endpoint or an fd`,
        );
      }
      fds.push(fd);
      if (typeof value !== "number") endpoints.push(value);
    }
    if (fds.length > 0 && this.#type === "stream" && bytes.byteLength === 0) {
      throw new RangeError(
        `${call}: fds on a stream socket need at least one byte of data to travel with`,
      );
    }
    return {
      data: bytes,
      length: bytes.byteLength,
      fds,
      copied: false,
      endpoints,
      closeSent: options.closeSent === true,
      offset: 0,
      fdsSent: fds.length === 0,
      signal,
      call,
    };
  }

  /** Replaces the fds of a send that will wait with private copies. */
  #copyFds(job: SendJob): void {
    if (job.fdsSent || job.copied) return;
    const copies: number[] = [];
    for (const [i, fd] of job.fds.entries()) {
      try {
        copies.push(dupCloexec(fd));
      } catch (error) {
        closeAll(copies);
        throw new Deno.errors.BadResource(
          `${job.call}: fds[${i}] (fd ${fd}) cannot be kept until the send: ${
            (error as Error).message
          }`,
          { cause: error },
        );
      }
    }
    job.fds = copies;
    job.copied = true;
  }

  /** Sends all of a job, blocking while the peer is full. */
  #sendWhole(job: SendJob): void {
    const fd = this.#fd.fd;
    if (!job.fdsSent || (this.#type !== "stream" && job.offset === 0)) {
      const n = job.fds.length > 0
        ? sendMessage(fd, job.data, job.fds, true)
        : sendBlocking(fd, job.data);
      job.offset = n;
      job.fdsSent = true;
      if (this.#type !== "stream") {
        this.#checkWhole(n, job);
        return;
      }
    }
    if (job.offset < job.data.byteLength) {
      sendAllBlocking(fd, job.data.subarray(job.offset));
      job.offset = job.data.byteLength;
    }
  }

  /** One attempt without blocking; true when the whole send is done. */
  #step(job: SendJob): boolean {
    const fd = this.#fd.fd;
    if (this.#type !== "stream") {
      const n = job.fds.length > 0
        ? sendMessage(fd, job.data, job.fds, false)
        : sendNoWait(fd, job.data);
      if (n < 0) return false;
      this.#checkWhole(n, job);
      return true;
    }
    if (!job.fdsSent) {
      const n = sendMessage(fd, job.data, job.fds, false);
      if (n < 0) return false;
      job.fdsSent = true;
      job.offset = n;
    }
    while (job.offset < job.data.byteLength) {
      const n = sendNoWait(fd, job.data.subarray(job.offset));
      if (n < 0) return false;
      job.offset += n;
    }
    return true;
  }

  #checkWhole(n: number, job: SendJob): void {
    // The kernel sends datagrams and packets whole or not at all.
    if (n !== job.data.byteLength) {
      throw new RangeError(
        `Cannot send on UnixSocket: only ${n} of ${job.data.byteLength} bytes of the message were sent`,
      );
    }
  }

  #finishSend(job: SendJob): void {
    if (!job.closeSent) return;
    for (const endpoint of job.endpoints) {
      (endpoint as { close?: () => void }).close?.();
    }
  }

  #sendError(
    error: unknown,
    size: number,
    call: string,
    fds?: readonly number[],
  ): unknown {
    const code = (error as Partial<SystemError>)?.errno;
    if (code === undefined) return error;
    if (code === ERRNO.EBADF && fds !== undefined) {
      // The socket is open (checked first): an fd to pass is not.
      const lib = libc();
      const i = fds.findIndex((fd) => lib.fcntl(fd, F.GETFD, 0) === -1);
      if (i !== -1) {
        return new Deno.errors.BadResource(
          `${call}: fds[${i}] (fd ${fds[i]}) is not an open fd`,
          { cause: error },
        );
      }
    }
    if (code === ERRNO.EPIPE && this.#shutNow) {
      return new Deno.errors.BrokenPipe(
        `${call}: this socket's writing was shut down (shutdown("write"))`,
        { cause: error },
      );
    }
    if (
      code === ERRNO.EPIPE || code === ERRNO.ECONNREFUSED ||
      code === ERRNO.ECONNRESET || code === ERRNO.ENOTCONN
    ) {
      return new Deno.errors.BrokenPipe(
        `${call}: the peer is gone or no longer reads (${
          (error as SystemError).code
        })`,
        { cause: error },
      );
    }
    if (code === ERRNO.EMSGSIZE) {
      let limit = "";
      try {
        const sndbuf = getIntOption(this.#fd.fd, SOCK.SO_SNDBUF, "SO_SNDBUF");
        limit = ` of ${sndbuf - 32} bytes (SO_SNDBUF ${sndbuf})`;
      } catch {
        // The limit is only detail for the message.
      }
      return new RangeError(
        `${call}: message of ${size} bytes exceeds the socket's limit${limit}`,
        { cause: error },
      );
    }
    if (code === ERRNO.ETOOMANYREFS) {
      return new RangeError(
        `${call}: too many fds are in flight to unread sockets (ETOOMANYREFS)`,
        { cause: error },
      );
    }
    return error;
  }
}
