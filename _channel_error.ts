/**
 * The error of a channel that is over, shared by local channels and the NATS
 * transport. It lives apart from `channel.ts` so that the NATS entry point
 * can throw the same class without loading libc.
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
