/**
 * One NATS connection as the channel ends see it: whether it is up right
 * now, a wait for it to come back, and word of every drop, return and final
 * close. Ends share a link by reference count; a link that opened its own
 * connection closes it when the last end lets go.
 *
 * @module
 */

import { connect, Events, type NatsConnection, type Status } from "nats";
import { ChannelClosedError } from "../_channel_error.ts";

/** How to reach the server. */
export interface LinkOptions {
  servers?: string | string[];
  connection?: object;
  name?: string;
  reconnectTimeWait?: number;
  maxReconnectAttempts?: number;
}

/** What an end hears from its link. */
export interface LinkListener {
  /** The connection dropped; the client is reconnecting. */
  disconnected(): void;
  /** The connection is back (subscriptions are renewed by the client). */
  reconnected(): void;
  /** The connection is closed for good. */
  closed(error: ChannelClosedError): void;
}

/** The default server, as the `nats` command line tools assume. */
export const DEFAULT_SERVER = "127.0.0.1:4222";

function abortError(signal: AbortSignal): unknown {
  return signal.reason ??
    new DOMException("The wait was aborted", "AbortError");
}

/** One connection, shared by the ends made on it. */
export class Link {
  readonly nc: NatsConnection;
  #owned: boolean;
  #refs = 0;
  #up = true;
  #closed: ChannelClosedError | undefined;
  #waiters = new Set<PromiseWithResolvers<void>>();
  #listeners = new Set<LinkListener>();
  #status: AsyncIterable<Status> & { stop?(): void };
  #loop: Promise<void>;
  #released: Promise<void> | undefined;

  private constructor(nc: NatsConnection, owned: boolean) {
    this.nc = nc;
    this.#owned = owned;
    this.#status = nc.status() as AsyncIterable<Status> & { stop?(): void };
    this.#loop = this.#watch();
    nc.closed().then((error) => this.#onClosed(error));
  }

  /** Connects (or wraps `options.connection`). */
  static async open(options: LinkOptions): Promise<Link> {
    if (options.connection !== undefined) {
      const nc = options.connection as Partial<NatsConnection>;
      if (
        typeof nc.publish !== "function" ||
        typeof nc.subscribe !== "function" ||
        typeof nc.status !== "function" || typeof nc.isClosed !== "function"
      ) {
        throw new TypeError(
          "Cannot open NATS channel: connection is not a NatsConnection of the nats package",
        );
      }
      if (nc.isClosed()) {
        throw new ChannelClosedError(
          "Cannot open NATS channel: the connection is closed",
        );
      }
      return new Link(nc as NatsConnection, false);
    }
    const servers = options.servers ?? DEFAULT_SERVER;
    let nc: NatsConnection;
    try {
      nc = await connect({
        servers,
        name: options.name,
        maxReconnectAttempts: options.maxReconnectAttempts ?? -1,
        reconnectTimeWait: options.reconnectTimeWait ?? 250,
      });
    } catch (error) {
      if ((error as { code?: string })?.code === "CONNECTION_REFUSED") {
        throw new Deno.errors.ConnectionRefused(
          `Cannot open NATS channel: no NATS server answers at ${servers}`,
          { cause: error },
        );
      }
      throw error;
    }
    return new Link(nc, true);
  }

  async #watch(): Promise<void> {
    for await (const status of this.#status) {
      if (status.type === Events.Disconnect) {
        this.#up = false;
        for (const listener of this.#listeners) listener.disconnected();
      } else if (status.type === Events.Reconnect) {
        this.#up = true;
        // Listeners first (a sender re-sends what was not acknowledged),
        // then the sends that waited for the connection.
        for (const listener of this.#listeners) listener.reconnected();
        for (const waiter of this.#waiters) waiter.resolve();
        this.#waiters.clear();
      }
    }
  }

  #onClosed(error: void | Error): void {
    if (this.#closed !== undefined) return;
    this.#closed = new ChannelClosedError(
      "Cannot use NATS channel: the connection to NATS is closed",
      error ? { cause: error } : undefined,
    );
    this.#up = false;
    this.#status.stop?.();
    for (const waiter of this.#waiters) waiter.reject(this.#closed);
    this.#waiters.clear();
    for (const listener of this.#listeners) listener.closed(this.#closed);
  }

  /**
   * Whether a message published now goes out on a live connection. `info`
   * is cleared by the client as it starts to reconnect, before the status
   * event arrives, so nothing is published into a connection that is being
   * replaced.
   */
  get up(): boolean {
    return this.#up && this.#closed === undefined &&
      this.nc.info !== undefined;
  }

  /** The connection as an end shows it when inspected. */
  get state(): "up" | "down" | "closed" {
    if (this.#closed !== undefined) return "closed";
    return this.up ? "up" : "down";
  }

  /** Set once the connection is closed for good. */
  get closedError(): ChannelClosedError | undefined {
    return this.#closed;
  }

  /** The server's largest message, as last announced. */
  get maxPayload(): number {
    return this.nc.info?.max_payload ?? 1024 * 1024;
  }

  /** Resolves once the connection is up. */
  waitUp(signal?: AbortSignal): Promise<void> {
    if (this.#closed !== undefined) return Promise.reject(this.#closed);
    if (this.up) return Promise.resolve();
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const waiter = Promise.withResolvers<void>();
    this.#waiters.add(waiter);
    if (signal === undefined) return waiter.promise;
    const onAbort = () => {
      this.#waiters.delete(waiter);
      waiter.reject(abortError(signal));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    return waiter.promise.finally(() =>
      signal.removeEventListener("abort", onAbort)
    );
  }

  /** Takes a reference and starts telling `listener` about the connection. */
  acquire(listener: LinkListener): void {
    this.#refs++;
    this.#listeners.add(listener);
  }

  /**
   * Lets go of a reference; the last one closes a connection the link
   * opened (after a flush, so what was published leaves first, unless
   * `signal` gives up waiting).
   */
  async release(listener: LinkListener, signal?: AbortSignal): Promise<void> {
    if (!this.#listeners.delete(listener)) return;
    if (--this.#refs > 0) return;
    await this.#shutdown(signal);
  }

  /** Closes a link that no end took (a failed open). */
  async abandon(): Promise<void> {
    if (this.#refs === 0) await this.#shutdown();
  }

  #shutdown(signal?: AbortSignal): Promise<void> {
    return this.#released ??= (async () => {
      this.#status.stop?.();
      if (this.#owned) {
        if (this.up && !signal?.aborted) {
          const flushed = this.nc.flush();
          const gaveUp = new Promise<void>((resolve) =>
            signal?.addEventListener("abort", () => resolve(), { once: true })
          );
          await Promise.race([flushed.catch(() => {}), gaveUp]);
        }
        await this.nc.close();
      }
      await this.#loop;
    })();
  }
}
