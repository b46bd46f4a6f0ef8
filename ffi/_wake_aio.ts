/**
 * The `aio` wake path: one Linux AIO `IOCB_CMD_POLL` on the poller's epoll
 * fd signals a private eventfd that Deno's own event loop reads on the JS
 * thread (through the `pipe_wrap` binding): one hand-off per wake.
 *
 * @module
 */

import process from "node:process";
import { libc, SYS } from "./libc.ts";
import { errno, systemError } from "./errors.ts";
import { EFD, EPOLL, IO_EVENT, IOCB, TIMESPEC } from "./layout.ts";
import { addressOf, stableBuffer } from "./mem.ts";
import type { Wake } from "./_wake.ts";

/** Raw syscall through `syscall(2)`: a number, or -1 with errno set. */
function sys(
  nr: number,
  a = 0n,
  b = 0n,
  c = 0n,
  d = 0n,
  e = 0n,
): number {
  return Number(libc().syscall6(BigInt(nr), a, b, c, d, e));
}

interface PipeHandle {
  open(fd: number): number;
  readStart(): number;
  close(): void;
  ref(): void;
  unref(): void;
  onread: (buffer?: ArrayBuffer) => void;
}

/** The `pipe_wrap` binding's `Pipe` class, or why it cannot be had. */
export function pipeWrap(): { make: () => PipeHandle } | string {
  try {
    const binding = (process as unknown as {
      binding(name: string): unknown;
    }).binding("pipe_wrap") as {
      Pipe?: new (type: number) => PipeHandle;
      constants?: { SOCKET?: number };
    };
    const { Pipe, constants } = binding;
    if (typeof Pipe !== "function" || typeof constants?.SOCKET !== "number") {
      return "this Deno has no pipe_wrap Pipe binding";
    }
    const type = constants.SOCKET;
    return { make: () => new Pipe(type) };
  } catch (error) {
    return `process.binding("pipe_wrap") failed: ${(error as Error).message}`;
  }
}

/** Completions reaped at once; one is expected, stale ones are skipped. */
const REAP_EVENTS = 8;
/** How long closing waits for a cancelled poll's completion, in ns. */
const CANCEL_REAP_NS = 100_000_000n;

let aioContext: bigint | undefined;
let aioTags = 0n;

/**
 * This process's (or Worker's) AIO context, set up on first use and kept: an
 * AIO context holds no fd, and `io_destroy` waits for an RCU grace period
 * (about 30 ms here), far too long to pay each time the poller goes idle.
 */
function aioCtx(): bigint {
  if (aioContext !== undefined) return aioContext;
  const ctxBuf = stableBuffer(8);
  if (sys(SYS.io_setup, BigInt(REAP_EVENTS), addressOf(ctxBuf)) !== 0) {
    throw systemError("io_setup", errno());
  }
  return aioContext = new DataView(ctxBuf).getBigUint64(0, true);
}

/**
 * The one-hand-off path: an AIO poll on the epoll fd signals a private
 * eventfd that Deno's event loop reads on the JS thread.
 */
export class AioWake implements Wake {
  readonly path = "aio" as const;
  readonly busy = false;
  #ctx: bigint;
  #efd: number;
  #pipe: PipeHandle;
  #iocb = stableBuffer(IOCB.size);
  #iocbView = new DataView(this.#iocb);
  #iocbList = stableBuffer(8);
  #events = stableBuffer(REAP_EVENTS * IO_EVENT.size);
  #eventsView = new DataView(this.#events);
  #time = stableBuffer(TIMESPEC.size);
  #timeView = new DataView(this.#time);
  // Each submission is tagged (aio_data, unique in this context) so that a
  // late completion of an earlier poll is never taken for the current one.
  #tag = 0n;
  #armed = false;
  #refed = true;

  /** Throws, having released what it took, when AIO poll is refused. */
  constructor(epfd: number, onEvents: () => void, make: () => PipeHandle) {
    const lib = libc();
    this.#ctx = aioCtx();
    this.#reap(0, 0n);
    const efd = lib.eventfd(0, EFD.CLOEXEC);
    if (efd === -1) throw systemError("eventfd", errno());
    this.#efd = efd;
    const iocb = this.#iocbView;
    iocb.setUint16(IOCB.lioOpcode, IOCB.CMD_POLL, true);
    iocb.setUint32(IOCB.fildes, epfd, true);
    iocb.setBigUint64(IOCB.buf, BigInt(EPOLL.IN), true);
    iocb.setUint32(IOCB.flags, IOCB.FLAG_RESFD, true);
    iocb.setUint32(IOCB.resfd, efd, true);
    new DataView(this.#iocbList).setBigUint64(0, addressOf(this.#iocb), true);
    let pipe: PipeHandle | undefined;
    try {
      // A first submission proves that IOCB_CMD_POLL is allowed here (Linux
      // 4.18 or later, no seccomp or sandbox refusal); it stays armed.
      this.#submit();
      pipe = make();
      if (pipe.open(efd) !== 0) {
        throw new Error("Pipe#open of an eventfd failed");
      }
      pipe.onread = () => this.#completed(onEvents);
      if (pipe.readStart() !== 0) throw new Error("Pipe#readStart failed");
    } catch (error) {
      this.#cancel();
      if (pipe !== undefined) pipe.close();
      else lib.close(efd);
      throw error;
    }
    this.#pipe = pipe;
    this.#setRef(false);
  }

  get holding(): boolean {
    return this.#armed && this.#refed;
  }

  /** The private eventfd that Deno's event loop watches. */
  get eventFd(): number {
    return this.#efd;
  }

  arm(ref: boolean): void {
    this.#setRef(ref);
    if (!this.#armed) this.#submit();
  }

  disarm(): void {
    // An armed poll may stay: the set has no interest left, so it completes
    // only for a late event, which is then drained and ignored.
    this.#setRef(false);
  }

  close(): void {
    this.#cancel();
    this.#pipe.close();
  }

  #setRef(ref: boolean): void {
    if (ref === this.#refed) return;
    this.#refed = ref;
    if (ref) this.#pipe.ref();
    else this.#pipe.unref();
  }

  #submit(): void {
    this.#tag = ++aioTags;
    this.#iocbView.setBigUint64(IOCB.data, this.#tag, true);
    const n = sys(SYS.io_submit, this.#ctx, 1n, addressOf(this.#iocbList));
    if (n !== 1) throw systemError("io_submit(IOCB_CMD_POLL)", errno());
    this.#armed = true;
  }

  /** Cancels an armed poll and reaps its completion (microseconds). */
  #cancel(): void {
    if (!this.#armed) return;
    // EINPROGRESS: the cancelled poll completes shortly; EINVAL: it already
    // had. Either way its completion is reaped here.
    sys(
      SYS.io_cancel,
      this.#ctx,
      addressOf(this.#iocb),
      addressOf(this.#events),
    );
    this.#reap(1, CANCEL_REAP_NS);
    this.#armed = false;
  }

  /**
   * Reaps completions (at least `min`, waiting up to `ns`); clears `armed`
   * when the current poll's completion is among them.
   */
  #reap(min: number, ns: bigint): void {
    this.#timeView.setBigInt64(TIMESPEC.sec, ns / 1_000_000_000n, true);
    this.#timeView.setBigInt64(TIMESPEC.nsec, ns % 1_000_000_000n, true);
    const n = sys(
      SYS.io_getevents,
      this.#ctx,
      BigInt(min),
      BigInt(REAP_EVENTS),
      addressOf(this.#events),
      addressOf(this.#time),
    );
    for (let i = 0; i < n; i++) {
      const tag = this.#eventsView.getBigUint64(
        i * IO_EVENT.size + IO_EVENT.data,
        true,
      );
      if (tag === this.#tag) this.#armed = false;
    }
  }

  #completed(onEvents: () => void): void {
    // Deno's reader has consumed the eventfd count; reap the completion so
    // the next poll can be submitted.
    this.#reap(0, 0n);
    onEvents();
  }
}
