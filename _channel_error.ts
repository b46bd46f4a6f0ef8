/**
 * The errors of channels, shared by local channels and the NATS transport:
 * the channel that is over, and the malformed frame of a peer. They live
 * apart from `channel.ts` so that the NATS entry point can throw the same
 * errors without loading libc.
 *
 * @module
 */

/**
 * Thrown by a receive once every sender of the channel is closed (and every
 * message they sent was taken), and by a send once the receiver is closed.
 *
 * @example Drain until the senders are gone
 * ```ts
 * import { channel, ChannelClosedError } from "@conduit/ipc/channel";
 *
 * const [tx, rx] = channel<number>();
 * await tx.send(1);
 * tx.close();
 * console.log(await rx.recv()); // 1
 * try {
 *   await rx.recv();
 * } catch (error) {
 *   console.log(error instanceof ChannelClosedError); // true
 * }
 * rx.close();
 * ```
 */
export class ChannelClosedError extends Error {
  /**
   * Creates the error.
   *
   * @param message What was attempted and why it failed.
   * @param options The cause, if any.
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "ChannelClosedError";
  }
}

/** The failure of decoding untrusted bytes. */
export function invalid(detail: string): Deno.errors.InvalidData {
  return new Deno.errors.InvalidData(
    `Cannot receive on channel: malformed frame: ${detail}`,
  );
}

/**
 * The error of a message larger than the receiver takes (its
 * `maxMessageBytes`, `max`): `size` bytes encoded.
 */
export function overMaxMessage(
  size: number,
  max: number,
): Deno.errors.InvalidData {
  return new Deno.errors.InvalidData(
    `Cannot receive on channel: a message of ${size} bytes exceeds this receiver's maxMessageBytes (${max}); ` +
      "a receiver that expects such messages can raise it",
  );
}

/** What a receiver's `next` gives when every sender is closed. */
export const CLOSED_NOW: unique symbol = Symbol("closed");

/**
 * Each value `recv()` gives until it throws {@linkcode ChannelClosedError}:
 * the `for await` of a receiver, local or over NATS. `next`, when given,
 * is asked instead of `recv()`: it gives a value that is there already (a
 * value never is a promise: functions are not sent), `CLOSED_NOW`, or a
 * promise as `recv()` does, so a message that is there costs one settled
 * promise and no generator machinery. Once `closed()` says the receiver
 * was closed (by this program, during the loop or before it), the
 * `BadResource` its receive then throws ends the loop quietly, as a
 * socket's or a listener's loop ends.
 */
export function untilClosed<T>(
  recv: () => Promise<T>,
  next: () => T | typeof CLOSED_NOW | Promise<T> = recv,
  closed?: () => boolean,
): AsyncGenerator<T> {
  return new UntilClosed(next, false, closed);
}

/**
 * The same iterator over a receive that gives `null` at the end (a shm
 * queue's): each value until the first `null`. `next` gives a value or
 * `null` that is there already, or a promise of one.
 */
export function untilNull<T>(
  next: () => T | null | Promise<T | null>,
  closed?: () => boolean,
): AsyncGenerator<T> {
  return new UntilClosed<T>(next as () => T | Promise<T>, true, closed);
}

const DONE: IteratorReturnResult<undefined> = Object.freeze({
  value: undefined,
  done: true,
});

/**
 * The iterator behind {@linkcode untilClosed}, with an async generator's
 * rules: calls settle one after another in call order, the first error
 * ends it, `return()` and `throw()` end it (after a call still pending),
 * and once ended every `next()` gives `{ done: true }`.
 */
class UntilClosed<T> implements AsyncGenerator<T> {
  #take: () => T | typeof CLOSED_NOW | Promise<T>;
  /** Whether a `null` value is the end. */
  #nullEnds: boolean;
  /** Whether the receiver was closed: its `BadResource` is the end then. */
  #closed: (() => boolean) | undefined;
  #done = false;
  /** The last call that has not settled yet, which later calls wait for. */
  #pending: Promise<IteratorResult<T>> | undefined;
  /** Whether the call just made waits for a value that is not here yet. */
  #running = false;

  constructor(
    take: () => T | typeof CLOSED_NOW | Promise<T>,
    nullEnds = false,
    closed?: () => boolean,
  ) {
    this.#take = take;
    this.#nullEnds = nullEnds;
    this.#closed = closed;
  }

  next(): Promise<IteratorResult<T>> {
    if (this.#pending === undefined) {
      this.#running = false;
      const result = this.#step();
      if (this.#running) this.#track(result);
      return result;
    }
    return this.#queued(() => this.#step());
  }

  return(value?: unknown): Promise<IteratorResult<T>> {
    return this.#queued(() => {
      this.#done = true;
      this.#running = true;
      return Promise.resolve(value).then((v) => ({ value: v, done: true }));
    });
  }

  throw(error?: unknown): Promise<IteratorResult<T>> {
    return this.#queued(() => {
      this.#done = true;
      return Promise.reject(error);
    });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  /** Tells what it stands for, as a generator's does: `AsyncGenerator`. */
  get [Symbol.toStringTag](): string {
    return "AsyncGenerator";
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.return();
  }

  /** Runs `call` now, or once the pending call settled. */
  #queued(
    call: () => Promise<IteratorResult<T>>,
  ): Promise<IteratorResult<T>> {
    const before = this.#pending;
    if (before === undefined) {
      this.#running = false;
      const result = call();
      // A call that settled at once needs no waiting for.
      if (this.#running) this.#track(result);
      return result;
    }
    const result = before.then(call, call);
    this.#track(result);
    return result;
  }

  /**
   * Later calls wait for `result` to settle. Its own handler, added before
   * the caller's, forgets it at once, so the call the caller makes when it
   * has the result takes the direct path again.
   */
  #track(result: Promise<IteratorResult<T>>): void {
    this.#pending = result;
    const forget = () => {
      if (this.#pending === result) this.#pending = undefined;
    };
    result.then(forget, forget);
  }

  #step(): Promise<IteratorResult<T>> {
    if (this.#done) return Promise.resolve(DONE);
    let got;
    try {
      got = this.#take();
    } catch (error) {
      return this.#fail(error);
    }
    if (got === CLOSED_NOW || (got === null && this.#nullEnds)) {
      this.#done = true;
      return Promise.resolve(DONE);
    }
    if (got instanceof Promise) {
      this.#running = true;
      return got.then(
        (value: T): IteratorResult<T> => {
          if (value !== null || !this.#nullEnds) return { value, done: false };
          this.#done = true;
          return DONE;
        },
        (error) => this.#fail(error),
      );
    }
    return Promise.resolve({ value: got, done: false });
  }

  /**
   * Ends the iteration: at the end of the channel, when the receiver was
   * closed, or with its error.
   */
  #fail(error: unknown): Promise<IteratorResult<T>> {
    this.#done = true;
    if (
      error instanceof ChannelClosedError ||
      (error instanceof Deno.errors.BadResource && this.#closed?.() === true)
    ) {
      return Promise.resolve(DONE);
    }
    return Promise.reject(error);
  }
}

/**
 * A stream of the values `recv()` gives, taken only as it is read and ended
 * by {@linkcode ChannelClosedError}; cancelling it calls `close()`.
 */
export function streamUntilClosed<T>(
  recv: () => Promise<T>,
  close: () => unknown,
): ReadableStream<T> {
  return new ReadableStream<T>({
    pull: async (controller) => {
      try {
        controller.enqueue(await recv());
      } catch (error) {
        if (error instanceof ChannelClosedError) controller.close();
        else throw error;
      }
    },
    cancel: async () => {
      await close();
    },
  }, { highWaterMark: 0 });
}
