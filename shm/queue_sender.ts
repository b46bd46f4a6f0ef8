/**
 * {@linkcode ShmSender}: the sending end of a `shmQueue()`.
 *
 * @module
 */

import { inspectEndpoint } from "../_inspect.ts";
import { CallQueue, type QueuedCall } from "../_call_queue.ts";
import {
  lostWhileWaiting,
  pinned,
  transferredWhileWaiting,
} from "../_byte_io.ts";
import { type EndpointKind, endpointKind, releaseFd } from "../_keys.ts";
import { parkedOn, ringViews } from "./_keys.ts";
import {
  align8,
  awaitedLater,
  HEAD,
  RECEIVER_WAITING,
  receiverGone,
  RECORD,
  type Ring,
  SEND_SEQ,
  SENDER_NEEDS,
  SENDER_WAITING,
  TAIL,
} from "./_ring.ts";

/** Options for {@linkcode ShmSender.send} and {@linkcode ShmReceiver.recv}. */
export interface ShmWaitOptions {
  /** Stops waiting and rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** A send that waits for room. */
interface QueuedSend extends QueuedCall<void> {
  /** The caller's message, {@linkcode pinned}. */
  bytes: Uint8Array;
  /** How many bytes it had when it was sent. */
  length: number;
  signal: AbortSignal | undefined;
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
      advance: (jobs) => {
        const { bytes, length } = jobs[0];
        // Transferred away or shrunk while it waited: it must not go as a
        // shorter message, nor wait for room it can never have.
        if (lostWhileWaiting(bytes, length)) {
          throw transferredWhileWaiting(
            "Cannot send on shmQueue",
            "send",
            0,
            bytes,
          );
        }
        return this.#trySend(bytes) === true ? 1 : 0;
      },
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
   * `ShmSender { fd: 9, state: "open", ringBytes: 65544, maxMessageBytes: 65536 }`.
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
   * ended or every copy of it was closed) and the message must wait for
   * room. A send that finds room does not look for the receiver: after it
   * is gone, sends still succeed until the ring is full.
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
    const kept = pinned(bytes);
    return awaitedLater(
      this.#sends.push({
        bytes: kept,
        length: kept.byteLength,
        signal: options.signal,
      }),
    );
  }

  #room(need: number): boolean {
    const r = this.#ring;
    const tail = r.position(TAIL, "send");
    const head = r.position(HEAD, "send");
    return r.capacity - r.used(head, tail, "send") >= need;
  }

  /**
   * Writes the message if it fits now: `true`, or `undefined` to wait. A
   * message that fits goes in whether or not the receiver is gone (its
   * send resolves, as documented); one that must wait for room fails once
   * the receiver is known to be gone, as nothing will make room.
   */
  #trySend(bytes: Uint8Array): true | undefined {
    const r = this.#ring;
    r.assertOpen();
    const need = RECORD + align8(bytes.byteLength);
    const tail = r.position(TAIL, "send");
    const head = r.position(HEAD, "send");
    if (r.capacity - r.used(head, tail, "send") < need) {
      if (r.peerGone) throw receiverGone();
      return undefined;
    }
    this.#write(bytes, tail, need);
    r.wake(RECEIVER_WAITING);
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
    this.#ring.ref();
  }

  /** Lets the process exit while a send waits for room. */
  unref(): void {
    this.#ring.unref();
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
