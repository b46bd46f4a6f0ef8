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
 * Each value `recv()` gives until it throws {@linkcode ChannelClosedError}:
 * the `for await` of a receiver, local or over NATS.
 */
export async function* untilClosed<T>(
  recv: () => Promise<T>,
): AsyncGenerator<T> {
  for (;;) {
    let value: T;
    try {
      value = await recv();
    } catch (error) {
      if (error instanceof ChannelClosedError) return;
      throw error;
    }
    yield value;
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
