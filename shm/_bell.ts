/**
 * A queue end's doorbell read by Deno's own event loop: the `pipe_wrap`
 * binding reads a duplicate of the doorbell fd on the JS thread, so a ring
 * wakes a parked end with one read of the ring itself. The poller's wait
 * (an AIO poll, the eventfd it signals read twice, then the ring drained
 * with a read and a look that finds nothing) costs about twice the
 * syscalls per wake, and each costs 2–4 µs on a machine that was idle.
 *
 * Only for doorbells: the binding reads whatever arrives, so it suits a
 * socket that carries nothing but rings (a message's fds would be lost).
 * Used by the main thread on the `uring` and `aio` wake paths, for ends
 * made in this process or adopted with `fromFd()`. A Worker waits through
 * the poller as before: a terminated Worker runs no code, so a handle of
 * its event loop would keep the doorbell open (and take the rings of
 * whoever holds the end next). So do the `ffi` path, a Deno without the
 * binding, and an end received in a message (see below).
 *
 * The binding reads with plain `read()`, which relies on the fd's
 * `O_NONBLOCK`; that flag belongs to the open file, which a duplicate
 * shares with the doorbell itself and with every process holding the same
 * end. The process that made an end holds its doorbell's open file until it
 * hands the end over, and may keep a copy: had it cleared the flag, the
 * event loop's read would block the thread for good. An end received in a
 * message, whose maker may be any peer (another user's process), therefore
 * waits through the poller, whose reads pass `MSG_DONTWAIT`; it is marked
 * shared as it is received (its carrier's hello says so), and so is every
 * later adoption of it, by a child it is handed to too. One made here, or
 * inherited unmarked and adopted with `fromFd()`, parks on this bell: its
 * maker is this process or the one that started it, which can stop this
 * one anyway (SIGSTOP). A doorbell that parked here stays
 * non-blocking (it is never given back blocking: another holder's bell may
 * be reading it).
 *
 * An empty packet reads as the end of the stream to the binding, which
 * then stops; the bell looks for the hang-up itself, and when there is
 * none its owner goes on through the poller.
 *
 * @module
 */

import process from "node:process";
import { IN_WORKER, type PipeHandle, pipeWrap } from "../ffi/_wake_aio.ts";
import { dupCloexec } from "../ffi/fd.ts";
import { libc } from "../ffi/libc.ts";
import { poller } from "../ffi/poller.ts";
import { loopTurned } from "../ffi/_turns.ts";
import { readHangup } from "../_scm.ts";

/** A wait for the next ring. */
interface Waiter {
  resolve: () => void;
  reject: (error: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

// The bytes-read-or-error slot of the binding's shared state: an `onread`
// without a buffer reports either, and a negative count is the end of the
// stream or an error.
let readState: { state: Int32Array; at: number } | undefined | null;

function bytesRead(): number {
  if (readState === undefined) {
    try {
      const binding = (process as unknown as {
        binding(name: string): unknown;
      }).binding("stream_wrap") as {
        streamBaseState?: unknown;
        kReadBytesOrError?: unknown;
      };
      const { streamBaseState, kReadBytesOrError } = binding;
      readState = streamBaseState instanceof Int32Array &&
          typeof kReadBytesOrError === "number"
        ? { state: streamBaseState, at: kReadBytesOrError }
        : null;
    } catch {
      readState = null;
    }
  }
  // Without the shared state, a call without a buffer is the end.
  return readState === null ? -1 : readState.state[readState.at];
}

/**
 * A doorbell's rings as Deno's event loop reads them, only while a wait is
 * pending: a ring that comes while nobody waits stays in the socket (for the
 * next wait here, which wakes at once and looks again, or for whoever holds
 * the end by then). The end of the stream, or an error, marks the bell
 * {@linkcode gone} for good.
 */
export class ReactorBell {
  #handle: PipeHandle;
  /** The duplicate the handle reads (and owns). */
  #fd: number;
  #waiter: Waiter | undefined;
  #gone = false;
  #stopped = false;
  #closed = false;
  #refed = true;

  private constructor(handle: PipeHandle, fd: number) {
    this.#handle = handle;
    this.#fd = fd;
  }

  /**
   * A bell on a duplicate of `fd`, or `undefined` in a Worker, when the
   * wake path is `ffi`, or when the binding is missing or refuses the
   * fd (the caller then waits through the poller).
   */
  static open(fd: number): ReactorBell | undefined {
    if (IN_WORKER || poller().wakePath.path === "ffi") return undefined;
    const binding = pipeWrap();
    if (typeof binding === "string") return undefined;
    let copy = -1;
    let handle: PipeHandle | undefined;
    try {
      copy = dupCloexec(fd);
      handle = binding.make();
      if (handle.open(copy) !== 0) {
        handle.close();
        handle = undefined;
        return undefined;
      }
      // The handle owns the copy from here: closing it closes the copy.
      const bell = new ReactorBell(handle, copy);
      copy = -1;
      // Rings land in one small buffer; a ring is one byte.
      handle.useUserBuffer?.(new Uint8Array(new ArrayBuffer(64)));
      handle.onread = (buffer) => bell.#onRead(buffer);
      // Reads only while a wait is pending (see wait()); starting them once
      // here tells whether the binding takes the fd at all.
      if (handle.readStart() !== 0 || handle.readStop() !== 0) {
        handle.close();
        return undefined;
      }
      handle.unref();
      return bell;
    } catch {
      handle?.close();
      return undefined;
    } finally {
      if (copy !== -1) libc().close(copy);
    }
  }

  /** Whether the other side hung up (or the bell failed): no ring will come. */
  get gone(): boolean {
    return this.#gone;
  }

  /**
   * Whether the binding stopped at an empty packet, which it reads as the
   * end of the stream while the other side is still there: the owner
   * closes this bell and waits through the poller.
   */
  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * Resolves at the next ring, or at once when the bell is gone; rejects
   * with `closed` when the bell is closed first, or with the signal's
   * reason when `signal` is aborted first. One wait at a time.
   */
  wait(signal?: AbortSignal): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("bell closed"));
    if (this.#gone || this.#stopped) return Promise.resolve();
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#waiter !== undefined) {
      return Promise.reject(new Error("a bell takes one wait at a time"));
    }
    // The doorbell is read only while a wait is pending: an end handed to
    // another process (spawn, a socket) may stay open here, and a read
    // while nobody waits would take a ring meant for that process.
    if (this.#handle.readStart() !== 0) {
      return Promise.reject(new Error("the doorbell cannot be read"));
    }
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, signal, onAbort: undefined };
      if (signal !== undefined) {
        waiter.onAbort = () => {
          if (this.#waiter !== waiter) return;
          this.#settle();
          reject(signal.reason);
        };
        signal.addEventListener("abort", waiter.onAbort, { once: true });
      }
      this.#waiter = waiter;
      if (this.#refed) this.#handle.ref();
    });
  }

  /** A pending wait keeps the process alive (the default). */
  ref(): void {
    this.#refed = true;
    if (this.#waiter !== undefined && !this.#closed) this.#handle.ref();
  }

  /** A pending wait does not keep the process alive. */
  unref(): void {
    this.#refed = false;
    if (!this.#closed) this.#handle.unref();
  }

  /**
   * Stops reading and closes the duplicate: rings that come later stay in
   * the socket for whoever holds it next. A pending wait rejects with
   * `error`. Idempotent.
   */
  close(error: unknown): void {
    if (this.#closed) return;
    this.#closed = true;
    const waiter = this.#settle();
    this.#handle.onread = () => {};
    this.#handle.close();
    waiter?.reject(error);
  }

  #onRead(buffer: ArrayBuffer | undefined): void {
    loopTurned();
    if (this.#closed) return;
    if (buffer === undefined && bytesRead() < 0) {
      // End of the stream or an error: the binding has stopped reading. An
      // empty packet reads as the end too; only a hang-up is one.
      let hungUp = true;
      try {
        hungUp = readHangup(this.#fd);
      } catch {
        // The fd failed: no ring can come through it.
      }
      if (hungUp) this.#gone = true;
      else this.#stopped = true;
    }
    this.#settle()?.resolve();
  }

  /** Takes the pending wait off, if any, and lets the process go. */
  #settle(): Waiter | undefined {
    const waiter = this.#waiter;
    if (waiter === undefined) return undefined;
    this.#waiter = undefined;
    if (waiter.onAbort !== undefined) {
      waiter.signal!.removeEventListener("abort", waiter.onAbort);
    }
    if (!this.#closed) {
      this.#handle.readStop();
      this.#handle.unref();
    }
    return waiter;
  }
}
