/**
 * {@linkcode Sender}: the sending end of a channel. What it has on its way
 * to the receiver (credits, batch, queue) is its outbox's.
 *
 * @module
 */

import { closedError } from "../ffi/errors.ts";
import { OwnedFd } from "../ffi/fd.ts";
import { libc } from "../ffi/libc.ts";
import { checkSpin, Spinner } from "../ffi/spin.ts";
import { closeAll } from "../_scm.ts";
import { inspectEndpoint } from "../_inspect.ts";
import {
  FRAME,
  header,
  markSocket,
  sendFrame,
  seqpacketPair,
} from "../_channel_wire.ts";
import { MODE_BYTES } from "./_connection.ts";
import { bytesFrame, type Frame, valueFrame } from "./_frame.ts";
import { senderMode } from "./_keys.ts";
import { Outbox } from "./_outbox.ts";
import { type EndpointKind, endpointKind, releaseFd } from "../_keys.ts";
import { describe } from "../_byte_io.ts";

/** Options for {@linkcode Sender.send}. */
export interface ChannelSendOptions {
  /**
   * Endpoints inside the value that this process gives up: closed once the
   * message is sent (a `close()` that throws then is ignored: the message
   * is out). Receivers in a message are always moved. Buffers need no
   * transfer: the message carries a copy. A `bytesChannel()` sender takes
   * none.
   */
  transfer?: readonly { close(): void }[];
  /** Aborting it while the send still waits for room gives the send up. */
  signal?: AbortSignal;
  /**
   * Microseconds to spin while this send waits for room, before parking
   * in the poller: `0` never spins, a number spins that long each time.
   * By default the sender spins only while recent spins were answered.
   */
  spin?: number;
}

/**
 * The `transfer` option, checked before anything is sent: an array of
 * objects that have a `close()` (endpoints), and none for a bytes channel.
 */
function checkTransfer(
  transfer: unknown,
  mode: number,
): readonly { close(): void }[] | undefined {
  if (transfer === undefined) return undefined;
  const doing = "Cannot send on channel";
  if (!Array.isArray(transfer)) {
    throw new TypeError(
      `${doing}: transfer must be an array of endpoints, got ${
        describe(transfer)
      }`,
    );
  }
  if (mode === MODE_BYTES && transfer.length > 0) {
    throw new TypeError(
      `${doing}: a bytesChannel() sender sends bytes, which hold no endpoint to transfer`,
    );
  }
  transfer.forEach((entry, i) => {
    if (
      typeof entry !== "object" || entry === null ||
      typeof (entry as { close?: unknown }).close !== "function"
    ) {
      throw new TypeError(
        `${doing}: transfer[${i}] is ${
          describe(entry)
        }, not an endpoint to close once the message is sent (buffers need no transfer: the message carries a copy)`,
      );
    }
  });
  return transfer;
}

/**
 * The sending end of a channel from {@linkcode channel} or
 * {@linkcode bytesChannel} (or `connectOneShot()`). Send it inside a message
 * to give another process a sender of the same channel; `clone()` makes
 * another one here.
 *
 * @typeParam T The message type.
 *
 * @example Several senders, one receiver
 * ```ts
 * import { channel } from "@conduit/ipc/channel";
 *
 * const [tx, rx] = channel<string>();
 * const tx2 = tx.clone();
 * await tx.send("a");
 * await tx2.send("b");
 * tx.close();
 * tx2.close();
 * for await (const s of rx) console.log(s); // "a", "b" in some order
 * rx.close();
 * ```
 */
export class Sender<T> implements Disposable {
  #fd: OwnedFd;
  #capacity: number;
  #mode: number;
  #out: Outbox;
  /** Clones whose registration with the receiver waits for room. */
  #registering = 0;
  #closed = false;

  /**
   * @ignore Use {@linkcode channel}, {@linkcode Sender.clone} or
   * `fromFd()`.
   */
  constructor(fd: number, capacity: number, mode: number) {
    this.#fd = new OwnedFd(fd, "Sender");
    this.#capacity = capacity;
    this.#mode = mode;
    this.#out = new Outbox(this.#fd, capacity, () => this.#closeIfDone());
  }

  /** @ignore The mode of the channel: values or bytes. */
  get [senderMode](): number {
    return this.#mode;
  }

  /** Messages this sender may have in flight before `send()` waits. */
  get capacity(): number {
    return this.#capacity;
  }

  /** The connection socket, for interop; the sender still owns it. */
  get rawFd(): number {
    if (this.#closed) throw closedError("Sender");
    return this.#fd.fd;
  }

  /** Whether {@linkcode close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Shows the kind, fd, state, mode and capacity, as
   * `Sender { fd: 7, state: "open", mode: "values", capacity: 1024 }`.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: (value: unknown, options?: unknown) => string,
    options: unknown,
  ): string {
    const fields = {
      ...(this.#closed ? { state: "closed" } : this.#fd.state()),
      mode: this.#mode === MODE_BYTES ? "bytes" : "values",
      capacity: this.#capacity,
    };
    return inspectEndpoint("Sender", fields, inspect, options);
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError("Sender");
  }

  /**
   * Sends one message. The value is encoded at once (later changes to it do
   * not travel). Resolves once the message is on its way: in the channel,
   * or gathered with the other sends of this turn into one packet that
   * leaves when the sends stop (within the same turn), and always before
   * this thread spins waiting for anything, blocks in a `*Sync` call of
   * this module, or exits. Another way of blocking the thread
   * (`Atomics.wait`, a `Deno.*Sync` call) does not send it: close the
   * sender or let a macrotask turn pass first. Waits (without blocking the
   * thread) while `capacity` messages of this sender are not yet read.
   * Sends of one sender arrive in order.
   *
   * A message that carries endpoints or is larger than 64 KiB resolves only
   * once it is in the channel.
   *
   * @param value The message: anything structured clone takes, plus
   * endpoints.
   * @param options Endpoints to give up once sent; an abort signal; the
   * spin while waiting for room.
   * @returns Resolves when sent.
   * @throws {ChannelClosedError} When the receiver is closed (or refused
   * this sender).
   * @throws {DOMException} `DataCloneError` when the value holds something
   * that cannot travel (a function, a symbol, a `WeakMap`, a `URL`, a
   * `Blob`, ...).
   *
   * @example Send endpoints along
   * ```ts
   * import { channel } from "@conduit/ipc/channel";
   * import { pipe } from "@conduit/ipc/pipe";
   *
   * const [tx, rx] = channel<{ out: unknown }>();
   * const { reader, writer } = pipe();
   * await tx.send({ out: writer }, { transfer: [writer] });
   * const { out } = await rx.recv();
   * (out as { close(): void }).close();
   * reader.close();
   * tx.close();
   * rx.close();
   * ```
   */
  send(value: T, options: ChannelSendOptions = {}): Promise<void> {
    let frame: Frame;
    let spinner: Spinner | undefined;
    try {
      this.#assertOpen();
      options.signal?.throwIfAborted();
      if (options.spin !== undefined) {
        spinner = new Spinner(
          checkSpin(options.spin, "Cannot send on channel"),
        );
      }
      if (this.#out.failed !== undefined) throw this.#out.failed;
      const transfer = checkTransfer(options.transfer, this.#mode);
      frame = this.#mode === MODE_BYTES
        ? bytesFrame(value as Uint8Array)
        : valueFrame(value, transfer);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#out.send(frame, options.signal, spinner);
  }

  /**
   * Makes another sender of the same channel, with its own connection and
   * its own `capacity`. The receiver reports the channel closed only once
   * every sender is closed.
   *
   * @returns The new sender.
   *
   * @example Hand a clone to a helper
   * ```ts
   * import { channel } from "@conduit/ipc/channel";
   *
   * const [tx, rx] = channel<number>();
   * using helper = tx.clone();
   * await helper.send(7);
   * console.log(await rx.recv()); // 7
   * tx.close();
   * rx.close();
   * ```
   */
  clone(): Sender<T> {
    this.#assertOpen();
    const [mine, theirs] = seqpacketPair();
    try {
      markSocket(mine, "s", this.#mode, this.#capacity);
      markSocket(theirs, "r", this.#mode, this.#capacity);
    } catch (error) {
      closeAll([mine, theirs]);
      throw error;
    }
    const clone = new Sender<T>(mine, this.#capacity, this.#mode);
    const parts = [header(FRAME.ADD_PEER, this.#capacity, this.#mode)];
    const done = () => libc().close(theirs);
    let sent: boolean;
    try {
      sent = sendFrame(this.#fd.fd, parts, [theirs]);
    } catch {
      // The receiver is gone: so is the clone's channel, as sends will say.
      sent = true;
    }
    if (sent) {
      done();
      return clone;
    }
    // The socket is full: register once there is room. Closing this sender
    // meanwhile waits for the registration to go out.
    this.#registering++;
    (async () => {
      try {
        for (;;) {
          if (sendFrame(this.#fd.fd, parts, [theirs])) return;
          await this.#fd.wait("write");
        }
      } catch {
        // The receiver is gone; the clone's sends will say so.
      } finally {
        done();
        this.#registering--;
        this.#closeIfDone();
      }
    })();
    return clone;
  }

  /** Lets pending sends keep the process alive (the default). */
  ref(): void {
    this.#fd.ref();
  }

  /** Lets the process exit while a send is pending. */
  unref(): void {
    this.#fd.unref();
  }

  /**
   * Closes this sender; sends still waiting for room reject with
   * `BadResource`. Messages of sends that already resolved still go out
   * (the socket stays open until they are in it). Once every sender of
   * the channel is closed, the receiver's next `recv()` (after the
   * messages already sent) throws {@linkcode ChannelClosedError}.
   * Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#out.close(closedError("Sender"));
    this.#closeIfDone();
  }

  #closeIfDone(): void {
    if (
      this.#closed && this.#registering === 0 && !this.#out.pending()
    ) {
      this.#fd.close();
    }
  }

  /** Closes the sender. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** @ignore The kind of endpoint this is. */
  get [endpointKind](): EndpointKind {
    return "Sender";
  }

  /** @ignore Gives up the fd without closing it. */
  [releaseFd](): number {
    this.#assertOpen();
    this.#out.drainNow();
    if (this.#out.pending() || this.#registering > 0) {
      throw new Deno.errors.Busy(
        "Cannot release Sender: messages are still waiting to go out",
      );
    }
    this.#closed = true;
    return this.#fd.release();
  }
}
