/**
 * The poller: one per process (and per Worker). It keeps a private epoll set
 * over every fd that anyone waits on. All real I/O happens synchronously on
 * the JS thread; the poller only says when to retry.
 *
 * How the JS thread learns that the set has events (the wake path):
 *
 * - `uring` (the default where it works) and `aio`: a kernel queue of
 *   one-shot polls whose completions signal a private eventfd that Deno's
 *   own event loop watches (through the `pipe_wrap` binding), so a watched
 *   fd becoming ready wakes the JS thread directly. `uring` uses an
 *   io_uring (`IORING_OP_POLL_ADD`, the eventfd registered): the kernel
 *   completes the poll in the JS thread's own task work, one hand-off per
 *   wake. `aio` uses Linux AIO `IOCB_CMD_POLL` with `IOCB_FLAG_RESFD`, which
 *   Linux completes in a kernel worker thread before it wakes the JS thread
 *   (a second, in-kernel hand-off); it serves where io_uring is refused, and
 *   in Workers. A waited-on fd is polled directly (one poll per fd and
 *   direction, up to 48 at once), so a wait costs one submission syscall and
 *   a wake no syscall of ours: completions are read from the ring in place.
 *   Fds past that, and everything in a Worker (a terminated Worker could not
 *   cancel its polls) or when `fs.aio-max-nr` leaves no room, wait through
 *   the epoll set, which one more poll watches. Only the private eventfd is
 *   made non-blocking; watched fds are never touched. A direct poll holds
 *   its fd's open file until it completes, so an fd's owner closes its
 *   handle (which cancels the poll) before the fd.
 * - `ffi` (the fallback): a single nonblocking FFI `epoll_wait` in flight on
 *   one of Deno's blocking-pool threads, which then wakes the JS thread: two
 *   hand-offs per wake. While only unref'd waiters are left, an unref'd timer
 *   polls with a zero timeout instead (a pending FFI call keeps the process
 *   alive).
 *
 * The path is chosen at first use: `uring`, else `aio`, unless the kernel, a
 * seccomp filter, `kernel.io_uring_disabled`, `fs.aio-max-nr` or the Deno
 * internal they need refuses, then `ffi`; it is chosen again should its ring
 * be refused when the poller wakes from idle. The environment variable
 * `CONDUIT_IPC_WAKE` set to `uring`, `aio` or `ffi` forces one (read only
 * when `--allow-env` grants it); {@linkcode wakePath} says which is in use
 * and why.
 *
 * Interest is armed per fd with EPOLLONESHOT (or a one-shot direct poll) and
 * re-armed while waiters remain. Each registration carries a fresh token in
 * `epoll_data` (and in a direct poll's `aio_data`), so an event that was
 * already collected for a closed fd can never reach a later fd that reuses
 * its number.
 *
 * @module
 */

import { libc } from "./libc.ts";
import { check, closedError, ERRNO, errno, systemError } from "./errors.ts";
import { EPOLL, EPOLL_EVENT } from "./layout.ts";
import { lastingArea } from "./mem.ts";
import {
  KICK_TOKEN,
  MAX_EVENTS,
  type PollQueue,
  type Wake,
  type WakePathName,
} from "./_wake.ts";
import { aioDirect, AioQueue, IN_WORKER, pipeWrap } from "./_wake_aio.ts";
import { DirectWake } from "./_wake_direct.ts";
import { UringQueue } from "./_wake_uring.ts";
import { FfiWake } from "./_wake_ffi.ts";
import { loopTurned } from "./_turns.ts";

export type { WakePathName };

const WAKE_ENV = "CONDUIT_IPC_WAKE";

/** The one-hand-off wake paths, in the order they are tried. */
const DIRECT_PATHS = ["uring", "aio"] as const;
type DirectPath = typeof DIRECT_PATHS[number];
const POLL_NAME: Readonly<Record<DirectPath, string>> = {
  uring: "io_uring",
  aio: "AIO",
};

/** How a one-hand-off path waits on fds, for its reason. */
function howPolled(kind: DirectPath): string {
  return kind === "uring" || aioDirect()
    ? "each waited-on fd is polled directly"
    : "fds wait through the epoll set (a Worker, or fs.aio-max-nr left room for a small AIO context only)";
}

const READ_READY = EPOLL.IN | EPOLL.HUP | EPOLL.ERR | EPOLL.RDHUP;
const WRITE_READY = EPOLL.OUT | EPOLL.HUP | EPOLL.ERR;

interface Waiter {
  resolve(): void;
  reject(error: unknown): void;
}

/** No waiters: what a dispatch wakes for an interest nobody waits on. */
const NONE: readonly Waiter[] = Object.freeze([]);

/**
 * Empties a woken list for reuse: `pop()` keeps its storage, where
 * `length = 0` would drop it and the next wait would allocate it again.
 */
function emptied(list: Waiter[]): Waiter[] {
  while (list.length > 0) list.pop();
  return list;
}

/** Which readiness a caller waits for. */
export type Interest = "read" | "write";

/** Which wake path this process uses, and why. */
export interface WakePath {
  /**
   * `uring` (one hand-off per wake), `aio` (one, and one in the kernel) or
   * `ffi` (the fallback, two).
   */
  path: WakePathName;
  /** Why this path: forced by the environment, or why others were refused. */
  reason: string;
}

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
  /**
   * Emptied lists for the next waits, so that a wake-up allocates none.
   * Undefined while a dispatch still walks the list that becomes one.
   */
  #spareReaders: Waiter[] | undefined = [];
  #spareWriters: Waiter[] | undefined = [];
  #ref = true;
  #inSet = false;
  #closed = false;
  /** Direct polls outstanding (`uring`, `aio`): 1 reading, 2 writing. */
  #direct = 0;
  /** Whether this fd waits through the epoll set rather than directly. */
  #viaSet = false;
  /** Whether epoll took this fd once (so it can be waited on at all). */
  #checked = false;

  constructor(poller: Poller, fd: number, token: number) {
    this.#poller = poller;
    this.fd = fd;
    this.token = token;
  }

  /** Whether waits on this handle keep the process alive. */
  get refed(): boolean {
    return this.#ref;
  }

  /** Direct polls outstanding: 1 for reading, 2 for writing (for tests). */
  get directKinds(): number {
    return this.#direct;
  }

  /** Whether this fd waits through the epoll set (always on `ffi`). */
  get viaSet(): boolean {
    return this.#viaSet;
  }

  /** Number of pending waits. */
  get pending(): number {
    return this.#readers.length + this.#writers.length;
  }

  /**
   * Resolves once the fd may be ready for `interest` (or has hung up or
   * failed: the caller retries its sync call and sees which). Aborting
   * `signal` takes this one wait out and rejects it with the signal's reason.
   * When the fd cannot be watched (epoll refuses it), the wait rejects and
   * the poller is left exactly as it was.
   */
  wait(interest: Interest, signal?: AbortSignal): Promise<void> {
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    this.waitThen(interest, resolve, reject, signal);
    return promise;
  }

  /**
   * {@linkcode wait} without a promise: calls `ready` from the poller's
   * dispatch once the fd may be ready (or has hung up or failed), or `fail`
   * with why the wait ended otherwise (at once when it cannot start). A
   * caller that retries its sync call inside `ready` hands a wake-up to its
   * own caller without the promise hops of a `wait()` and the loop around
   * it. Neither callback may throw; `ready` may wait again.
   */
  waitThen(
    interest: Interest,
    ready: () => void,
    fail: (error: unknown) => void,
    signal?: AbortSignal,
  ): void {
    if (this.#closed) return fail(closedError(`fd ${this.fd}`));
    if (signal?.aborted) return fail(signal.reason);
    const list = interest === "read" ? this.#readers : this.#writers;
    const waiter: Waiter = { resolve: ready, reject: fail };
    list.push(waiter);
    try {
      this.#arm();
    } catch (error) {
      list.pop();
      return fail(error);
    }
    if (signal !== undefined) {
      const onAbort = () => {
        const list = interest === "read" ? this.#readers : this.#writers;
        const at = list.indexOf(waiter);
        if (at === -1) return;
        list.splice(at, 1);
        this.#poller.waitersChanged(this, -1);
        fail(signal.reason);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      const done = () => signal.removeEventListener("abort", onAbort);
      waiter.resolve = () => {
        done();
        ready();
      };
      waiter.reject = (error) => {
        done();
        fail(error);
      };
    }
    this.#poller.waitersChanged(this, 1);
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
    if (this.#direct !== 0) {
      this.#poller.cancelDirect(this, this.#direct);
      this.#direct = 0;
    }
    if (this.#inSet) {
      this.#poller.ctl(EPOLL.CTL_DEL, this.fd, 0, this.token);
      this.#inSet = false;
    }
    const waiters = this.#takeAll();
    this.#poller.forget(this, waiters.length);
    const reason = error ?? closedError(`fd ${this.fd}`);
    for (const waiter of waiters) waiter.reject(reason);
  }

  /** Called by the poller with the events epoll reported for this handle. */
  dispatch(events: number): void {
    let readers: readonly Waiter[] = NONE;
    let writers: readonly Waiter[] = NONE;
    if (events & READ_READY && this.#readers.length > 0) {
      readers = this.#readers;
      this.#readers = this.#spareReaders ?? [];
      this.#spareReaders = undefined;
    }
    if (events & WRITE_READY && this.#writers.length > 0) {
      writers = this.#writers;
      this.#writers = this.#spareWriters ?? [];
      this.#spareWriters = undefined;
    }
    // EPOLLONESHOT disarmed the fd; arm again for whoever still waits. Should
    // epoll refuse (the fd was closed behind its owner's back), the waits
    // left fail with that error instead of hanging.
    let failed: readonly Waiter[] = NONE;
    let error: unknown;
    try {
      this.#arm();
    } catch (caught) {
      error = caught;
      failed = this.#takeAll();
    }
    const settled = readers.length + writers.length + failed.length;
    if (settled > 0) this.#poller.waitersChanged(this, -settled);
    this.#wake(readers, "read");
    this.#wake(writers, "write");
    for (const waiter of failed) waiter.reject(error as Error);
    if (readers !== NONE) this.#spareReaders ??= emptied(readers as Waiter[]);
    if (writers !== NONE) this.#spareWriters ??= emptied(writers as Waiter[]);
  }

  /**
   * Settles the woken waits of `interest` in their order. A wait that looks
   * from the dispatch itself (`waitThen`) and finds nothing waits again:
   * those woken after it then wait again behind it without a look, so a
   * message that arrives meanwhile goes to the earliest wait.
   */
  #wake(woken: readonly Waiter[], interest: Interest): void {
    for (let i = 0; i < woken.length; i++) {
      const list = interest === "read" ? this.#readers : this.#writers;
      const before = list.length;
      woken[i].resolve();
      const after = interest === "read" ? this.#readers : this.#writers;
      if (
        after === list && after.length > before && i + 1 < woken.length &&
        !this.#closed
      ) {
        const rest = woken.slice(i + 1);
        for (const waiter of rest) after.push(waiter);
        this.#poller.waitersChanged(this, rest.length);
        return;
      }
    }
  }

  /**
   * Called by the poller when a direct poll of this fd completed: `kind` 1
   * (reading) or 2 (writing), `result` the events or a negative errno.
   */
  directDone(kind: number, result: number): void {
    this.#direct &= ~kind;
    if (this.#closed) return;
    // A failed poll wakes everyone: their retry meets the error.
    this.dispatch(result < 0 ? EPOLL.ERR : result);
  }

  /** Rejects every pending wait with `error`: the poller cannot watch. */
  failWaits(error: unknown): void {
    const waiters = this.#takeAll();
    if (waiters.length === 0) return;
    this.#poller.waitersChanged(this, -waiters.length);
    for (const waiter of waiters) waiter.reject(error as Error);
  }

  #takeAll(): Waiter[] {
    const all = this.#readers.concat(this.#writers);
    this.#readers = [];
    this.#writers = [];
    return all;
  }

  #arm(): void {
    const reading = this.#readers.length > 0;
    const writing = this.#writers.length > 0;
    if (!reading && !writing) return;
    if (!this.#viaSet && !this.#poller.canPollDirect) {
      // The ffi path, a Worker or a small AIO context: the epoll set only.
      this.#viaSet = true;
      this.#poller.movedToSet();
    }
    if (!this.#viaSet) {
      if (!this.#checked) {
        // Epoll's verdict decides what can be waited on, on either path.
        this.#poller.ctl(EPOLL.CTL_ADD, this.fd, 0, this.token);
        this.#poller.ctl(EPOLL.CTL_DEL, this.fd, 0, this.token);
        this.#checked = true;
      }
      if (reading) this.#armDirect(1, EPOLL.IN | EPOLL.RDHUP);
      if (writing && !this.#viaSet) this.#armDirect(2, EPOLL.OUT);
      if (!this.#viaSet) return;
    }
    let mask = 0;
    if (reading) mask |= EPOLL.IN | EPOLL.RDHUP;
    if (writing) mask |= EPOLL.OUT;
    mask |= EPOLL.ONESHOT;
    if (this.#inSet) {
      this.#poller.ctl(EPOLL.CTL_MOD, this.fd, mask, this.token);
    } else {
      this.#poller.ctl(EPOLL.CTL_ADD, this.fd, mask, this.token);
      this.#inSet = true;
    }
  }

  /** Polls directly for `kind`, or moves this fd to the epoll set. */
  #armDirect(kind: number, events: number): void {
    if ((this.#direct & kind) !== 0) return;
    if (this.#poller.pollDirect(this, kind, events)) this.#direct |= kind;
    else {
      this.#viaSet = true;
      this.#poller.movedToSet();
    }
  }
}

/**
 * The wake path forced by `CONDUIT_IPC_WAKE`, when set and readable; an error
 * for a value that names no path. Read once, when this module is evaluated:
 * a test's narrower permissions later do not change the choice.
 */
function readForcedPath(): WakePathName | TypeError | undefined {
  let value: string | undefined;
  try {
    const state = Deno.permissions.querySync({
      name: "env",
      variable: WAKE_ENV,
    }).state;
    if (state !== "granted") return undefined;
    value = Deno.env.get(WAKE_ENV);
  } catch {
    return undefined;
  }
  if (value === undefined || value === "") return undefined;
  if (value === "uring" || value === "aio" || value === "ffi") return value;
  return new TypeError(
    `Cannot choose the wake path: ${WAKE_ENV} must be "uring", "aio" or "ffi", got ${
      JSON.stringify(value)
    }`,
  );
}

const FORCED_PATH = readForcedPath();

function isFdExhaustion(error: unknown): boolean {
  const code = (error as { code?: string } | undefined)?.code;
  return code === "EMFILE" || code === "ENFILE";
}

/** The per-process poller. Use {@linkcode poller} to get it. */
export class Poller {
  #epfd = -1;
  #wake: Wake | undefined;
  #chosen: WakePath | undefined;
  #events: ArrayBuffer;
  #eventsView: DataView;
  #eventsPtr: Deno.PointerValue;
  #ctlBuf = new Uint8Array(new ArrayBuffer(64));
  #ctlView = new DataView(this.#ctlBuf.buffer);
  #handles = new Map<number, PollHandle>();
  #byFd = new Map<number, PollHandle>();
  #nextToken = 1;
  #refWaiting = 0;
  #waiting = 0;
  #dispatching = false;
  /** Registered handles that wait through the epoll set. */
  #setHandles = 0;
  #ffiTurns = 0;

  constructor() {
    // Outside the JS heap, and never freed: on the ffi path an epoll_wait
    // may still be running on a blocking-pool thread when the isolate ends
    // (an uncaught error, a terminated Worker), and it writes its events
    // here after the runtime has freed the heap.
    const area = lastingArea(MAX_EVENTS * EPOLL_EVENT.size);
    this.#events = area.buffer;
    this.#eventsView = new DataView(this.#events);
    this.#eventsPtr = area.pointer;
  }

  /**
   * The wake path in use (chosen on first registration, then kept while it
   * serves).
   */
  get wakePath(): WakePath {
    return this.#chosen ??= this.#probe((kind) => this.#refusal(kind));
  }

  /**
   * Chooses the wake path, once per poller: `uring`, else `aio`, else
   * `ffi`, unless one is forced; `attempt` tries a one-hand-off path and
   * says why it cannot be had.
   */
  #probe(attempt: (kind: DirectPath) => string | undefined): WakePath {
    const forced = FORCED_PATH;
    if (forced instanceof TypeError) throw forced;
    if (forced === "ffi") {
      return { path: "ffi", reason: `forced by ${WAKE_ENV}=ffi` };
    }
    const refusals: string[] = [];
    for (const kind of DIRECT_PATHS) {
      if (forced !== undefined && forced !== kind) continue;
      const refused = attempt(kind);
      if (refused === undefined) {
        const why = forced === kind
          ? `forced by ${WAKE_ENV}=${kind}`
          : [...refusals, `${POLL_NAME[kind]} poll is available`].join("; ");
        return { path: kind, reason: `${why}; ${howPolled(kind)}` };
      }
      if (forced === kind) {
        throw new Deno.errors.NotSupported(
          `Cannot use the wake path forced by ${WAKE_ENV}=${kind}: ${refused}`,
        );
      }
      refusals.push(`${POLL_NAME[kind]} poll unavailable: ${refused}`);
    }
    return { path: "ffi", reason: refusals.join("; ") };
  }

  // Tries a one-hand-off path on a scratch epoll fd (the path asked for
  // before any registration).
  #refusal(kind: DirectPath): string | undefined {
    const lib = libc();
    const epfd = check("epoll_create1", lib.epoll_create1(EPOLL.CLOEXEC));
    try {
      const wake = this.#tryDirect(kind, epfd, () => {}, () => {});
      if (wake instanceof Error) return wake.message;
      wake.close();
      return undefined;
    } finally {
      lib.close(epfd);
    }
  }

  /** A `kind` wake over `epfd`, or the error that says why there is none. */
  #tryDirect(
    kind: DirectPath,
    epfd: number,
    onEvents: () => void,
    onDirect: (tag: number, result: number) => void,
  ): DirectWake | Error {
    const wrap = pipeWrap();
    if (typeof wrap === "string") return new Error(wrap);
    if (kind === "uring" && IN_WORKER) {
      // A terminated Worker runs no code to close its ring.
      return new Error("not used in a Worker, whose ring would outlive it");
    }
    try {
      const queue: PollQueue = kind === "uring"
        ? new UringQueue()
        : new AioQueue();
      return new DirectWake(epfd, onEvents, onDirect, wrap.make, queue);
    } catch (error) {
      // Out of fds says nothing about the path: fail this registration as
      // any fd creation would, and probe again next time.
      if (isFdExhaustion(error)) throw error;
      return error instanceof Error ? error : new Error(String(error));
    }
  }

  // The epoll fd and the wake path's fds exist only while some fd is
  // registered: a Worker that closed its endpoints leaves nothing open.
  #open(): void {
    if (this.#epfd !== -1) return;
    const lib = libc();
    const epfd = check("epoll_create1", lib.epoll_create1(EPOLL.CLOEXEC));
    this.#epfd = epfd;
    try {
      const onEvents = () => this.#collect();
      const onDirect = (tag: number, result: number) =>
        this.#onDirect(tag, result);
      // The first registration's wake is the probe itself: a wake built on
      // a scratch epoll fd and closed again cost a new process a third of
      // a millisecond more.
      let probed: DirectWake | undefined;
      const chosen = this.#chosen;
      if (chosen !== undefined && chosen.path !== "ffi") {
        // A ring is set up anew each time the poller wakes from idle: one
        // refused now, though it served before (`kernel.io_uring_disabled`
        // set since, a sandbox), has the path chosen again (out of fds
        // throws as before) instead of failing every wait from now on.
        const made = this.#tryDirect(chosen.path, epfd, onEvents, onDirect);
        if (made instanceof Error) this.#chosen = undefined;
        else probed = made;
      }
      this.#chosen ??= this.#probe((kind) => {
        const wake = this.#tryDirect(kind, epfd, onEvents, onDirect);
        if (wake instanceof Error) return wake.message;
        probed = wake;
        return undefined;
      });
      if (this.#chosen.path !== "ffi") {
        // Built above: by the retry of the chosen path, or by the probe,
        // which builds whichever one-hand-off path it chooses.
        this.#wake = probed!;
      } else {
        this.#wake = new FfiWake(
          epfd,
          this.#eventsPtr,
          (op, fd, events, token) => this.ctl(op, fd, events, token),
          (n) => {
            loopTurned();
            this.#ffiTurns++;
            this.#onEvents(n);
          },
        );
      }
    } catch (error) {
      lib.close(epfd);
      this.#epfd = -1;
      throw error;
    }
  }

  #release(): void {
    if (this.#epfd === -1) return;
    this.#wake?.close();
    this.#wake = undefined;
    libc().close(this.#epfd);
    this.#epfd = -1;
  }

  /**
   * Registers an fd; the returned handle must be closed before the fd.
   *
   * @throws {Deno.errors.AlreadyExists} When another live handle holds the
   * same fd number (two owners of one fd).
   */
  register(fd: number): PollHandle {
    if (this.#byFd.has(fd)) {
      throw new Deno.errors.AlreadyExists(
        `Cannot wait on fd ${fd}: another endpoint of this process owns it`,
      );
    }
    this.#open();
    const token = this.#nextToken++;
    const handle = new PollHandle(this, fd, token);
    this.#handles.set(token, handle);
    this.#byFd.set(fd, handle);
    return handle;
  }

  /** Number of fds registered (for tests and diagnostics). */
  get size(): number {
    return this.#handles.size;
  }

  /**
   * Whether a wait that keeps the process alive is armed: the AIO poll with
   * its handle ref'd, or the FFI call in flight (for tests and diagnostics).
   */
  get busy(): boolean {
    return this.#wake?.holding ?? false;
  }

  /**
   * On the `uring` and `aio` paths, the eventfd the kernel signals when the
   * set has events; -1 otherwise (for tests).
   */
  get eventFd(): number {
    const wake = this.#wake;
    return wake instanceof DirectWake ? wake.eventFd : -1;
  }

  /**
   * The fds polled directly on the `uring` and `aio` paths (not through the
   * epoll set), with their tokens and what they are polled for: 1 reading,
   * 2 writing (for tests and diagnostics).
   */
  get directPolls(): { fd: number; token: number; kinds: number }[] {
    const polls = [];
    for (const handle of this.#handles.values()) {
      const kinds = handle.directKinds;
      if (kinds !== 0) {
        polls.push({ fd: handle.fd, token: handle.token, kinds });
      }
    }
    return polls;
  }

  /** The epoll fd, or -1 while nothing is registered (for tests). */
  get epollFd(): number {
    return this.#epfd;
  }

  /**
   * Resolves once no wait is in flight: after the last ref'd waiter left,
   * the cancelled wait still takes a moment to return (`ffi` path only).
   */
  idle(): Promise<void> {
    const wake = this.#wake;
    return wake instanceof FfiWake ? wake.idle() : Promise.resolve();
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
      throw systemError("epoll_ctl", code, `fd ${fd} cannot be waited on`);
    }
  }

  /**
   * Counts the wakes that came through the event loop (timers and other
   * I/O had their turn), as opposed to a wait whose fd was ready when it
   * was armed. A receive loop compares it across a wait to tell whether it
   * let the event loop run.
   */
  get turns(): number {
    const wake = this.#wake;
    return wake instanceof DirectWake ? wake.turns : this.#ffiTurns;
  }

  /** Whether fds may be polled directly (`uring`, or `aio` with room). */
  get canPollDirect(): boolean {
    const wake = this.#wake;
    return wake instanceof DirectWake && wake.direct;
  }

  /**
   * Polls `handle`'s fd directly for `events` (`uring` and `aio`, while
   * there is room); false when it must wait through the epoll set instead.
   *
   * @internal
   */
  pollDirect(handle: PollHandle, kind: number, events: number): boolean {
    const wake = this.#wake;
    if (!(wake instanceof DirectWake) || !wake.direct) return false;
    return wake.poll(handle.token * 4 + kind, handle.fd, events);
  }

  /** @internal */
  cancelDirect(handle: PollHandle, kinds: number): void {
    const wake = this.#wake;
    if (!(wake instanceof DirectWake)) return;
    const tag = handle.token * 4;
    if (kinds & 1) wake.cancel(tag + 1);
    if (kinds & 2) wake.cancel(tag + 2);
  }

  /** @internal */
  movedToSet(): void {
    this.#setHandles++;
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
    if (handle.viaSet) this.#setHandles--;
    this.#handles.delete(handle.token);
    if (this.#byFd.get(handle.fd) === handle) this.#byFd.delete(handle.fd);
    this.#waiting -= pending;
    if (handle.refed) this.#refWaiting -= pending;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#dispatching) return;
    const wake = this.#wake;
    if (wake === undefined) return;
    if (this.#waiting > 0) {
      try {
        wake.arm(this.#refWaiting > 0, this.#setHandles > 0);
      } catch (error) {
        // The kernel refused to poll the set again (after it had served):
        // the waits through the set would never wake. They fail instead,
        // here, not from the dispatch that called this.
        this.#failSetWaits(error);
      }
    } else wake.disarm();
    if (this.#handles.size === 0 && !wake.busy) this.#release();
  }

  #failSetWaits(error: unknown): void {
    this.#dispatching = true;
    try {
      for (const handle of this.#handles.values()) {
        if (handle.viaSet) handle.failWaits(error);
      }
    } finally {
      this.#dispatching = false;
    }
  }

  // The uring and aio paths: the set has events; take them without blocking.
  #collect(): void {
    if (this.#epfd === -1) return;
    this.#onEvents(
      libc().epoll_wait(this.#epfd, this.#eventsPtr, MAX_EVENTS, 0),
    );
  }

  // A direct poll completed (uring and aio paths).
  #onDirect(tag: number, result: number): void {
    const handle = this.#handles.get(Math.floor(tag / 4));
    if (handle === undefined) return;
    this.#dispatching = true;
    try {
      handle.directDone(tag % 4, result);
    } finally {
      this.#dispatching = false;
    }
    this.#schedule();
  }

  #onEvents(n: number): void {
    this.#dispatching = true;
    try {
      this.#dispatchEvents(n);
    } finally {
      this.#dispatching = false;
    }
    this.#schedule();
  }

  #dispatchEvents(n: number): void {
    const view = this.#eventsView;
    for (let i = 0; i < n; i++) {
      const at = i * EPOLL_EVENT.size;
      const events = view.getUint32(at + EPOLL_EVENT.events, true);
      const token = view.getUint32(at + EPOLL_EVENT.data, true) +
        view.getUint32(at + EPOLL_EVENT.data + 4, true) * 0x1_0000_0000;
      if (token === KICK_TOKEN) continue;
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
 * Which wake path this process (or Worker) uses to learn that a watched fd
 * is ready, and why: `uring` hands each wake-up straight to the JS thread's
 * event loop, `aio` does so through a kernel worker thread (where io_uring
 * is refused, and in Workers); `ffi` is the fallback through one of Deno's
 * blocking-pool threads. Set `CONDUIT_IPC_WAKE=uring`, `=aio` or `=ffi`
 * (with `--allow-env`) to force one.
 *
 * @example Print the wake path
 * ```ts
 * import { wakePath } from "@conduit/ipc";
 *
 * const { path, reason } = wakePath();
 * console.log(`${path}: ${reason}`);
 * ```
 */
export function wakePath(): WakePath {
  return { ...poller().wakePath };
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
