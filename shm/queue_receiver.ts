/**
 * {@linkcode ShmReceiver}: the receiving end of a `shmQueue()`.
 *
 * @module
 */

import { FreshBytes } from "./_fresh.ts";
import { inspectEndpoint } from "../_inspect.ts";
import { CallQueue, type QueuedCall } from "../_call_queue.ts";
import { untilNull } from "../_channel_error.ts";
import {
  type EndpointKind,
  endpointKind,
  givenAway,
  releaseFd,
} from "../_keys.ts";
import { parkedOn, ringViews } from "./_keys.ts";
import {
  align8,
  awaitedLater,
  badInto,
  HEAD,
  RECEIVER_WAITING,
  RECORD,
  RECV_SEQ,
  type Ring,
  TAIL,
} from "./_ring.ts";
import type { ShmWaitOptions } from "./queue_sender.ts";

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

/** A receive that waits for a message. */
interface QueuedRecv extends QueuedCall<Uint8Array | null> {
  signal: AbortSignal | undefined;
  into: Uint8Array | undefined;
  message: Uint8Array | null | undefined;
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
  /** Closed by this program's close(), not given up to be sent away. */
  #closedHere = false;
  /** Receives that wait for a message, in call order. */
  #recvs: CallQueue<QueuedRecv, Uint8Array | null>;
  #failure: Error | undefined;
  /** The largest message taken (see {@linkcode maxMessageBytes}). */
  #maxMessage: number;
  /** Where messages received without `into` go (see `_fresh.ts`). */
  #fresh: FreshBytes;
  /** A look without a buffer, made once: a spin calls it many times. */
  #tryPlain = (): Uint8Array | null | undefined => this.#tryRecv();

  /** @ignore Use {@linkcode shmQueue} or `fromFd()`. */
  constructor(ring: Ring) {
    this.#ring = ring;
    this.#maxMessage = ring.maxMessage;
    this.#fresh = new FreshBytes(ring.maxMessage);
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

  /**
   * The largest message this receiver takes, in bytes: the ring's (set by
   * whoever made the queue) unless lowered here. A ring from another process
   * may allow messages up to its whole size (at most 1 GiB), each of which
   * `recv()` copies into a new buffer; a receiver that expects less sets
   * this, and a larger message then fails the receive with `InvalidData`, as
   * a corrupt ring does (every later call throws the same error). It cannot
   * be raised above the ring's. It stays with this object: a receiver sent
   * to another process, or rebuilt with `fromFd()`, starts from the ring's
   * again.
   *
   * @example Take messages of at most 4 KiB from a peer's queue
   * ```ts
   * import { shmQueue } from "@conduit/ipc/shm";
   *
   * using q = shmQueue({ bytes: 1 << 20 });
   * const [tx, rx] = q;
   * rx.maxMessageBytes = 4096;
   * await tx.send(new Uint8Array(8192));
   * await rx.recv().catch((e) => console.log(e.name)); // "InvalidData"
   * ```
   */
  get maxMessageBytes(): number {
    return this.#maxMessage;
  }

  set maxMessageBytes(value: number) {
    const most = this.#ring.maxMessage;
    if (!Number.isInteger(value) || value < 0 || value > most) {
      throw new RangeError(
        `Cannot set maxMessageBytes of ShmReceiver: must be an integer from 0 to the ring's ${most}, got ${value}`,
      );
    }
    this.#maxMessage = value;
    this.#fresh = new FreshBytes(value);
  }

  /**
   * The old name of `maxMessageBytes`.
   *
   * @deprecated Use `maxMessageBytes`; `maxMessage` will be removed in 0.2.0.
   */
  get maxMessage(): number {
    return this.#maxMessage;
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
   * `ShmReceiver { fd: 9, state: "open", ringBytes: 65544, maxMessageBytes: 65536 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return inspectEndpoint(
      "ShmReceiver",
      this.#ring.inspectFields(this.#maxMessage),
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
   * @returns A copy of the message (a view of `into` when given; up to 1
   * KiB, a view of a block of up to 16 KiB shared with this receiver's
   * other small messages, as Node's `Buffer` pool does: read it through its
   * `byteOffset`; cloning it copies the whole block, and transferring its
   * `buffer` (a byte stream's `enqueue()` does) empties the block's other
   * messages, so `slice()` one to keep or pass it alone), or `null` once
   * the ring is drained and the sender is gone (closed everywhere, or its
   * process ended). A message the sender had not finished when it died is
   * never returned.
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
      // Nothing queued ahead: a message already there, or one that comes
      // within the spin, needs no promise chain. Nothing else runs while
      // this thread spins, so no later call can overtake this one.
      try {
        let message = this.#tryRecv(into);
        if (message === undefined && options.signal?.aborted !== true) {
          message = r.spinner.spin(
            into === undefined ? this.#tryPlain : () => this.#tryRecv(into),
          );
        }
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
    try {
      const head = r.position(HEAD, "receive");
      const tail = r.position(TAIL, "receive");
      if (tail !== head) return this.#read(head, tail, into);
      return r.peerGone ? null : undefined;
    } catch (error) {
      throw this.#failed(error);
    }
  }

  /** Keeps a corrupt ring's error: every later call throws it. */
  #failed(error: unknown): unknown {
    if (error instanceof Deno.errors.InvalidData) this.#failure = error;
    return error;
  }

  #guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (error) {
      throw this.#failed(error);
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
    if (n > this.#maxMessage) {
      throw new Deno.errors.InvalidData(
        `Cannot receive on shmQueue: a message of ${n} bytes exceeds this receiver's maxMessageBytes ${this.#maxMessage}`,
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
      out = this.#fresh.take(n);
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

  /**
   * Yields messages until {@linkcode recv} returns `null`; a message of up
   * to 1 KiB is a view of a block shared with this receiver's other small
   * messages, as from {@linkcode recv}. Closing this receiver (during the
   * loop, or before it) ends the loop quietly, as a socket's loop ends.
   */
  [Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
    return untilNull(() => this.#next(), () => this.#closedHere);
  }

  /**
   * The next message for `for await`: one that is here already comes
   * without the promise of a `recv()` (or `null` at the end); otherwise a
   * `recv()`.
   */
  #next(): Uint8Array | null | Promise<Uint8Array | null> {
    if (this.#recvs.length === 0) {
      const message = this.#tryRecv();
      if (message === null && this.#ring.turn === undefined) return null;
      if (message !== undefined) return this.#ring.settleSoon(message);
    }
    return this.recv();
  }

  /** Lets a pending receive keep the process alive (the default). */
  ref(): void {
    this.#ring.ref();
  }

  /** Lets the process exit while a receive is pending. */
  unref(): void {
    this.#ring.unref();
  }

  /**
   * Closes this process's copy of the receiver; a pending receive rejects
   * with `BadResource`. Once every copy is closed, sends that must wait for
   * room reject with `BrokenPipe`. Idempotent.
   */
  close(): void {
    if (!this.#ring.closed) this.#closedHere = true;
    this[givenAway]();
  }

  /** Closes the receiver. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @ignore The kind of endpoint this is. */
  get [endpointKind](): EndpointKind {
    return "ShmReceiver";
  }

  /**
   * @ignore Closes this copy once a message transferred it: a loop over it
   * fails rather than ends, as over a channel receiver that was sent.
   */
  [givenAway](): void {
    this.#ring.close();
    this.#fresh.release();
  }

  /** @ignore Gives up the carrier fd without closing it. */
  [releaseFd](): number {
    this.#fresh.release();
    return this.#ring.release();
  }

  /** @ignore Where a pending wait is parked, for tests. */
  [parkedOn](): "bell" | "poller" | undefined {
    return this.#ring.parked;
  }

  /** @ignore The ring's views, for tests that play a hostile peer. */
  [ringViews](): { header: Int32Array; data: Uint8Array } {
    this.#ring.assertOpen();
    return { header: this.#ring.header, data: this.#ring.data };
  }
}
