/**
 * The poller: one per process (and per Worker). It keeps a single
 * nonblocking `epoll_wait` in flight over every fd that anyone waits on, plus
 * a private eventfd to cancel that wait. All real I/O happens synchronously on
 * the JS thread; this only says when to retry.
 *
 * - Interest is armed per fd with EPOLLONESHOT and re-armed while waiters
 *   remain; epoll_ctl from the JS thread is seen by the in-flight wait.
 * - Each registration carries a fresh token in `epoll_data`, so an event that
 *   was already collected for a closed fd can never reach a later fd that
 *   reuses its number.
 * - While only unref'd waiters are left, no call is in flight (a pending call
 *   keeps the process alive); an unref'd timer polls with a zero timeout
 *   instead, so the process can exit by itself.
 *
 * @module
 */

import { libc } from "./libc.ts";
import { check, closedError, ERRNO, errno, systemError } from "./errors.ts";
import { EFD, EPOLL, EPOLL_EVENT } from "./layout.ts";
import { pointerOf, stableBuffer } from "./mem.ts";

const MAX_EVENTS = 256;
const UNREF_POLL_MS = 10;
const EVENTFD_TOKEN = 0;

const READ_READY = EPOLL.IN | EPOLL.HUP | EPOLL.ERR | EPOLL.RDHUP;
const WRITE_READY = EPOLL.OUT | EPOLL.HUP | EPOLL.ERR;

interface Waiter {
  resolve(): void;
  reject(error: Error): void;
}

/** Which readiness a caller waits for. */
export type Interest = "read" | "write";

/**
 * One fd's place in the poller. The owner of the fd creates it, waits on it,
 * and closes it before closing the fd.
 */
export class PollHandle {
  readonly fd: number;
  readonly token: number;
  #poller: Poller;
  #readers: Waiter[] = [];
  #writers: Waiter[] = [];
  #ref = true;
  #inSet = false;
  #closed = false;

  constructor(poller: Poller, fd: number, token: number) {
    this.#poller = poller;
    this.fd = fd;
    this.token = token;
  }

  /** Whether waits on this handle keep the process alive. */
  get refed(): boolean {
    return this.#ref;
  }

  /** Number of pending waits. */
  get pending(): number {
    return this.#readers.length + this.#writers.length;
  }

  /**
   * Resolves once the fd may be ready for `interest` (or has hung up or
   * failed: the caller retries its sync call and sees which). Aborting
   * `signal` takes this one wait out and rejects it with the signal's reason.
   */
  wait(interest: Interest, signal?: AbortSignal): Promise<void> {
    if (this.#closed) return Promise.reject(closedError(`fd ${this.fd}`));
    if (signal?.aborted) return Promise.reject(signal.reason);
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    const waiter: Waiter = { resolve, reject };
    if (signal !== undefined) {
      const onAbort = () => {
        const list = interest === "read" ? this.#readers : this.#writers;
        const at = list.indexOf(waiter);
        if (at === -1) return;
        list.splice(at, 1);
        this.#poller.waitersChanged(this, -1);
        reject(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      const done = () => signal.removeEventListener("abort", onAbort);
      waiter.resolve = () => {
        done();
        resolve();
      };
      waiter.reject = (error) => {
        done();
        reject(error);
      };
    }
    (interest === "read" ? this.#readers : this.#writers).push(waiter);
    this.#arm();
    this.#poller.waitersChanged(this, 1);
    return promise;
  }

  /** Makes pending and later waits keep the process alive (the default). */
  ref(): void {
    if (this.#ref) return;
    this.#ref = true;
    this.#poller.refChanged(this);
  }

  /** Lets the process exit while waits on this handle are pending. */
  unref(): void {
    if (!this.#ref) return;
    this.#ref = false;
    this.#poller.refChanged(this);
  }

  /**
   * Removes the fd from the poller and rejects pending waits with `error`.
   * Call before closing the fd. Idempotent.
   */
  close(error?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#inSet) {
      this.#poller.ctl(EPOLL.CTL_DEL, this.fd, 0, this.token);
      this.#inSet = false;
    }
    const waiters = [...this.#readers, ...this.#writers];
    this.#readers = [];
    this.#writers = [];
    this.#poller.forget(this, waiters.length);
    const reason = error ?? closedError(`fd ${this.fd}`);
    for (const waiter of waiters) waiter.reject(reason);
  }

  /** Called by the poller with the events epoll reported for this handle. */
  dispatch(events: number): void {
    let woken = 0;
    if (events & READ_READY && this.#readers.length > 0) {
      const readers = this.#readers;
      this.#readers = [];
      woken += readers.length;
      for (const waiter of readers) waiter.resolve();
    }
    if (events & WRITE_READY && this.#writers.length > 0) {
      const writers = this.#writers;
      this.#writers = [];
      woken += writers.length;
      for (const waiter of writers) waiter.resolve();
    }
    // EPOLLONESHOT disarmed the fd; arm again for whoever still waits.
    this.#arm();
    if (woken > 0) this.#poller.waitersChanged(this, -woken);
  }

  #arm(): void {
    let mask = 0;
    if (this.#readers.length > 0) mask |= EPOLL.IN | EPOLL.RDHUP;
    if (this.#writers.length > 0) mask |= EPOLL.OUT;
    if (mask === 0) return;
    mask |= EPOLL.ONESHOT;
    if (this.#inSet) {
      this.#poller.ctl(EPOLL.CTL_MOD, this.fd, mask, this.token);
    } else {
      this.#poller.ctl(EPOLL.CTL_ADD, this.fd, mask, this.token);
      this.#inSet = true;
    }
  }
}

/** The per-process poller. Use {@linkcode poller} to get it. */
export class Poller {
  #epfd = -1;
  #evfd = -1;
  #events: ArrayBuffer;
  #eventsView: DataView;
  #eventsPtr: Deno.PointerValue;
  #ctlBuf = new Uint8Array(new ArrayBuffer(64));
  #ctlView = new DataView(this.#ctlBuf.buffer);
  #evBuf = new Uint8Array(new ArrayBuffer(64));
  #handles = new Map<number, PollHandle>();
  #nextToken = 1;
  #refWaiting = 0;
  #waiting = 0;
  #inFlight = false;
  #kicked = false;
  #dispatching = false;
  #idleWaiters: (() => void)[] = [];
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor() {
    this.#events = stableBuffer(MAX_EVENTS * EPOLL_EVENT.size);
    this.#eventsView = new DataView(this.#events);
    this.#eventsPtr = pointerOf(this.#events);
  }

  // The epoll fd and the eventfd exist only while some fd is registered: a
  // Worker that closed its endpoints leaves nothing open behind when it ends.
  #open(): void {
    if (this.#epfd !== -1) return;
    const lib = libc();
    const epfd = check("epoll_create1", lib.epoll_create1(EPOLL.CLOEXEC));
    const evfd = lib.eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK);
    if (evfd === -1) {
      const error = systemError("eventfd", errno());
      lib.close(epfd);
      throw error;
    }
    this.#epfd = epfd;
    this.#evfd = evfd;
    this.ctl(EPOLL.CTL_ADD, evfd, EPOLL.IN, EVENTFD_TOKEN);
  }

  #release(): void {
    if (this.#epfd === -1) return;
    const lib = libc();
    lib.close(this.#evfd);
    lib.close(this.#epfd);
    this.#epfd = -1;
    this.#evfd = -1;
  }

  /** Registers an fd; the returned handle must be closed before the fd. */
  register(fd: number): PollHandle {
    this.#open();
    const token = this.#nextToken++;
    const handle = new PollHandle(this, fd, token);
    this.#handles.set(token, handle);
    return handle;
  }

  /** Number of fds registered (for tests and diagnostics). */
  get size(): number {
    return this.#handles.size;
  }

  /** Whether a nonblocking wait is in flight (for tests and diagnostics). */
  get busy(): boolean {
    return this.#inFlight;
  }

  /**
   * Resolves once no wait is in flight: after the last ref'd waiter left,
   * the cancelled wait still takes a moment to return.
   */
  idle(): Promise<void> {
    if (!this.#inFlight) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#idleWaiters.push(resolve);
    return promise;
  }

  /** @internal */
  ctl(op: number, fd: number, events: number, token: number): void {
    const view = this.#ctlView;
    view.setUint32(EPOLL_EVENT.events, events, true);
    view.setUint32(EPOLL_EVENT.data, token % 0x1_0000_0000, true);
    view.setUint32(
      EPOLL_EVENT.data + 4,
      Math.floor(token / 0x1_0000_0000),
      true,
    );
    const result = libc().epoll_ctl(this.#epfd, op, fd, this.#ctlBuf);
    if (result === -1) {
      const code = errno();
      // The fd may already be gone from the set when its last reference
      // closed; removing it again is not an error.
      if (
        op === EPOLL.CTL_DEL && (code === ERRNO.ENOENT || code === ERRNO.EBADF)
      ) {
        return;
      }
      throw systemError("epoll_ctl", code, `fd ${fd}`);
    }
  }

  /** @internal */
  waitersChanged(handle: PollHandle, delta: number): void {
    this.#waiting += delta;
    if (handle.refed) this.#refWaiting += delta;
    this.#schedule();
  }

  /** @internal */
  refChanged(handle: PollHandle): void {
    const n = handle.pending;
    this.#refWaiting += handle.refed ? n : -n;
    this.#schedule();
  }

  /** @internal */
  forget(handle: PollHandle, pending: number): void {
    this.#handles.delete(handle.token);
    this.#waiting -= pending;
    if (handle.refed) this.#refWaiting -= pending;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#dispatching) return;
    if (this.#refWaiting > 0) {
      this.#clearTimer();
      if (!this.#inFlight) this.#startWait();
      return;
    }
    if (this.#inFlight && !this.#kicked) {
      // Nothing ref'd waits: end the in-flight wait so the process may exit.
      this.#kicked = true;
      const one = new BigUint64Array(this.#evBuf.buffer, 0, 1);
      one[0] = 1n;
      libc().write(this.#evfd, this.#evBuf, 8n);
    }
    // The last waiter left: a pending poll timer would only fire for nothing
    // (and shows up as a leaked timer in a test with sanitizeOps).
    if (this.#waiting === 0) this.#clearTimer();
    if (this.#handles.size === 0 && !this.#inFlight) {
      this.#release();
      return;
    }
    if (this.#waiting > 0 && !this.#inFlight && this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#dispatch(
          libc().epoll_wait(
            this.#epfd,
            this.#eventsPtr,
            MAX_EVENTS,
            0,
          ),
        );
        this.#schedule();
      }, UNREF_POLL_MS);
      Deno.unrefTimer(this.#timer as unknown as number);
    }
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  #startWait(): void {
    this.#inFlight = true;
    libc().epoll_wait_nb(this.#epfd, this.#eventsPtr, MAX_EVENTS, -1).then(
      (n) => {
        // The call is over before anything is dispatched, so a waiter that
        // leaves during dispatch never kicks a wait that already returned.
        this.#inFlight = false;
        if (this.#kicked) {
          this.#kicked = false;
          this.#drainEventfd();
        }
        // errno of a pool thread is meaningless; -1 is EINTR in practice,
        // and the next wait simply starts again. (No wait starts while the
        // events buffer is being read: the next call writes into it.)
        this.#dispatch(n);
        this.#schedule();
        if (!this.#inFlight && this.#idleWaiters.length > 0) {
          const waiters = this.#idleWaiters;
          this.#idleWaiters = [];
          for (const resolve of waiters) resolve();
        }
      },
    );
  }

  #drainEventfd(): void {
    libc().read(this.#evfd, this.#evBuf, 8n);
  }

  #dispatch(n: number): void {
    this.#dispatching = true;
    try {
      this.#dispatchEvents(n);
    } finally {
      this.#dispatching = false;
    }
  }

  #dispatchEvents(n: number): void {
    const view = this.#eventsView;
    for (let i = 0; i < n; i++) {
      const at = i * EPOLL_EVENT.size;
      const events = view.getUint32(at + EPOLL_EVENT.events, true);
      const token = view.getUint32(at + EPOLL_EVENT.data, true) +
        view.getUint32(at + EPOLL_EVENT.data + 4, true) * 0x1_0000_0000;
      if (token === EVENTFD_TOKEN) continue;
      this.#handles.get(token)?.dispatch(events);
    }
  }
}

let instance: Poller | undefined;

/** The poller of this process (or Worker), created on first use. */
export function poller(): Poller {
  return instance ??= new Poller();
}

/**
 * Resolves once this process's poller has no wait in flight. After the last
 * endpoint with a pending read or write is closed, the cancelled wait takes a
 * moment to return; a test run with Deno's op sanitizer awaits this before it
 * ends.
 *
 * @example In a test with `--sanitize-ops`
 * ```ts
 * import { pipe, settled } from "@conduit/ipc";
 *
 * const { reader, writer } = pipe();
 * const pending = reader.read(new Uint8Array(8)).catch(() => null);
 * reader.close();
 * writer.close();
 * await pending;
 * await settled();
 * ```
 */
export function settled(): Promise<void> {
  return instance === undefined ? Promise.resolve() : instance.idle();
}
