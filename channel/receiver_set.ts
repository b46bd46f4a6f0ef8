/**
 * {@linkcode ReceiverSet}: waits on many receivers at once.
 *
 * @module
 */

import { ChannelClosedError } from "../_channel_error.ts";
import { poller } from "../ffi/poller.ts";
import { closedError } from "../ffi/errors.ts";
import { TurnSlice, yieldTurn } from "../_turn.ts";
import { inspectEndpoint } from "../_inspect.ts";
import { lastBytes, lookFull, pollOnce, waitReady } from "./_keys.ts";
import { type ChannelRecvOptions, Receiver } from "./receiver.ts";

/** What {@linkcode ReceiverSet.select} returns. */
export type SelectResult<T> =
  | { id: number; value: T; closed?: false; error?: undefined }
  | { id: number; closed: true; value?: undefined; error?: Error };

/**
 * Waits on many receivers at once: {@linkcode select} returns the next
 * message of any of them, or reports one whose senders are all gone (it
 * then leaves the set).
 *
 * @typeParam T The message type.
 *
 * @example Select over two channels
 * ```ts
 * import { channel, ReceiverSet } from "@conduit/ipc/channel";
 *
 * const [tx1, rx1] = channel<string>();
 * const [tx2, rx2] = channel<string>();
 * const set = new ReceiverSet<string>();
 * const id1 = set.add(rx1);
 * set.add(rx2);
 * await tx1.send("one");
 * console.log(await set.select()); // { id: id1, value: "one" }
 * tx1.close();
 * console.log(await set.select()); // { id: id1, closed: true }
 * tx2.close();
 * set.close();
 * ```
 */
export class ReceiverSet<T = unknown> implements Disposable {
  #entries = new Map<number, Receiver<T>>();
  /** The last failed receive of each receiver, reported with its close. */
  #errors = new Map<number, Error>();
  #slice = new TurnSlice();
  #nextId = 1;
  #start = 0;

  /**
   * Adds a receiver; the set now owns it (closing the set closes it).
   *
   * @param receiver The receiver.
   * @returns Its id in {@linkcode select} results.
   * @throws {TypeError} When it is no `Receiver`, or is in the set already.
   * @throws {Deno.errors.BadResource} When it is closed.
   *
   * @example Tell receivers apart by id
   * ```ts
   * import { channel, ReceiverSet } from "@conduit/ipc/channel";
   *
   * using set = new ReceiverSet<string>();
   * const [jobs, jobsRx] = channel<string>();
   * const [logs, logsRx] = channel<string>();
   * const jobsId = set.add(jobsRx);
   * set.add(logsRx);
   * await jobs.send("build");
   * const got = await set.select();
   * console.log(got.id === jobsId, got.value); // true "build"
   * jobs.close();
   * logs.close();
   * ```
   */
  add(receiver: Receiver<T>): number {
    if (!(receiver instanceof Receiver)) {
      throw new TypeError("Cannot add to ReceiverSet: not a Receiver");
    }
    if (receiver.closed) throw closedError("Receiver");
    for (const [id, entry] of this.#entries) {
      if (entry === receiver) {
        throw new TypeError(
          `Cannot add to ReceiverSet: this receiver is in the set already, as id ${id}`,
        );
      }
    }
    const id = this.#nextId++;
    this.#entries.set(id, receiver);
    return id;
  }

  /**
   * Takes a receiver out of the set without closing it.
   *
   * @param id Its id.
   * @returns The receiver, or `undefined` when the id is not in the set.
   *
   * @example Take a receiver back
   * ```ts
   * import { channel, ReceiverSet } from "@conduit/ipc/channel";
   *
   * const set = new ReceiverSet<number>();
   * const [tx, rx] = channel<number>();
   * const id = set.add(rx);
   * const back = set.remove(id); // the same receiver, still open
   * console.log(back === rx, set.size); // true 0
   * set.close(); // rx stays open
   * await tx.send(1);
   * console.log(await rx.recv()); // 1
   * tx.close();
   * rx.close();
   * ```
   */
  remove(id: number): Receiver<T> | undefined {
    const receiver = this.#entries.get(id);
    this.#entries.delete(id);
    this.#errors.delete(id);
    return receiver;
  }

  /** How many receivers are in the set. */
  get size(): number {
    return this.#entries.size;
  }

  /** Shows how many receivers are in the set, as `ReceiverSet { size: 2 }`. */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return inspectEndpoint(
      "ReceiverSet",
      { size: this.#entries.size },
      inspect,
      options,
    );
  }

  /**
   * Waits for the next message of any receiver in the set (taken fairly),
   * or for one whose every sender is gone. Like {@linkcode Receiver.recv},
   * a run of messages that are ready at once yields a macrotask turn every
   * 1,024 messages or 2 ms.
   *
   * @param options An abort signal.
   * @returns `{ id, value }`, or `{ id, closed: true }` (that receiver is
   * then closed and out of the set). A sender whose message could not be
   * taken (`InvalidData` for a malformed frame, or a value over the
   * receiver's `limits`) is dropped, as `recv()` drops it, without a
   * result: its receiver goes on with its other senders, and its close
   * comes with `error`, the last such failure.
   * @throws {ChannelClosedError} When the set is empty.
   *
   * @example Serve until every channel is done
   * ```ts
   * import { channel, ReceiverSet } from "@conduit/ipc/channel";
   *
   * using set = new ReceiverSet<number>();
   * for (let i = 0; i < 3; i++) {
   *   const [tx, rx] = channel<number>();
   *   set.add(rx);
   *   await tx.send(i);
   *   tx.close();
   * }
   * let sum = 0;
   * while (set.size > 0) {
   *   const got = await set.select({ signal: AbortSignal.timeout(5_000) });
   *   if (!got.closed) sum += got.value;
   * }
   * console.log(sum); // 3
   * ```
   */
  async select(options: ChannelRecvOptions = {}): Promise<SelectResult<T>> {
    const { signal } = options;
    signal?.throwIfAborted();
    let parked = false;
    const turns = poller().turns;
    for (;;) {
      let failed = false;
      const entries = [...this.#entries];
      if (entries.length === 0) {
        throw new ChannelClosedError(
          "Cannot select: the receiver set is empty",
        );
      }
      for (let i = 0; i < entries.length; i++) {
        const [id, receiver] = entries[(this.#start + i) % entries.length];
        if (receiver.closed) {
          this.#entries.delete(id);
          this.#errors.delete(id);
          continue;
        }
        let polled;
        try {
          polled = receiver[pollOnce]();
        } catch (error) {
          // What one sender sent (a malformed frame, a value over the
          // limits) drops that sender, as in recv(); the receiver goes on
          // with its other senders, if any, and the error comes with its
          // close. The next look starts at the next receiver.
          this.#errors.set(
            id,
            error instanceof Error ? error : new Error(String(error)),
          );
          this.#start = (this.#start + i + 1) % entries.length;
          failed = true;
          break;
        }
        if (polled.kind === "value") {
          this.#start = (this.#start + i + 1) % entries.length;
          // Only a wait that let the event loop turn starts a new slice.
          if (parked && poller().turns !== turns) this.#slice.waited();
          else if (this.#slice.delivered(receiver[lastBytes])) {
            await yieldTurn();
          }
          return { id, value: polled.value };
        }
        if (polled.kind === "closed") {
          this.#entries.delete(id);
          receiver.close();
          const error = this.#errors.get(id);
          if (error === undefined) return { id, closed: true };
          this.#errors.delete(id);
          return { id, closed: true, error };
        }
      }
      if (failed) {
        // A sender was dropped: look again before waiting (its receiver
        // may have no sender left, which the look reports). A failure may
        // have cost a whole decode up to the limits, and a peer can send
        // them without end: each lets the event loop turn, and an abort
        // end the select.
        await yieldTurn();
        signal?.throwIfAborted();
        continue;
      }
      const live = [...this.#entries.values()];
      if (live.length === 0) continue;
      if (live.some((receiver) => receiver[lookFull]())) {
        // Frames are still queued: take a macrotask turn, then look again.
        await yieldTurn();
        signal?.throwIfAborted();
        continue;
      }
      const stop = new AbortController();
      const both = signal === undefined
        ? stop.signal
        : AbortSignal.any([stop.signal, signal]);
      try {
        await Promise.any(live.map((receiver) => receiver[waitReady](both)));
        parked = true;
      } catch {
        signal?.throwIfAborted();
      } finally {
        stop.abort();
      }
    }
  }

  /** Closes every receiver in the set and empties it. */
  close(): void {
    for (const receiver of this.#entries.values()) receiver.close();
    this.#entries.clear();
    this.#errors.clear();
  }

  /** Closes the set. */
  [Symbol.dispose](): void {
    this.close();
  }
}
