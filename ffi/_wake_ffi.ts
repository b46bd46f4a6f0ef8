/**
 * The `ffi` wake path, the fallback: one nonblocking FFI `epoll_wait` in
 * flight on one of Deno's blocking-pool threads, which then wakes the JS
 * thread: two hand-offs per wake.
 *
 * @module
 */

import { libc } from "./libc.ts";
import { errno, systemError } from "./errors.ts";
import { EFD, EPOLL } from "./layout.ts";
import { KICK_TOKEN, MAX_EVENTS, type Wake } from "./_wake.ts";

const UNREF_POLL_MS = 10;

/**
 * The fallback path: one nonblocking `epoll_wait` on a blocking-pool thread.
 * A private eventfd in the set ends that wait when nothing ref'd is left.
 */
export class FfiWake implements Wake {
  readonly path = "ffi" as const;
  #epfd: number;
  #kickFd: number;
  #kickBuf = new Uint8Array(new ArrayBuffer(64));
  #eventsPtr: Deno.PointerValue;
  #onEvents: (n: number) => void;
  #inFlight = false;
  #kicked = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #idleWaiters: (() => void)[] = [];

  constructor(
    epfd: number,
    eventsPtr: Deno.PointerValue,
    ctl: (op: number, fd: number, events: number, token: number) => void,
    onEvents: (n: number) => void,
  ) {
    const kick = libc().eventfd(0, EFD.CLOEXEC | EFD.NONBLOCK);
    if (kick === -1) throw systemError("eventfd", errno());
    this.#epfd = epfd;
    this.#kickFd = kick;
    this.#eventsPtr = eventsPtr;
    this.#onEvents = onEvents;
    try {
      ctl(EPOLL.CTL_ADD, kick, EPOLL.IN, KICK_TOKEN);
    } catch (error) {
      libc().close(kick);
      throw error;
    }
  }

  get busy(): boolean {
    return this.#inFlight;
  }

  get holding(): boolean {
    // A kicked call still holds the process until it has returned.
    return this.#inFlight;
  }

  arm(ref: boolean): void {
    if (ref) {
      this.#clearTimer();
      if (!this.#inFlight) this.#start();
      return;
    }
    this.#kick();
    if (!this.#inFlight && this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#onEvents(
          libc().epoll_wait(this.#epfd, this.#eventsPtr, MAX_EVENTS, 0),
        );
      }, UNREF_POLL_MS);
      Deno.unrefTimer(this.#timer as unknown as number);
    }
  }

  disarm(): void {
    this.#kick();
    // A pending poll timer would only fire for nothing (and shows up as a
    // leaked timer in a test with sanitizeOps).
    this.#clearTimer();
  }

  close(): void {
    this.#clearTimer();
    libc().close(this.#kickFd);
  }

  /** Resolves once no call is in flight. */
  idle(): Promise<void> {
    if (!this.#inFlight) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#idleWaiters.push(resolve);
    return promise;
  }

  #kick(): void {
    // End the in-flight wait so the process may exit.
    if (!this.#inFlight || this.#kicked) return;
    this.#kicked = true;
    new DataView(this.#kickBuf.buffer).setBigUint64(0, 1n, true);
    libc().write(this.#kickFd, this.#kickBuf, 8n);
  }

  #clearTimer(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  #start(): void {
    this.#inFlight = true;
    libc().epoll_wait_nb(this.#epfd, this.#eventsPtr, MAX_EVENTS, -1).then(
      (n) => {
        // The call is over before anything is dispatched, so a waiter that
        // leaves during dispatch never kicks a wait that already returned.
        this.#inFlight = false;
        if (this.#kicked) {
          this.#kicked = false;
          libc().read(this.#kickFd, this.#kickBuf, 8n);
        }
        // errno of a pool thread is meaningless; -1 is EINTR in practice,
        // and the next wait simply starts again. (No wait starts while the
        // events buffer is being read: the next call writes into it.)
        this.#onEvents(n);
        if (!this.#inFlight && this.#idleWaiters.length > 0) {
          const waiters = this.#idleWaiters;
          this.#idleWaiters = [];
          for (const resolve of waiters) resolve();
        }
      },
    );
  }
}
