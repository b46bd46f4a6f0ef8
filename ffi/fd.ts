/**
 * One owner per fd: {@linkcode OwnedFd} closes it once, takes it out of the
 * poller first, and waits for readiness on behalf of the endpoint that holds
 * it. Also the per-call nonblocking read and write primitives.
 *
 * @module
 */

import { libc } from "./libc.ts";
import { check, closedError, retry, tryIo } from "./errors.ts";
import { F, IOVEC, RWF_NOWAIT } from "./layout.ts";
import { addressOf, mayMove, pointerOf, stableBuffer } from "./mem.ts";
import { type Interest, poller, type PollHandle } from "./poller.ts";
import type { FdState } from "../_inspect.ts";

/** An fd and the poller registration that goes with it. */
export class OwnedFd {
  #fd: number;
  #what: string;
  #handle: PollHandle | undefined;
  #ref = true;
  #closed = false;

  /**
   * @param fd The fd, which this object now owns.
   * @param what The endpoint's name, for error messages.
   */
  constructor(fd: number, what: string) {
    this.#fd = fd;
    this.#what = what;
  }

  /** The fd; throws `BadResource` once closed. */
  get fd(): number {
    if (this.#closed) throw closedError(this.#what);
    return this.#fd;
  }

  /** The endpoint's name, for error messages. */
  get what(): string {
    return this.#what;
  }

  /**
   * Whether a wait on this fd sees readiness there at once (its poll is
   * direct, and completes inside the submit when the fd is ready) rather
   * than after a turn of the event loop.
   */
  get waitsDirectly(): boolean {
    return poller().canPollDirect && this.#handle?.viaSet !== true;
  }

  /** Whether {@linkcode close} or {@linkcode release} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether a pending wait keeps the process alive (see `ref()`). */
  get refed(): boolean {
    return this.#ref;
  }

  /** The fd number and state, for an endpoint's inspection. */
  state(): FdState {
    if (this.#closed) return { state: "closed" };
    return this.#ref
      ? { fd: this.#fd, state: "open" }
      : { fd: this.#fd, state: "open", ref: false };
  }

  /** Throws `BadResource` when closed. */
  assertOpen(): void {
    if (this.#closed) throw closedError(this.#what);
  }

  /**
   * Waits until the fd may be ready; rejects with `BadResource` on close,
   * or with the signal's reason when `signal` is aborted.
   */
  wait(interest: Interest, signal?: AbortSignal): Promise<void> {
    if (this.#closed) return Promise.reject(closedError(this.#what));
    return this.#registered().wait(interest, signal);
  }

  /**
   * {@linkcode wait} without a promise (see `PollHandle.waitThen`): `ready`
   * is called from the poller's dispatch, `fail` with why the wait ended
   * otherwise, at once when it cannot start.
   */
  waitThen(
    interest: Interest,
    ready: () => void,
    fail: (error: unknown) => void,
    signal?: AbortSignal,
  ): void {
    if (this.#closed) return fail(closedError(this.#what));
    this.#registered().waitThen(interest, ready, fail, signal);
  }

  #registered(): PollHandle {
    if (this.#handle === undefined) {
      this.#handle = poller().register(this.#fd);
      if (!this.#ref) this.#handle.unref();
    }
    return this.#handle;
  }

  /** Pending waits keep the process alive (the default). */
  ref(): void {
    this.#ref = true;
    this.#handle?.ref();
  }

  /** Pending waits do not keep the process alive. */
  unref(): void {
    this.#ref = false;
    this.#handle?.unref();
  }

  /** Closes the fd, settling pending waits first. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#detach();
    libc().close(this.#fd);
  }

  /**
   * Gives up ownership without closing: returns the fd, and every later use
   * of this object fails as if it were closed.
   */
  release(): number {
    this.assertOpen();
    this.#detach();
    return this.#fd;
  }

  #detach(): void {
    this.#closed = true;
    this.#handle?.close(closedError(this.#what));
    this.#handle = undefined;
  }
}

// One iovec and one bounce buffer serve every call: calls are synchronous on
// the JS thread, so they never overlap.
const iovBuffer = stableBuffer(IOVEC.size);
const iovWords = new BigUint64Array(iovBuffer, 0, 2);
let iovPointer: Deno.PointerValue | undefined;
const bounce = new Uint8Array(stableBuffer(64));

function iov(view: Uint8Array): Deno.PointerValue {
  iovWords[0] = addressOf(view);
  iovWords[1] = BigInt(view.byteLength);
  return iovPointer ??= pointerOf(iovBuffer);
}

/**
 * Reads once without blocking (preadv2 with RWF_NOWAIT): bytes read, 0 at
 * EOF, or -1 when nothing is ready. The open file description stays blocking,
 * so a process that shares the fd is not affected.
 */
export function readNoWait(fd: number, into: Uint8Array): number {
  if (into.byteLength === 0) return 0;
  if (mayMove(into)) {
    const part = bounce.subarray(0, into.byteLength);
    const n = tryIo(
      "preadv2",
      () => libc().preadv2(fd, iov(part), 1, -1n, RWF_NOWAIT),
    );
    if (n > 0) into.set(part.subarray(0, n));
    return n;
  }
  return tryIo(
    "preadv2",
    () => libc().preadv2(fd, iov(into), 1, -1n, RWF_NOWAIT),
  );
}

/**
 * Writes once without blocking (pwritev2 with RWF_NOWAIT): bytes written
 * (possibly fewer than given), or -1 when nothing fits now.
 */
export function writeNoWait(fd: number, from: Uint8Array): number {
  if (from.byteLength === 0) return 0;
  let view = from;
  if (mayMove(from)) {
    view = bounce.subarray(0, from.byteLength);
    view.set(from);
  }
  return tryIo(
    "pwritev2",
    () => libc().pwritev2(fd, iov(view), 1, -1n, RWF_NOWAIT),
  );
}

/** Blocking read: bytes read, 0 at EOF. Retries on EINTR. */
export function readBlocking(fd: number, into: Uint8Array): number {
  return retry("read", () => libc().read(fd, into, BigInt(into.byteLength)));
}

/** Blocking write of every byte. Retries on EINTR. */
export function writeAllBlocking(fd: number, from: Uint8Array): void {
  let done = 0;
  while (done < from.byteLength) {
    const part = from.subarray(done);
    done += retry(
      "write",
      () => libc().write(fd, part, BigInt(part.byteLength)),
    );
  }
}

/** Duplicates an fd above `min`, CLOEXEC. */
export function dupCloexec(fd: number, min = 3): number {
  return check("fcntl", libc().fcntl(fd, F.DUPFD_CLOEXEC, min));
}
