/**
 * The ring of a `shmQueue()` end (see `queue.ts` for the protocol):
 * the header layout, the mapping and views one end keeps, and the checks of
 * everything read from shared memory.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import { LARGE_DELIVERY, LargeDeliveries, yieldTurn } from "../_turn.ts";
import { loopTurn } from "../ffi/_turns.ts";
import { closedError, ERRNO, type SystemError } from "../ffi/errors.ts";
import { Spinner } from "../ffi/spin.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { type Mapping, unmap } from "./_map.ts";
import { drain, ring } from "./_carrier.ts";
import { ReactorBell } from "./_bell.ts";

/**
 * Marks the promise of a queued call as handled: a caller may attach its
 * own handler only after a turn of the event loop, and a failure meanwhile
 * is not reported as an unhandled rejection (it still rejects the promise
 * the caller holds).
 */
export function awaitedLater<T>(promise: Promise<T>): Promise<T> {
  promise.catch(ignore);
  return promise;
}

export function ignore(): void {}

// Header layout, as indexes into an Int32Array over the mapping.
export const MAGIC = 0; // "SHMQ"
export const VERSION = 1;
export const CAPACITY = 2; // data area bytes, a multiple of 8
export const MAX_MESSAGE = 3;
export const TAIL = 16; // byte 64: written by the sender only
export const SEND_SEQ = 17;
export const RECEIVER_WAITING = 18;
export const HEAD = 32; // byte 128: written by the receiver only
export const RECV_SEQ = 33;
export const SENDER_WAITING = 34;
export const SENDER_NEEDS = 35; // written by the sender: bytes it waits to fit

export const HEADER_BYTES = 256;
export const RING_MAGIC = 0x51_4d_48_53;
export const RING_VERSION = 1;
export const RECORD = 8;
export const MAX_BYTES = 1 << 30;
export const DEFAULT_BYTES = 4 << 20;
// Continuous delivery after which a send or receive yields a macrotask turn.
// Time only: unlike sockets and channels (_turn.ts), a ring is counted in
// bytes at memory speed, and a message count would cut its throughput.
export const SLICE_MS = 4;

// A look at the ring reads two words of shared memory: a spin looks this
// many times (a few µs) between two sched_yield() calls, so an answer is
// seen within tens of ns instead of after a syscall, and a peer on the same
// CPU still gets it every few µs. Measured on a 64 B echo: median round
// trip 2.3 µs with 64 looks, 2.8 with 16, about 4 with one.
const LOOKS_PER_YIELD = 64;

export const align8 = (n: number) => (n + 7) & ~7;

export function receiverGone(): Deno.errors.BrokenPipe {
  return new Deno.errors.BrokenPipe(
    "Cannot send on shmQueue: the receiver is gone",
  );
}

/** Why an `into` cannot take a message, or `undefined` when it can. */
export function badInto(into: unknown): TypeError | undefined {
  if (!(into instanceof Uint8Array)) {
    return new TypeError(
      `Cannot receive from ShmReceiver: into must be a Uint8Array, got ${
        into === null ? "null" : typeof into
      }`,
    );
  }
  if ((into.buffer as ArrayBuffer).detached) {
    return new TypeError(
      "Cannot receive from ShmReceiver: the buffer given as into was transferred (detached)",
    );
  }
  return undefined;
}

/** The state one end keeps: its mapping, views and fds. */
export class Ring {
  readonly what: string;
  readonly capacity: number;
  readonly maxMessage: number;
  readonly header: Int32Array;
  readonly data: Uint8Array;
  readonly view: DataView;
  readonly doorbell: OwnedFd;
  readonly carrier: OwnedFd;
  readonly spinner: Spinner;
  peerGone = false;
  #mapping: Mapping | undefined;
  #turnAt = performance.now();
  #turnChecks = 0;
  /** Bytes of large messages delivered in the current slice. */
  #large = new LargeDeliveries();
  /** `loopTurn()` when the slice started. */
  #turn = -1;
  #deferredWake = false;
  /** A ring the kernel refused for lack of memory, to be tried again. */
  #wakeRetry: ReturnType<typeof setTimeout> | undefined;
  /** The doorbell as the event loop reads it; null: the poller waits. */
  #bell: ReactorBell | null | undefined;
  #refed = true;
  #parked: "bell" | "poller" | undefined;

  /**
   * @param sharedBell Whether the end came in a message from a peer (here
   * or, by its hello's mark, to an earlier holder), which may be another
   * user's process: whoever made it may hold the doorbell's
   * open file, and so can take its `O_NONBLOCK` away, which would leave the
   * event loop's read of it blocked; such an end waits through the poller,
   * whose reads never block whatever the flag says. (The maker of an end
   * this process made or inherited is this process, or the one that
   * started it, which can stop it anyway.)
   */
  constructor(
    what: string,
    mapping: Mapping,
    carrier: number,
    doorbell: number,
    spin: number | undefined,
    sharedBell: boolean,
  ) {
    this.what = what;
    if (sharedBell) this.#bell = null;
    const header = new Int32Array(mapping.buffer, 0, HEADER_BYTES / 4);
    const fail = (detail: string): never => {
      throw new TypeError(`Cannot adopt ${what}: ${detail}`);
    };
    if (mapping.size < HEADER_BYTES) {
      fail(`the shared memory has ${mapping.size} bytes, less than a header`);
    }
    if (Atomics.load(header, MAGIC) !== RING_MAGIC) {
      fail("the shared memory holds no shmQueue ring (bad magic)");
    }
    if (Atomics.load(header, VERSION) !== RING_VERSION) {
      fail(`ring layout version ${Atomics.load(header, VERSION)}`);
    }
    const capacity = Atomics.load(header, CAPACITY);
    const maxMessage = Atomics.load(header, MAX_MESSAGE);
    if (
      capacity < 16 || capacity % 8 !== 0 || capacity > MAX_BYTES + RECORD ||
      HEADER_BYTES + capacity > mapping.size
    ) {
      fail(
        `ring size ${capacity} does not fit the shared memory of ${mapping.size} bytes`,
      );
    }
    if (maxMessage < 0 || maxMessage + RECORD > capacity) {
      fail(
        `largest message ${maxMessage} does not fit the ring of ${capacity}`,
      );
    }
    this.capacity = capacity;
    this.maxMessage = maxMessage;
    this.header = header;
    this.data = new Uint8Array(mapping.buffer, HEADER_BYTES, capacity);
    this.view = new DataView(mapping.buffer, HEADER_BYTES, capacity);
    this.#mapping = mapping;
    this.carrier = new OwnedFd(carrier, what);
    this.doorbell = new OwnedFd(doorbell, what);
    this.spinner = new Spinner(spin, LOOKS_PER_YIELD);
  }

  get closed(): boolean {
    return this.carrier.closed;
  }

  /**
   * The fields an end shows when inspected; `maxMessage`, the end's largest
   * message (a receiver may take less than the ring allows).
   */
  inspectFields(maxMessage = this.maxMessage): object {
    return {
      ...this.carrier.state(),
      ringBytes: this.capacity,
      maxMessageBytes: maxMessage,
      ...(this.peerGone ? { peer: "gone" } : {}),
    };
  }

  assertOpen(): void {
    if (this.carrier.closed) throw closedError(this.what);
  }

  /** Reads a position the other end may have scribbled on, checked. */
  position(index: number, verb: string): number {
    const value = Atomics.load(this.header, index);
    if (value < 0 || value >= 2 * this.capacity || value % 8 !== 0) {
      throw this.corrupt(
        verb,
        `${
          index === HEAD ? "head" : "tail"
        } ${value} is outside the ring of ${this.capacity}`,
      );
    }
    return value;
  }

  used(head: number, tail: number, verb: string): number {
    const used = (tail - head + 2 * this.capacity) % (2 * this.capacity);
    if (used > this.capacity) {
      throw this.corrupt(
        verb,
        `${used} bytes in use in a ring of ${this.capacity}`,
      );
    }
    return used;
  }

  corrupt(verb: string, detail: string): Deno.errors.InvalidData {
    return new Deno.errors.InvalidData(
      `Cannot ${verb} on shmQueue: corrupt ring: ${detail}`,
    );
  }

  /**
   * Parks until rung (or hung up). `flag` is raised first, then `ready()`
   * is asked once more: whatever the other side published before it saw
   * the flag is seen here, so no wake-up is lost. The flag is lowered after.
   */
  async park(
    flag: number,
    ready: () => boolean,
    signal?: AbortSignal,
  ): Promise<void> {
    Atomics.store(this.header, flag, 1);
    if (ready()) {
      Atomics.store(this.header, flag, 0);
      return;
    }
    const bell = this.#bell === undefined ? this.#openBell() : this.#bell;
    if (bell !== null) {
      this.#parked = "bell";
      try {
        await bell.wait(signal);
      } finally {
        this.#parked = undefined;
        if (!this.closed) Atomics.store(this.header, flag, 0);
      }
      // The wake came through the event loop, which the bell counted
      // (loopTurned): turnDue() starts a new slice.
      if (bell.gone) this.peerGone = true;
      else if (bell.stopped) {
        // An empty packet read as the end by the binding: the bell has
        // stopped, and the poller waits from now on.
        bell.close(closedError(this.what));
        this.#bell = null;
      }
      return;
    }
    this.#parked = "poller";
    try {
      await this.doorbell.wait("read", signal);
    } finally {
      this.#parked = undefined;
      if (!this.closed) Atomics.store(this.header, flag, 0);
    }
    // A wait that went through the event loop starts a new slice: the
    // poller counted its turn (loopTurned), and turnDue() sees it; one
    // whose doorbell was rung already when it was armed did not.
    if (!drain(this.doorbell.fd)) this.peerGone = true;
  }

  /** Where a wait of this end is parked, if one is. */
  get parked(): "bell" | "poller" | undefined {
    return this.#parked;
  }

  #openBell(): ReactorBell | null {
    const bell = ReactorBell.open(this.doorbell.fd) ?? null;
    if (bell !== null && !this.#refed) bell.unref();
    return this.#bell = bell;
  }

  /** A pending wait keeps the process alive (the default). */
  ref(): void {
    this.#refed = true;
    this.doorbell.ref();
    this.#bell?.ref();
  }

  /** A pending wait does not keep the process alive. */
  unref(): void {
    this.#refed = false;
    this.doorbell.unref();
    this.#bell?.unref();
  }

  /**
   * Rings the other end if it is parked (its flag was up). Never throws: the
   * message it rings for is in the ring already, so the send or receive
   * that made it must not fail.
   */
  wake(flag: number): void {
    if (Atomics.compareExchange(this.header, flag, 1, 0) !== 1) return;
    let rung: boolean;
    try {
      rung = ring(this.doorbell.fd);
    } catch (error) {
      const code = (error as Partial<SystemError>).errno;
      if (code === ERRNO.ENOBUFS || code === ERRNO.ENOMEM) {
        // The kernel is short of memory for the 1-byte ring: the flag goes
        // back up, and the ring is tried again in a millisecond.
        Atomics.store(this.header, flag, 1);
        this.#wakeLater(flag);
      } else {
        // No doorbell left to ring (EBADF, ...): nothing can reach the
        // other end any more.
        this.peerGone = true;
      }
      return;
    }
    if (!rung) this.peerGone = true;
  }

  #wakeLater(flag: number): void {
    if (this.#wakeRetry !== undefined) return;
    this.#wakeRetry = setTimeout(() => {
      this.#wakeRetry = undefined;
      if (!this.closed) this.wake(flag);
    }, 1);
  }

  /**
   * After the receiver made room: rings a parked sender at once when half
   * the ring is free, or after this turn of the event loop once the record
   * it waits for fits. `SENDER_NEEDS` comes from the other process and is
   * only a hint, clamped to the ring.
   */
  roomMade(free: number): void {
    if (Atomics.load(this.header, SENDER_WAITING) !== 1) return;
    if (2 * free >= this.capacity) {
      this.wake(SENDER_WAITING);
      return;
    }
    const needs = Atomics.load(this.header, SENDER_NEEDS);
    if (needs > free || this.#deferredWake) return;
    this.#deferredWake = true;
    setImmediate(() => this.#flushWake());
  }

  #flushWake(): void {
    if (!this.#deferredWake) return;
    this.#deferredWake = false;
    if (!this.closed) this.wake(SENDER_WAITING);
  }

  /**
   * Whether the current slice of continuous delivery is over: a send or
   * receive that never had to wait should then {@linkcode yieldTurn}.
   */
  turnDue(bytes = 0): boolean {
    // Large messages take longer than a slice each before the clock is
    // read: past SLICE_BYTES of them the slice is over.
    if (bytes >= LARGE_DELIVERY && this.#large.over(bytes)) return true;
    // The clock is read at every 8th call only: a call costs far less than
    // a slice.
    if ((++this.#turnChecks & 7) !== 0) return false;
    const turn = loopTurn();
    if (turn !== this.#turn) {
      // The event loop turned since (a wake-up of this process, paced
      // traffic): a new slice starts.
      this.#turn = turn;
      this.#turnAt = performance.now();
      return false;
    }
    return performance.now() - this.#turnAt >= SLICE_MS;
  }

  /** Yields one macrotask turn, so timers and other I/O of this process run. */
  async yieldTurn(): Promise<void> {
    await yieldTurn();
    this.#turnAt = performance.now();
    this.#large.reset();
  }

  /** The turn being yielded by a call that did not wait, if any. */
  turn: Promise<void> | undefined;

  /**
   * Settles a call that did not wait with `value`: at once, or after the
   * turn it yields when the slice is over, or after the turn an earlier call
   * is yielding (calls settle in the order they were made).
   */
  settle<T>(value: T): Promise<T> {
    const soon = this.settleSoon(value);
    return soon instanceof Promise ? soon : Promise.resolve(soon);
  }

  /** {@linkcode settle}, with `value` itself when no turn is due. */
  settleSoon<T>(value: T): T | Promise<T> {
    if (this.turn === undefined) {
      if (
        !this.turnDue(value instanceof Uint8Array ? value.byteLength : 0)
      ) {
        return value;
      }
      const turn = this.yieldTurn();
      this.turn = turn;
      turn.then(() => {
        if (this.turn === turn) this.turn = undefined;
      });
    }
    return this.turn.then(() => value);
  }

  /**
   * Settles a call that waited in its end's queue with `value`: at once,
   * or, when it brings a message (not the end, `null`) and the slice is
   * over, after a turn. A turn an earlier call is yielding comes first
   * anyway (its end's queue waits for {@linkcode turn}).
   */
  settleQueued<T>(value: T): T | Promise<T> {
    if (
      this.turn !== undefined || value === null ||
      !this.turnDue(value instanceof Uint8Array ? value.byteLength : 0)
    ) {
      return value;
    }
    return this.yieldTurn().then(() => value);
  }

  close(): void {
    if (this.carrier.closed) return;
    this.#flushWake();
    clearTimeout(this.#wakeRetry);
    this.#bell?.close(closedError(this.what));
    this.doorbell.close();
    this.carrier.close();
    this.#unmap();
  }

  release(): number {
    this.#flushWake();
    clearTimeout(this.#wakeRetry);
    const fd = this.carrier.release();
    this.#bell?.close(closedError(this.what));
    this.doorbell.close();
    this.#unmap();
    return fd;
  }

  // Every view of this mapping is private to this module and is only used
  // after assertOpen(), so unmapping here can never fault.
  #unmap(): void {
    if (this.#mapping !== undefined) unmap(this.#mapping);
    this.#mapping = undefined;
  }
}
