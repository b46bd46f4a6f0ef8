/**
 * {@linkcode ChannelServer}: a named server for any number of clients.
 *
 * @module
 */

import type { Receiver } from "./channel.ts";
import { inspectEndpoint } from "./_inspect.ts";
import { FIRST_SHORTAGE_PAUSE_MS, pauseOnShortage } from "./_turn.ts";
import {
  acceptClient,
  limits,
  type Listening,
  listenOnRandomName,
  type ServerAcceptOptions,
  serverFields,
  type ServerOptions,
} from "./_server.ts";

/**
 * A named server for any number of clients: each {@linkcode accept} (or
 * each step of `for await`) returns the receiver of one more client that
 * called {@linkcode connectOneShot} with its {@linkcode name}. Connections
 * of other users are dropped.
 *
 * @typeParam T The message type.
 *
 * @example Serve clients until closed
 * ```ts
 * import { ChannelServer, connectOneShot } from "@conduit/ipc/oneshot";
 *
 * using server = new ChannelServer<number>();
 * const clients = [1, 2, 3].map(async (n) => {
 *   const tx = await connectOneShot<number>(server.name);
 *   await tx.send(n);
 *   tx.close();
 * });
 * let sum = 0;
 * for (let i = 0; i < 3; i++) {
 *   using rx = await server.accept({ timeout: 5000 });
 *   for await (const n of rx) sum += n;
 * }
 * await Promise.all(clients);
 * console.log(sum); // 6
 * ```
 */
export class ChannelServer<T>
  implements Disposable, AsyncIterable<Receiver<T>> {
  #server: Listening;
  #ref = true;

  /**
   * Starts listening on a fresh random name.
   *
   * @param options Who may connect (default: this user only), and the
   * receivers' decode limits.
   */
  constructor(options: ServerOptions = {}) {
    this.#server = listenOnRandomName(options);
  }

  /**
   * The name to pass to {@linkcode connectOneShot}: random, but not secret
   * (every user can list abstract names); other users' connections are
   * dropped.
   */
  get name(): string {
    return this.#server.name;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#server.listener.closed;
  }

  /**
   * Shows the kind, the listening fd, the state and the name, as
   * `ChannelServer { fd: 9, state: "open", name: "conduit-oneshot/…" }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    return inspectEndpoint(
      "ChannelServer",
      serverFields(this.#server.listener, this.#server.name, this.#ref),
      inspect,
      options,
    );
  }

  /**
   * Waits for the next client.
   *
   * @param options An abort signal and a timeout in milliseconds.
   * @returns The receiver of that client's channel.
   * @throws {Deno.errors.TimedOut} When `timeout` passes first.
   *
   * @example One client at a time
   * ```ts
   * import { ChannelServer, connectOneShot } from "@conduit/ipc/oneshot";
   *
   * using server = new ChannelServer<string>();
   * using tx = await connectOneShot<string>(server.name);
   * await tx.send("ping");
   * using rx = await server.accept({ timeout: 5000 });
   * console.log(await rx.recv()); // "ping"
   * ```
   */
  async accept(options: ServerAcceptOptions = {}): Promise<Receiver<T>> {
    const { signal, done } = limits(options, "accept on ChannelServer");
    try {
      signal.throwIfAborted();
      return await acceptClient<T>(
        "ChannelServer",
        this.#server.listener,
        signal,
        this.#server.allow,
        this.#server.decodeLimits,
      );
    } finally {
      done();
    }
  }

  /**
   * Yields each client's receiver until the server is closed. When this
   * process runs out of fds (`EMFILE`, as when clients hold many
   * connections open) or memory, the connection stays queued and the loop
   * tries again after a pause (5 ms, doubling up to 1 s) instead of ending.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<Receiver<T>> {
    let pause = FIRST_SHORTAGE_PAUSE_MS;
    for (;;) {
      let rx: Receiver<T>;
      try {
        rx = await this.accept();
      } catch (error) {
        if (this.#server.listener.closed) return;
        const next = await pauseOnShortage(
          error,
          pause,
          () => this.closed,
          () => this.#ref,
        );
        if (next === undefined) throw error;
        pause = next;
        continue;
      }
      pause = FIRST_SHORTAGE_PAUSE_MS;
      yield rx;
    }
  }

  /** Lets a pending accept keep the process alive (the default). */
  ref(): void {
    this.#ref = true;
    this.#server.listener.ref();
  }

  /** Lets the process exit while an accept is pending. */
  unref(): void {
    this.#ref = false;
    this.#server.listener.unref();
  }

  /** Stops listening; a pending accept rejects. Idempotent. */
  close(): void {
    this.#server.listener.close();
  }

  /** Stops listening. */
  [Symbol.dispose](): void {
    this.close();
  }
}
