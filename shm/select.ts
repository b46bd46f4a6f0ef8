/**
 * {@linkcode ShmReceiverSet}: one loop that serves many shared-memory
 * queues, as `ReceiverSet` does for channels.
 *
 * @module
 */

import { closedError } from "../ffi/errors.ts";
import { inspectEndpoint } from "../_inspect.ts";
import { ShmReceiver } from "./queue.ts";

/** What {@linkcode ShmReceiverSet.select} returns. */
export type ShmSelectResult =
  | { id: number; value: Uint8Array; closed?: false; error?: undefined }
  | { id: number; closed: true; value?: undefined; error?: Error };

/** Options for {@linkcode ShmReceiverSet.select}. */
export interface ShmSelectOptions {
  /** Stops waiting and rejects with the signal's reason. */
  signal?: AbortSignal;
}

type Outcome = { value: Uint8Array | null } | { error: Error };

interface Entry {
  receiver: ShmReceiver;
  stop: AbortController;
  outcome?: Outcome;
}

/**
 * Waits on many {@linkcode ShmReceiver}s at once. {@linkcode select}
 * returns the next message of any of them (each receiver's in order; across
 * receivers, in the order the set learned of them), or reports a receiver
 * whose sender is gone (or whose ring is corrupt): that receiver is then
 * closed and out of the set, and the others go on. No receiver starves the
 * others: each has at most one message waiting in the set.
 *
 * The set keeps one receive pending on each receiver (parked as any
 * receive is: no thread, no polling), and holds at most one message per
 * receiver until `select()` takes it; the next receive starts only then,
 * so a receiver whose messages are not taken is not read further.
 *
 * Unlike `ReceiverSet`, `select()` on an empty set waits for a receiver to
 * be added, which suits a server whose clients come and go.
 *
 * @example Two queues, one loop
 * ```ts
 * import { shmQueue, ShmReceiverSet } from "@conduit/ipc/shm";
 *
 * const [tx1, rx1] = shmQueue();
 * const [tx2, rx2] = shmQueue();
 * using set = new ShmReceiverSet();
 * const id1 = set.add(rx1);
 * set.add(rx2);
 * await tx1.send(new Uint8Array([1]));
 * const first = await set.select();
 * console.log(first.id === id1, first.value); // true Uint8Array(1) [ 1 ]
 * tx1.close();
 * console.log(await set.select()); // { id: 1, closed: true }
 * tx2.close();
 * ```
 */
export class ShmReceiverSet implements Disposable {
  #entries = new Map<number, Entry>();
  #ready: number[] = [];
  #nextId = 1;
  #wakers = new Set<() => void>();
  #closed = false;

  /**
   * Adds a receiver; the set now owns it (closing the set closes it).
   *
   * @param receiver The receiver.
   * @returns Its id in {@linkcode select} results.
   * @throws {TypeError} When it is not a `ShmReceiver`.
   * @throws {Deno.errors.BadResource} When the set or the receiver is
   * closed.
   *
   * @example Add a client's queue as it arrives
   * ```ts
   * import { shmQueue, ShmReceiverSet } from "@conduit/ipc/shm";
   *
   * using set = new ShmReceiverSet();
   * const [tx, rx] = shmQueue();
   * const id = set.add(rx); // the set owns rx now
   * await tx.send(new TextEncoder().encode("hi"));
   * console.log((await set.select()).id === id); // true
   * tx.close();
   * ```
   */
  add(receiver: ShmReceiver): number {
    if (this.#closed) throw closedError("ShmReceiverSet");
    if (!(receiver instanceof ShmReceiver)) {
      throw new TypeError("Cannot add to ShmReceiverSet: not a ShmReceiver");
    }
    if (receiver.closed) throw closedError("ShmReceiver");
    const id = this.#nextId++;
    const entry: Entry = { receiver, stop: new AbortController() };
    this.#entries.set(id, entry);
    this.#receive(id, entry);
    return id;
  }

  /** How many receivers are in the set. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Shows the state and how many receivers are in the set, as
   * `ShmReceiverSet { state: "open", size: 2 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return inspectEndpoint(
      "ShmReceiverSet",
      { state: this.#closed ? "closed" : "open", size: this.#entries.size },
      inspect,
      options,
    );
  }

  /**
   * The receiver of an id, or `undefined` once it left the set.
   *
   * @param id Its id.
   * @returns The receiver, still owned by the set.
   *
   * @example Look a receiver up by id
   * ```ts
   * import { shmQueue, ShmReceiverSet } from "@conduit/ipc/shm";
   *
   * using set = new ShmReceiverSet();
   * const [tx, rx] = shmQueue();
   * const id = set.add(rx);
   * console.log(set.get(id) === rx, set.get(id + 1)); // true undefined
   * tx.close();
   * ```
   */
  get(id: number): ShmReceiver | undefined {
    return this.#entries.get(id)?.receiver;
  }

  /**
   * Closes one receiver and takes it out of the set (a message the set had
   * taken from its ring and not returned yet is dropped with it).
   *
   * @param id Its id.
   * @returns Whether the id was in the set.
   *
   * @example Stop serving one client
   * ```ts
   * import { shmQueue, ShmReceiverSet } from "@conduit/ipc/shm";
   *
   * using set = new ShmReceiverSet();
   * const [tx, rx] = shmQueue();
   * const id = set.add(rx);
   * console.log(set.drop(id), rx.closed, set.size); // true true 0
   * tx.close();
   * ```
   */
  drop(id: number): boolean {
    const entry = this.#entries.get(id);
    if (entry === undefined) return false;
    this.#entries.delete(id);
    entry.stop.abort();
    entry.receiver.close();
    return true;
  }

  /**
   * Waits for the next message of any receiver in the set, or for one
   * whose sender is gone.
   *
   * @param options An abort signal.
   * @returns `{ id, value }`, or `{ id, closed: true }` (with `error` when
   * the ring was corrupt): that receiver is then closed and out of the set.
   * @throws {Deno.errors.BadResource} When the set is closed, then or while
   * waiting.
   *
   * @example Serve until every sender is gone
   * ```ts
   * import { shmQueue, ShmReceiverSet } from "@conduit/ipc/shm";
   *
   * using set = new ShmReceiverSet();
   * for (const n of [1, 2]) {
   *   const [tx, rx] = shmQueue();
   *   set.add(rx);
   *   await tx.send(new Uint8Array([n]));
   *   tx.close();
   * }
   * let sum = 0;
   * while (set.size > 0) {
   *   const got = await set.select({ signal: AbortSignal.timeout(5000) });
   *   if (!got.closed) sum += got.value[0];
   * }
   * console.log(sum); // 3
   * ```
   */
  async select(options: ShmSelectOptions = {}): Promise<ShmSelectResult> {
    const { signal } = options;
    for (;;) {
      if (this.#closed) throw closedError("ShmReceiverSet");
      signal?.throwIfAborted();
      const id = this.#ready.shift();
      if (id !== undefined) {
        const entry = this.#entries.get(id);
        const outcome = entry?.outcome;
        if (entry === undefined || outcome === undefined) continue;
        entry.outcome = undefined;
        if ("error" in outcome || outcome.value === null) {
          this.#entries.delete(id);
          entry.receiver.close();
          return "error" in outcome
            ? { id, closed: true, error: outcome.error }
            : { id, closed: true };
        }
        this.#receive(id, entry);
        return { id, value: outcome.value };
      }
      await this.#nextReady(signal);
    }
  }

  #receive(id: number, entry: Entry): void {
    entry.receiver.recv({ signal: entry.stop.signal }).then(
      (value) => this.#arrived(id, entry, { value }),
      (error) => {
        // Withdrawn by drop() or close(): nothing to report.
        if (entry.stop.signal.aborted || entry.receiver.closed) return;
        this.#arrived(id, entry, { error: error as Error });
      },
    );
  }

  #arrived(id: number, entry: Entry, outcome: Outcome): void {
    if (this.#entries.get(id) !== entry) return;
    entry.outcome = outcome;
    this.#ready.push(id);
    this.#wakeAll();
  }

  #wakeAll(): void {
    const wakers = [...this.#wakers];
    this.#wakers.clear();
    for (const wake of wakers) wake();
  }

  #nextReady(signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const wake = () => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      };
      const onAbort = () => {
        this.#wakers.delete(wake);
        reject(signal!.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#wakers.add(wake);
    });
  }

  /** Closes every receiver in the set; a pending select rejects. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const entry of this.#entries.values()) {
      entry.stop.abort();
      entry.receiver.close();
    }
    this.#entries.clear();
    this.#ready = [];
    this.#wakeAll();
  }

  /** Closes the set. */
  [Symbol.dispose](): void {
    this.close();
  }
}
