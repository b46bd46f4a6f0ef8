/**
 * {@linkcode shmQueue}: a one-way queue of whole messages of any size
 * through a ring in shared memory, between two processes or within one.
 *
 * The ring lives in a memfd: a 256-byte header, then the data area. Each
 * message is a record: its length (u32) and sequence number (u32), then the
 * bytes, padded to 8. A record may wrap around the end of the data area.
 * `head` and `tail` are byte positions counted modulo twice the data size,
 * so a full ring and an empty one differ. The sender only ever writes the
 * tail, the receiver only the head; both are read and written with
 * `Atomics`, and a record is complete before the tail that covers it is
 * published. Everything read from the ring is checked before it is used:
 * the other process may have crashed or may be hostile.
 *
 * Waiting needs no polling loop and no thread: each end owns one side of a
 * SOCK_SEQPACKET doorbell, watched by the process's one poller. A wait
 * first spins briefly (the shared spin-then-park of `ffi/spin.ts`), then
 * parks. The protocol that keeps a busy queue free of system calls, and
 * that no wake-up is ever lost:
 *
 * - A receiver parks only when the ring is empty. It raises
 *   `RECEIVER_WAITING`, then reads `TAIL` once more; if a message arrived
 *   meanwhile it lowers the flag and takes it instead of parking.
 * - The sender, after publishing `TAIL`, takes `RECEIVER_WAITING` down with
 *   a compare-and-exchange and rings the doorbell only if it was up: a
 *   receiver that is not parked costs the sender no system call.
 * - A sender parks only when the ring has no room for its record. It
 *   writes the room it needs to `SENDER_NEEDS`, raises `SENDER_WAITING`,
 *   then reads `HEAD` once more and writes instead of parking if room was
 *   made meanwhile.
 * - The receiver, after publishing `HEAD`, looks at `SENDER_WAITING`. It
 *   rings at once when half the ring is free (so a sender that outruns its
 *   receiver wakes once per half ring, not once per message), and otherwise,
 *   once the record the sender needs fits, rings after the current turn of
 *   the event loop, or before it hands its end over or closes it.
 *
 * All of these are sequentially consistent `Atomics` operations: a flag
 * raised before the re-read and a position published before the flag is
 * read mean that either the waiter sees the new position or the other side
 * sees the flag. A peer in another language must use the same orderings.
 * When the other process exits or closes its end, the doorbell hangs up,
 * which also ends a wait.
 *
 * A loop that receives (or sends) without ever having to wait gives the
 * event loop a turn (`setImmediate`) after a few milliseconds of continuous
 * delivery, so timers and other I/O of the process keep running while a
 * fast peer floods the queue.
 *
 * @example Messages of any size, in order
 * ```ts
 * import { shmQueue } from "@conduit/ipc";
 *
 * const [tx, rx] = shmQueue({ bytes: 1 << 20 });
 * await tx.send(new Uint8Array(100_000));
 * await tx.send(new TextEncoder().encode("hi"));
 * tx.close();
 * console.log((await rx.recv())?.length); // 100000
 * console.log(new TextDecoder().decode((await rx.recv())!)); // "hi"
 * console.log(await rx.recv()); // null: drained and the sender is gone
 * rx.close();
 * ```
 *
 * @module
 */

import { inspectEndpoint } from "../_inspect.ts";
import { setImmediate } from "node:timers";
import { yieldTurn } from "../_turn.ts";
import { libc } from "../ffi/libc.ts";
import { check, closedError } from "../ffi/errors.ts";
import { checkSpin, Spinner } from "../ffi/spin.ts";
import { SOCK } from "../ffi/layout.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { CallQueue, type QueuedCall } from "../_call_queue.ts";
import { createMemfd, fileSize, sealedAgainstShrink } from "./_memfd.ts";
import { type Mapping, mapShared, unmap } from "./_map.ts";
import {
  doorbellProblem,
  drain,
  peekHello,
  ring,
  ROLE,
  sendHello,
} from "./_carrier.ts";
import { type EndpointKind, endpointKind, releaseFd } from "../_keys.ts";
import { ringViews } from "./_keys.ts";

/** Options for {@linkcode shmQueue}. */
export interface ShmQueueOptions {
  /**
   * The largest message, in bytes; the ring holds at least this much (plus
   * 8 bytes of record header). Default 1 MiB; at most 1 GiB.
   */
  bytes?: number;
  /**
   * How a send or receive that would wait first retries before it parks in
   * the poller (yielding the CPU each pass). Default: adaptive, spinning up
   * to 100 µs only while recent spins were answered, so a quick peer is
   * met without a wake-up and a slow one costs no CPU. `0`: never spin. A
   * number: always spin up to that many µs (at most one second).
   */
  spin?: number;
}

/** Options for {@linkcode ShmSender.send} and {@linkcode ShmReceiver.recv}. */
export interface ShmWaitOptions {
  /** Stops waiting and rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Options for {@linkcode ShmReceiver.recv}. */
export interface ShmRecvOptions extends ShmWaitOptions {
  /**
   * A buffer to copy the message into instead of a new one: `recv()` then
   * returns a view of its first bytes. Reusing one buffer saves an
   * allocation per message (about three quarters of a 64 KiB receive). A
   * message larger than the buffer is left in the queue and the call fails
   * with a `RangeError` naming both sizes.
   */
  into?: Uint8Array;
}

/**
 * Marks the promise of a queued call as handled: a caller may attach its
 * own handler only after a turn of the event loop, and a failure meanwhile
 * is not reported as an unhandled rejection (it still rejects the promise
 * the caller holds).
 */
function awaitedLater<T>(promise: Promise<T>): Promise<T> {
  promise.catch(ignore);
  return promise;
}

function ignore(): void {}

/** A send that waits for room. */
interface QueuedSend extends QueuedCall<void> {
  bytes: Uint8Array;
  signal: AbortSignal | undefined;
}

/** A receive that waits for a message. */
interface QueuedRecv extends QueuedCall<Uint8Array | null> {
  signal: AbortSignal | undefined;
  into: Uint8Array | undefined;
  message: Uint8Array | null | undefined;
}

// Header layout, as indexes into an Int32Array over the mapping.
const MAGIC = 0; // "SHMQ"
const VERSION = 1;
const CAPACITY = 2; // data area bytes, a multiple of 8
const MAX_MESSAGE = 3;
const TAIL = 16; // byte 64: written by the sender only
const SEND_SEQ = 17;
const RECEIVER_WAITING = 18;
const HEAD = 32; // byte 128: written by the receiver only
const RECV_SEQ = 33;
const SENDER_WAITING = 34;
const SENDER_NEEDS = 35; // written by the sender: bytes it waits to fit

const HEADER_BYTES = 256;
const RING_MAGIC = 0x51_4d_48_53;
const RING_VERSION = 1;
const RECORD = 8;
const MAX_BYTES = 1 << 30;
const DEFAULT_BYTES = 1 << 20;
// Continuous delivery after which a send or receive yields a macrotask turn.
// Time only: unlike sockets and channels (_turn.ts), a ring is counted in
// bytes at memory speed, and a message count would cut its throughput.
const SLICE_MS = 4;

const align8 = (n: number) => (n + 7) & ~7;

function receiverGone(): Deno.errors.BrokenPipe {
  return new Deno.errors.BrokenPipe(
    "Cannot send on shmQueue: the receiver is gone",
  );
}

/** Why an `into` cannot take a message, or `undefined` when it can. */
function badInto(into: unknown): TypeError | undefined {
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
class Ring {
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
  #deferredWake = false;

  constructor(
    what: string,
    mapping: Mapping,
    carrier: number,
    doorbell: number,
    spin: number | undefined,
  ) {
    this.what = what;
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
    this.spinner = new Spinner(spin);
  }

  get closed(): boolean {
    return this.carrier.closed;
  }

  /** The fields an end shows when inspected. */
  inspectFields(): object {
    return {
      ...this.carrier.state(),
      ringBytes: this.capacity,
      maxMessageBytes: this.maxMessage,
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
    try {
      await this.doorbell.wait("read", signal);
    } finally {
      if (!this.closed) Atomics.store(this.header, flag, 0);
    }
    // The wait went through the event loop: a new slice starts.
    this.#turnAt = performance.now();
    if (!drain(this.doorbell.fd)) this.peerGone = true;
  }

  /** Rings the other end if it is parked (its flag was up). */
  wake(flag: number): void {
    if (Atomics.compareExchange(this.header, flag, 1, 0) === 1) {
      if (!ring(this.doorbell.fd)) this.peerGone = true;
    }
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
  turnDue(): boolean {
    return performance.now() - this.#turnAt >= SLICE_MS;
  }

  /** Yields one macrotask turn, so timers and other I/O of this process run. */
  async yieldTurn(): Promise<void> {
    await yieldTurn();
    this.#turnAt = performance.now();
  }

  /** The turn being yielded by a call that did not wait, if any. */
  turn: Promise<void> | undefined;

  /**
   * Settles a call that did not wait with `value`: at once, or after the
   * turn it yields when the slice is over, or after the turn an earlier call
   * is yielding (calls settle in the order they were made).
   */
  settle<T>(value: T): Promise<T> {
    if (this.turn === undefined) {
      if (!this.turnDue()) return Promise.resolve(value);
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
    if (this.turn !== undefined || value === null || !this.turnDue()) {
      return value;
    }
    return this.yieldTurn().then(() => value);
  }

  close(): void {
    if (this.carrier.closed) return;
    this.#flushWake();
    this.doorbell.close();
    this.carrier.close();
    this.#unmap();
  }

  release(): number {
    this.#flushWake();
    const fd = this.carrier.release();
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

/**
 * The sending end of a {@linkcode shmQueue}. One sender at a time: hand it
 * to another process (`spawn({ fds })`, `UnixSocket.send({ fds })`) and
 * close it here.
 *
 * @example Send and close
 * ```ts
 * import { shmQueue } from "@conduit/ipc";
 *
 * const [tx, rx] = shmQueue();
 * await tx.send(new Uint8Array([1, 2, 3]));
 * tx.close();
 * console.log(await rx.recv()); // Uint8Array(3) [ 1, 2, 3 ]
 * rx.close();
 * ```
 */
export class ShmSender implements Disposable {
  #ring: Ring;
  /** Sends that wait for room, in call order. */
  #sends: CallQueue<QueuedSend>;

  /** @ignore Use {@linkcode shmQueue} or `fromFd()`. */
  constructor(ring: Ring) {
    this.#ring = ring;
    this.#sends = new CallQueue<QueuedSend>({
      advance: (jobs) => this.#trySend(jobs[0].bytes) === true ? 1 : 0,
      park: (head) => {
        const need = RECORD + align8(head.bytes.byteLength);
        Atomics.store(ring.header, SENDER_NEEDS, need);
        return ring.park(SENDER_WAITING, () => this.#room(need), head.signal);
      },
      done: () => ring.settleQueued(undefined),
      failed: (_job, error) => error,
      turn: () => ring.turn,
    }, ring.spinner);
  }

  /** The largest message this queue takes, in bytes. */
  get maxMessageBytes(): number {
    return this.#ring.maxMessage;
  }

  /**
   * The old name of `maxMessageBytes`.
   *
   * @deprecated Use `maxMessageBytes`; `maxMessage` will be removed in 0.2.0.
   */
  get maxMessage(): number {
    return this.#ring.maxMessage;
  }

  /**
   * The carrier socket, for interop and for handing the end over; the
   * sender still owns it.
   */
  get rawFd(): number {
    return this.#ring.carrier.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#ring.closed;
  }

  /**
   * Shows the kind, carrier fd, state, ring size and largest message, as
   * `ShmSender { fd: 9, state: "open", ringBytes: 65536, maxMessageBytes: 65528 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return inspectEndpoint(
      "ShmSender",
      this.#ring.inspectFields(),
      inspect,
      options,
    );
  }

  /**
   * Copies `bytes` into the ring as one message, waiting (without blocking
   * the thread) while the ring is too full. Sends are queued, never
   * interleaved.
   *
   * @param bytes The message, 0 to {@linkcode maxMessageBytes} bytes.
   * @param options `signal` to give up waiting for room.
   * @returns Resolves once the message is in the ring.
   * @throws {RangeError} When the message is larger than the ring takes.
   * @throws {Deno.errors.BrokenPipe} When the receiver is gone (its process
   * ended or every copy of it was closed). While there is room, sends to a
   * receiver that died unnoticed still succeed: at most a ring's worth.
   * @throws {Deno.errors.InvalidData} When the ring's shared state is corrupt.
   *
   * @example Give up when the receiver does not make room in time
   * ```ts
   * import { shmQueue } from "@conduit/ipc/shm";
   *
   * using q = shmQueue({ bytes: 4096 });
   * const [tx, rx] = q;
   * await tx.send(new Uint8Array(4096)); // fills the ring
   * try {
   *   await tx.send(new Uint8Array(1), { signal: AbortSignal.timeout(50) });
   * } catch (error) {
   *   console.log((error as Error).name); // "TimeoutError": nothing was sent
   * }
   * console.log((await rx.recv())?.length); // 4096
   * ```
   */
  send(bytes: Uint8Array, options: ShmWaitOptions = {}): Promise<void> {
    if (!(bytes instanceof Uint8Array)) {
      return Promise.reject(
        new TypeError(
          "Cannot send on shmQueue: the message must be a Uint8Array",
        ),
      );
    }
    if (bytes.byteLength > this.#ring.maxMessage) {
      return Promise.reject(
        new RangeError(
          `Cannot send on shmQueue: message of ${bytes.byteLength} bytes exceeds the ring's ${this.#ring.maxMessage}`,
        ),
      );
    }
    const r = this.#ring;
    if (this.#sends.length === 0) {
      // Nothing queued ahead: a send that finds room needs no promise chain.
      try {
        if (this.#trySend(bytes) !== undefined) {
          return r.settle(undefined);
        }
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return awaitedLater(this.#sends.push({ bytes, signal: options.signal }));
  }

  #room(need: number): boolean {
    const r = this.#ring;
    const tail = r.position(TAIL, "send");
    const head = r.position(HEAD, "send");
    return r.capacity - r.used(head, tail, "send") >= need;
  }

  /** Writes the message if it fits now: `true`, or `undefined` to wait. */
  #trySend(bytes: Uint8Array): true | undefined {
    const r = this.#ring;
    r.assertOpen();
    if (r.peerGone) throw receiverGone();
    const need = RECORD + align8(bytes.byteLength);
    const tail = r.position(TAIL, "send");
    const head = r.position(HEAD, "send");
    if (r.capacity - r.used(head, tail, "send") < need) return undefined;
    this.#write(bytes, tail, need);
    r.wake(RECEIVER_WAITING);
    if (r.peerGone) throw receiverGone();
    return true;
  }

  #write(bytes: Uint8Array, tail: number, need: number): void {
    const r = this.#ring;
    const n = bytes.byteLength;
    const at = tail % r.capacity;
    const seq = Atomics.load(r.header, SEND_SEQ);
    r.view.setUint32(at, n, true);
    r.view.setInt32(at + 4, seq, true);
    const start = (at + RECORD) % r.capacity;
    const first = Math.min(n, r.capacity - start);
    r.data.set(first === n ? bytes : bytes.subarray(0, first), start);
    if (first < n) r.data.set(bytes.subarray(first), 0);
    Atomics.store(r.header, SEND_SEQ, (seq + 1) | 0);
    Atomics.store(r.header, TAIL, (tail + need) % (2 * r.capacity));
  }

  /** Lets a pending send keep the process alive (the default). */
  ref(): void {
    this.#ring.doorbell.ref();
  }

  /** Lets the process exit while a send waits for room. */
  unref(): void {
    this.#ring.doorbell.unref();
  }

  /**
   * Closes this process's copy of the sender; a waiting send rejects with
   * `BadResource`. Once every copy is closed, the receiver gets `null` after
   * the last message. Idempotent.
   */
  close(): void {
    this.#ring.close();
  }

  /** Closes the sender. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @ignore The kind of endpoint this is. */
  get [endpointKind](): EndpointKind {
    return "ShmSender";
  }

  /** @ignore Gives up the carrier fd without closing it. */
  [releaseFd](): number {
    return this.#ring.release();
  }

  /** @ignore The ring's views, for tests that play a hostile peer. */
  [ringViews](): { header: Int32Array; data: Uint8Array } {
    this.#ring.assertOpen();
    return { header: this.#ring.header, data: this.#ring.data };
  }
}

/**
 * The receiving end of a {@linkcode shmQueue}. One receiver at a time; it
 * can travel to another process like the sender.
 *
 * @example Receive until the sender is gone
 * ```ts
 * import { shmQueue } from "@conduit/ipc";
 *
 * const [tx, rx] = shmQueue();
 * await tx.send(new Uint8Array(10));
 * await tx.send(new Uint8Array(20));
 * tx.close();
 * for await (const message of rx) console.log(message.length); // 10, 20
 * rx.close();
 * ```
 */
export class ShmReceiver implements Disposable, AsyncIterable<Uint8Array> {
  #ring: Ring;
  /** Receives that wait for a message, in call order. */
  #recvs: CallQueue<QueuedRecv, Uint8Array | null>;
  #failure: Error | undefined;

  /** @ignore Use {@linkcode shmQueue} or `fromFd()`. */
  constructor(ring: Ring) {
    this.#ring = ring;
    const arrived = () =>
      ring.position(TAIL, "receive") !== ring.position(HEAD, "receive");
    this.#recvs = new CallQueue<QueuedRecv, Uint8Array | null>({
      advance: (jobs) => {
        const message = this.#tryRecv(jobs[0].into);
        if (message === undefined) return 0;
        jobs[0].message = message;
        return 1;
      },
      park: (head) =>
        this.#guard(() => ring.park(RECEIVER_WAITING, arrived, head.signal)),
      done: (job) => ring.settleQueued(job.message!),
      failed: (_job, error) => error,
      turn: () => ring.turn,
    }, ring.spinner);
  }

  /** The largest message this queue takes, in bytes. */
  get maxMessageBytes(): number {
    return this.#ring.maxMessage;
  }

  /**
   * The old name of `maxMessageBytes`.
   *
   * @deprecated Use `maxMessageBytes`; `maxMessage` will be removed in 0.2.0.
   */
  get maxMessage(): number {
    return this.#ring.maxMessage;
  }

  /**
   * The carrier socket, for interop and for handing the end over; the
   * receiver still owns it.
   */
  get rawFd(): number {
    return this.#ring.carrier.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#ring.closed;
  }

  /**
   * Shows the kind, carrier fd, state, ring size and largest message, as
   * `ShmReceiver { fd: 9, state: "open", ringBytes: 65536, maxMessageBytes: 65528 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return inspectEndpoint(
      "ShmReceiver",
      this.#ring.inspectFields(),
      inspect,
      options,
    );
  }

  /**
   * Takes the next message out of the ring, waiting (without blocking the
   * thread, without polling) until one is there.
   *
   * @param options `signal` to give up waiting; `into`, a buffer to receive
   * into.
   * @returns A copy of the message (a view of `into` when given), or `null`
   * once the ring is drained and the sender is gone (closed everywhere, or
   * its process ended). A message the sender had not finished when it died
   * is never returned.
   * @throws {Deno.errors.InvalidData} When the ring's shared state is
   * corrupt; every later call throws the same error.
   * @throws {RangeError} When the message is larger than `into`; it stays
   * in the queue for a later call with a larger buffer.
   * @throws {TypeError} When `into` is not a `Uint8Array` or its buffer was
   * transferred.
   *
   * @example Receive 64 KiB messages into one buffer
   * ```ts
   * import { shmQueue } from "@conduit/ipc/shm";
   *
   * using q = shmQueue();
   * const [tx, rx] = q;
   * await tx.send(new Uint8Array(65536).fill(1));
   * const buffer = new Uint8Array(65536);
   * const message = await rx.recv({ into: buffer });
   * console.log(message?.byteLength, message?.buffer === buffer.buffer); // 65536 true
   * ```
   */
  recv(options: ShmRecvOptions = {}): Promise<Uint8Array | null> {
    const r = this.#ring;
    const into = options.into;
    if (into !== undefined) {
      const refused = badInto(into);
      if (refused !== undefined) return Promise.reject(refused);
    }
    if (this.#recvs.length === 0) {
      // Nothing queued ahead: a message already there needs no promise chain.
      try {
        const message = this.#tryRecv(into);
        if (message !== undefined) {
          return message === null && r.turn === undefined
            ? Promise.resolve(null)
            : r.settle(message);
        }
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return awaitedLater(
      this.#recvs.push({ signal: options.signal, into, message: undefined }),
    );
  }

  /**
   * Takes the next message if one is there: the message, `null` at the
   * end, or `undefined` to wait. A corrupt ring fails this end for good.
   */
  #tryRecv(into?: Uint8Array): Uint8Array | null | undefined {
    const r = this.#ring;
    r.assertOpen();
    if (this.#failure !== undefined) throw this.#failure;
    return this.#guard(() => {
      const head = r.position(HEAD, "receive");
      const tail = r.position(TAIL, "receive");
      if (tail !== head) return this.#read(head, tail, into);
      return r.peerGone ? null : undefined;
    });
  }

  #guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (error) {
      if (error instanceof Deno.errors.InvalidData) this.#failure = error;
      throw error;
    }
  }

  #read(head: number, tail: number, into?: Uint8Array): Uint8Array {
    const r = this.#ring;
    const used = r.used(head, tail, "receive");
    if (used < RECORD) {
      throw r.corrupt("receive", `${used} bytes published, less than a record`);
    }
    const at = head % r.capacity;
    const n = r.view.getUint32(at, true);
    const seq = r.view.getInt32(at + 4, true);
    const expected = Atomics.load(r.header, RECV_SEQ);
    if (seq !== expected) {
      throw r.corrupt(
        "receive",
        `record ${expected >>> 0} has sequence number ${seq >>> 0}`,
      );
    }
    if (n > r.maxMessage) {
      throw r.corrupt(
        "receive",
        `record of ${n} bytes exceeds the largest message ${r.maxMessage}`,
      );
    }
    const need = RECORD + align8(n);
    if (need > used) {
      throw r.corrupt(
        "receive",
        `record of ${n} bytes runs past the ${used} bytes published`,
      );
    }
    let out: Uint8Array;
    if (into === undefined) {
      out = new Uint8Array(n);
    } else if ((into.buffer as ArrayBuffer).detached) {
      // Transferred while this receive waited: the message stays queued.
      throw badInto(into);
    } else if (n <= into.byteLength) {
      out = into.subarray(0, n);
    } else {
      // Checked last: the record is sound, and stays for a larger buffer.
      throw new RangeError(
        `Cannot receive from ShmReceiver: the next message has ${n} bytes, more than the ${into.byteLength} of the buffer given as into`,
      );
    }
    const start = (at + RECORD) % r.capacity;
    const first = Math.min(n, r.capacity - start);
    out.set(r.data.subarray(start, start + first));
    if (first < n) out.set(r.data.subarray(0, n - first), first);
    Atomics.store(r.header, RECV_SEQ, (expected + 1) | 0);
    Atomics.store(r.header, HEAD, (head + need) % (2 * r.capacity));
    r.roomMade(r.capacity - used + need);
    return out;
  }

  /** Yields messages until {@linkcode recv} returns `null`. */
  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    for (;;) {
      const message = await this.recv();
      if (message === null) return;
      yield message;
    }
  }

  /** Lets a pending receive keep the process alive (the default). */
  ref(): void {
    this.#ring.doorbell.ref();
  }

  /** Lets the process exit while a receive is pending. */
  unref(): void {
    this.#ring.doorbell.unref();
  }

  /**
   * Closes this process's copy of the receiver; a pending receive rejects
   * with `BadResource`. Once every copy is closed, sends that must wait for
   * room reject with `BrokenPipe`. Idempotent.
   */
  close(): void {
    this.#ring.close();
  }

  /** Closes the receiver. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @ignore The kind of endpoint this is. */
  get [endpointKind](): EndpointKind {
    return "ShmReceiver";
  }

  /** @ignore Gives up the carrier fd without closing it. */
  [releaseFd](): number {
    return this.#ring.release();
  }

  /** @ignore The ring's views, for tests that play a hostile peer. */
  [ringViews](): { header: Int32Array; data: Uint8Array } {
    this.#ring.assertOpen();
    return { header: this.#ring.header, data: this.#ring.data };
  }
}

/** The two ends of a {@linkcode shmQueue}; `using` closes both. */
export type ShmQueue = [ShmSender, ShmReceiver] & Disposable;

/**
 * Creates a queue of whole messages through a ring in shared memory. Keep
 * one end and hand the other to a child (`spawn({ fds: [rx] })`, then
 * `fromFd(3)` there) or send it over a socket (`send(bytes, { fds: [rx] })`);
 * then close this process's copy.
 *
 * @param options Ring size and spinning.
 * @returns The sender and the receiver.
 * @throws {RangeError} When `bytes` is not an integer from 1 to 1 GiB.
 *
 * @example Hand the receiver to a child
 * ```ts ignore
 * import { shmQueue, spawn } from "@conduit/ipc";
 *
 * const [tx, rx] = shmQueue({ bytes: 4 << 20 });
 * const child = spawn(Deno.execPath(), {
 *   args: ["run", "--allow-ffi", "child.ts"], // fromFd(3) is a ShmReceiver
 *   fds: [rx],
 * });
 * rx.close();
 * await tx.send(new Uint8Array(1 << 20));
 * tx.close();
 * await child.status;
 * ```
 */
export function shmQueue(options: ShmQueueOptions = {}): ShmQueue {
  const bytes = options.bytes ?? DEFAULT_BYTES;
  const spin = checkSpin(options.spin, "Cannot create shmQueue");
  if (!Number.isInteger(bytes) || bytes < 1 || bytes > MAX_BYTES) {
    throw new RangeError(
      `Cannot create shmQueue: bytes must be an integer from 1 to ${MAX_BYTES}, got ${bytes}`,
    );
  }
  const capacity = align8(bytes) + RECORD;
  const size = HEADER_BYTES + capacity;
  const lib = libc();
  // Released whatever happens: the memfd (the hellos carry it to the ends)
  // and this process's copies of what the hellos carry.
  using setUp = new DisposableStack();
  // Released only when shmQueue() fails: what the two ends take over.
  using onFailure = new DisposableStack();
  // A seqpacket pair, each end's closing deferred to the stack given for it.
  const socketPair = (
    a: DisposableStack,
    b: DisposableStack,
  ): [number, number] => {
    const fds = new Int32Array(2);
    check(
      "socketpair",
      lib.socketpair(SOCK.AF_UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC, 0, fds),
    );
    a.defer(() => lib.close(fds[0]));
    b.defer(() => lib.close(fds[1]));
    return [fds[0], fds[1]];
  };
  const memfd = createMemfd(size, "conduit-shmq");
  setUp.defer(() => lib.close(memfd));
  const first = onFailure.adopt(mapShared(memfd, size, "shmQueue"), unmap);
  const header = new Int32Array(first.buffer, 0, HEADER_BYTES / 4);
  header[VERSION] = RING_VERSION;
  header[CAPACITY] = capacity;
  header[MAX_MESSAGE] = bytes;
  Atomics.store(header, MAGIC, RING_MAGIC);
  const second = onFailure.adopt(mapShared(memfd, size, "shmQueue"), unmap);
  const [bellTx, bellRx] = socketPair(onFailure, onFailure);
  // A carrier: the queue end's socket, with the hello (its role, the memfd
  // and its doorbell) queued on it by the other end of its pair, which is
  // then closed. Whoever the end is handed to reads the hello.
  const carrier = (role: number, bell: number): number => {
    const [keep, put] = socketPair(onFailure, setUp);
    sendHello(put, role, [memfd, bell]);
    return keep;
  };
  const carrierTx = carrier(ROLE.sender, bellTx);
  const carrierRx = carrier(ROLE.receiver, bellRx);
  const tx = new ShmSender(
    new Ring("ShmSender", first, carrierTx, bellTx, spin),
  );
  const rx = new ShmReceiver(
    new Ring("ShmReceiver", second, carrierRx, bellRx, spin),
  );
  onFailure.move();
  return Object.assign([tx, rx] as [ShmSender, ShmReceiver], {
    [Symbol.dispose]() {
      tx.close();
      rx.close();
    },
  });
}

/**
 * Rebuilds a queue end from its carrier fd (what `rawFd` was in the process
 * that handed it over). `fromFd()` does the same for any fd; this one says
 * what it expects.
 *
 * @param fd The carrier fd; the returned end owns it.
 * @param options `spin` as for {@linkcode shmQueue}.
 * @returns The sender or receiver.
 * @throws {TypeError} When `fd` is not a queue end (it is left open then).
 *
 * @example In a child started with `spawn(..., { fds: [rx] })`
 * ```ts ignore
 * import { ShmReceiver, shmQueueFromFd } from "@conduit/ipc";
 *
 * const rx = shmQueueFromFd(3);
 * if (!(rx instanceof ShmReceiver)) throw new TypeError("fd 3 is not a receiver");
 * for await (const message of rx) console.log(message.length);
 * ```
 */
export function shmQueueFromFd(
  fd: number,
  options: Pick<ShmQueueOptions, "spin"> = {},
): ShmSender | ShmReceiver {
  const end = adoptQueueEnd(
    fd,
    checkSpin(options.spin, `Cannot adopt fd ${fd}`),
  );
  if (end === null) {
    throw new TypeError(`Cannot adopt fd ${fd}: it is not a shmQueue end`);
  }
  return end;
}

/**
 * The queue end whose carrier socket `fd` is, or `null` when the socket
 * holds no queue hello: `fromFd()`'s test for a queue end.
 *
 * @throws {TypeError} When the hello is there but what it carries is no
 * valid queue end (the fds it carried are closed, `fd` is left open).
 */
export function adoptQueueEnd(
  fd: number,
  spin: number | undefined,
): ShmSender | ShmReceiver | null {
  const hello = peekHello(fd);
  if (hello === null) return null;
  const lib = libc();
  const { role, fds } = hello;
  // Released only when adoption fails: every fd the hello carried, and the
  // mapping.
  using onFailure = new DisposableStack();
  for (const received of fds) onFailure.defer(() => lib.close(received));
  if (fds.length !== 2 || (role !== ROLE.sender && role !== ROLE.receiver)) {
    throw new TypeError(
      `Cannot adopt fd ${fd}: a shmQueue end with role ${role} and ${fds.length} fds`,
    );
  }
  const [memfd, bell] = fds;
  const what = role === ROLE.sender ? "ShmSender" : "ShmReceiver";
  // Every fd the peer put in the hello is checked before anything maps or
  // waits on it.
  const bellProblem = doorbellProblem(bell, fd);
  if (bellProblem !== undefined) {
    throw new TypeError(`Cannot adopt ${what} from fd ${fd}: ${bellProblem}`);
  }
  if (!sealedAgainstShrink(memfd)) {
    throw new TypeError(
      `Cannot adopt ${what} from fd ${fd}: its shared memory is not sealed against shrinking`,
    );
  }
  const size = fileSize(memfd);
  if (size < HEADER_BYTES || size > HEADER_BYTES + MAX_BYTES + RECORD) {
    throw new TypeError(
      `Cannot adopt ${what} from fd ${fd}: shared memory of ${size} bytes is no shmQueue ring`,
    );
  }
  const ring = new Ring(
    what,
    onFailure.adopt(mapShared(memfd, size, what), unmap),
    fd,
    bell,
    spin,
  );
  onFailure.move();
  // The ring holds the mapping and the doorbell; the memfd is done with.
  lib.close(memfd);
  return role === ROLE.sender ? new ShmSender(ring) : new ShmReceiver(ring);
}
