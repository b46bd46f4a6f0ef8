/**
 * The queue of the `aio` wake path (see `_wake_direct.ts`): Linux AIO
 * `IOCB_CMD_POLL` requests with `IOCB_FLAG_RESFD` on the wake path's
 * eventfd. Also the `pipe_wrap` binding both one-hand-off paths read their
 * eventfd through.
 *
 * @module
 */

import process from "node:process";
import { libc, SYS } from "./libc.ts";
import { ERRNO, errno, systemError } from "./errors.ts";
import { IO_EVENT, IOCB, TIMESPEC } from "./layout.ts";
import { addressOf, stableBuffer } from "./mem.ts";
import {
  type Completions,
  DIRECT_MAX,
  type PollQueue,
  readData,
  REAP_EVENTS,
  writeData,
} from "./_wake.ts";

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

/** What this module and the shm queue's bell use of a `pipe_wrap` Pipe. */
export interface PipeHandle {
  open(fd: number): number;
  readStart(): number;
  readStop(): number;
  close(): void;
  ref(): void;
  unref(): void;
  onread: (buffer?: ArrayBuffer) => void;
  useUserBuffer?: (buffer: Uint8Array) => void;
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

const IO_SUBMIT = BigInt(SYS.io_submit);

/**
 * Events of the AIO context: room for the epoll fd's poll and for
 * {@linkcode DIRECT_MAX} direct polls with their cancellations. The kernel
 * counts this against `fs.aio-max-nr` (65,536 for the whole machine by
 * default) until the process exits.
 */
const CTX_EVENTS = 64;
/**
 * The context of a Worker, and of the fallback when `fs.aio-max-nr` has no
 * room for a full one: no direct polls.
 */
const SMALL_CTX_EVENTS = 8;

/**
 * Whether this isolate is a Worker. Its AIO context outlives it (a context
 * belongs to the process; a terminated Worker runs no code to destroy it),
 * and so would any direct poll it left outstanding, holding its fd's open
 * file after every fd is closed. A Worker therefore takes the small context
 * and waits through the epoll set only: an epoll set holds no watched file,
 * and each Worker ever started keeps only that much of `fs.aio-max-nr`.
 */
export const IN_WORKER: boolean = (() => {
  const scope = globalThis as { Window?: unknown; WorkerGlobalScope?: unknown };
  // Only the main thread has Window: a web Worker has WorkerGlobalScope, a
  // node:worker_threads Worker neither.
  return typeof scope.Window !== "function" ||
    typeof scope.WorkerGlobalScope === "function";
})();

/** `struct aio_ring`: the header the kernel maps at the context address. */
const RING = {
  header: 32,
  /** u32 fields: 1 nr, 2 head, 3 tail, 4 magic, 6 incompat, 7 header size. */
  nr: 1,
  head: 2,
  tail: 3,
  magic: 4,
  incompat: 6,
  headerLength: 7,
  MAGIC: 0xa10a10a1,
} as const;

interface AioContext {
  ctx: bigint;
  /** The same as a pointer, for `io_submit`. */
  pointer: Deno.PointerValue;
  /** The completion ring, read in place, or undefined to reap by syscall. */
  ring: CompletionRing | undefined;
  /** Whether direct polls fit. */
  direct: boolean;
  /** Why the context cannot serve (a call it needs is refused), if so. */
  refused: Error | undefined;
}

let aioContext: AioContext | undefined;

/**
 * This process's (or Worker's) AIO context, set up on first use and kept: an
 * AIO context holds no fd, and `io_destroy` waits for an RCU grace period
 * (about 30 ms here), far too long to pay each time the poller goes idle.
 */
function aioCtx(): AioContext {
  if (aioContext !== undefined) {
    if (aioContext.refused !== undefined) throw aioContext.refused;
    return aioContext;
  }
  const ctxBuf = stableBuffer(8);
  let direct = !IN_WORKER;
  if (
    !direct || sys(SYS.io_setup, BigInt(CTX_EVENTS), addressOf(ctxBuf)) !== 0
  ) {
    // A Worker, or fs.aio-max-nr with room for a small context only.
    direct = false;
    if (
      sys(SYS.io_setup, BigInt(SMALL_CTX_EVENTS), addressOf(ctxBuf)) !== 0
    ) {
      throw systemError("io_setup", errno());
    }
  }
  const ctx = new DataView(ctxBuf).getBigUint64(0, true);
  aioContext = {
    ctx,
    pointer: Deno.UnsafePointer.create(ctx),
    ring: CompletionRing.open(ctx),
    direct,
    refused: refusedCall(ctx),
  };
  if (aioContext.refused !== undefined) throw aioContext.refused;
  return aioContext;
}

/**
 * Why `ctx` cannot serve a wake path: a sandbox that allows `io_setup` and
 * `io_submit` but refuses `io_cancel` or `io_getevents` would leave each
 * poll of a closed wake outstanding (holding its file, and a place in the
 * context until none is left) after waiting for its completion in vain.
 * Both are asked something harmless: to cancel a request never submitted
 * (the kernel's answer is EINVAL) and to take no completion.
 */
function refusedCall(ctx: bigint): Error | undefined {
  const iocb = stableBuffer(IOCB.size);
  const events = stableBuffer(IO_EVENT.size);
  if (sys(SYS.io_cancel, ctx, addressOf(iocb), addressOf(events)) === -1) {
    const code = errno();
    if (code !== ERRNO.EINVAL) return systemError("io_cancel", code);
  }
  const time = stableBuffer(TIMESPEC.size);
  const n = sys(
    SYS.io_getevents,
    ctx,
    0n,
    0n,
    addressOf(events),
    addressOf(time),
  );
  if (n === -1) return systemError("io_getevents", errno());
  return undefined;
}

/** Whether this process's AIO context has room for direct polls. */
export function aioDirect(): boolean {
  return aioCtx().direct;
}

/**
 * The context's completion ring as the kernel maps it into this process
 * (`struct aio_ring`), read in place: taking a completion costs no syscall.
 * This thread is its only reader; the kernel reads the head back when it
 * needs the room.
 */
class CompletionRing {
  #header: Uint32Array;
  #events: DataView;
  #nr: number;

  private constructor(header: Uint32Array, events: DataView, nr: number) {
    this.#header = header;
    this.#events = events;
    this.#nr = nr;
  }

  /** The ring at `ctx`, or undefined when its header is not the known one. */
  static open(ctx: bigint): CompletionRing | undefined {
    try {
      const pointer = Deno.UnsafePointer.create(ctx);
      if (pointer === null) return undefined;
      const head = new Uint32Array(
        Deno.UnsafePointerView.getArrayBuffer(pointer, RING.header),
      );
      const nr = head[RING.nr];
      if (
        head[RING.magic] !== RING.MAGIC || head[RING.incompat] !== 0 ||
        head[RING.headerLength] !== RING.header || nr === 0 || nr > 1 << 16
      ) {
        return undefined;
      }
      const all = Deno.UnsafePointerView.getArrayBuffer(
        pointer,
        RING.header + nr * IO_EVENT.size,
      );
      return new CompletionRing(
        new Uint32Array(all, 0, RING.header / 4),
        new DataView(all, RING.header),
        nr,
      );
    } catch {
      return undefined;
    }
  }

  /** Whether the ring holds no completion (false when in doubt). */
  get empty(): boolean {
    return Atomics.load(this.#header, RING.head) ===
      Atomics.load(this.#header, RING.tail);
  }

  /**
   * Takes every completion in the ring into `into`; false when head or
   * tail is out of range (then the caller reaps by syscall).
   */
  take(into: Completions): boolean {
    const header = this.#header;
    const nr = this.#nr;
    let head = Atomics.load(header, RING.head);
    const tail = Atomics.load(header, RING.tail);
    if (head >= nr || tail >= nr) return false;
    const events = this.#events;
    while (head !== tail) {
      const at = head * IO_EVENT.size;
      // res is an i64 holding events (small) or a negative errno.
      into.add(
        readData(events, at + IO_EVENT.data),
        events.getInt32(at + IO_EVENT.res, true),
      );
      head = head + 1 === nr ? 0 : head + 1;
      Atomics.store(header, RING.head, head);
    }
    return true;
  }
}

/**
 * The AIO queue of one wake path: the process's context (kept), an iocb for
 * the epoll set's poll and one per direct-poll slot, each known by its
 * address to `io_cancel`.
 */
export class AioQueue implements PollQueue {
  readonly path = "aio" as const;
  readonly call = "io_submit(IOCB_CMD_POLL)";
  readonly closeEnds = false;
  #ctx: AioContext;
  #iocbs = stableBuffer((DIRECT_MAX + 1) * IOCB.size);
  #iocbsView = new DataView(this.#iocbs);
  #iocbsAddress = addressOf(this.#iocbs);
  #iocbList = stableBuffer(8);
  #iocbListView = new DataView(this.#iocbList);
  #events = stableBuffer(REAP_EVENTS * IO_EVENT.size);
  #eventsView = new DataView(this.#events);
  #time = stableBuffer(TIMESPEC.size);
  #timeView = new DataView(this.#time);

  /** @throws When AIO is refused (the context cannot be set up). */
  constructor() {
    this.#ctx = aioCtx();
  }

  get direct(): boolean {
    return this.#ctx.direct;
  }

  get empty(): boolean {
    return this.#ctx.ring?.empty !== false;
  }

  attach(efd: number): void {
    const view = this.#iocbsView;
    for (let i = 0; i <= DIRECT_MAX; i++) {
      const at = i * IOCB.size;
      view.setUint16(at + IOCB.lioOpcode, IOCB.CMD_POLL, true);
      view.setUint32(at + IOCB.flags, IOCB.FLAG_RESFD, true);
      view.setUint32(at + IOCB.resfd, efd, true);
    }
  }

  // The epoll set's iocb comes after the slots'.
  #at(slot: number): number {
    return (slot === -1 ? DIRECT_MAX : slot) * IOCB.size;
  }

  poll(data: number, fd: number, events: number, slot: number): number {
    const view = this.#iocbsView;
    const at = this.#at(slot);
    writeData(view, at + IOCB.data, data);
    view.setUint32(at + IOCB.fildes, fd, true);
    view.setBigUint64(at + IOCB.buf, BigInt(events), true);
    this.#iocbListView.setBigUint64(0, this.#iocbsAddress + BigInt(at), true);
    const n = libc().io_submit(
      IO_SUBMIT,
      this.#ctx.pointer,
      1n,
      this.#iocbList,
    );
    return n === 1 ? 0 : errno();
  }

  cancel(_data: number, slot: number): void {
    // EINPROGRESS: it completes shortly; EINVAL: it already had.
    sys(
      SYS.io_cancel,
      this.#ctx.ctx,
      this.#iocbsAddress + BigInt(this.#at(slot)),
      addressOf(this.#events),
    );
  }

  take(into: Completions): void {
    if (this.#ctx.ring?.take(into)) return;
    while (this.#reap(into, 0, 0n) === REAP_EVENTS);
  }

  waitTake(into: Completions, ns: bigint): void {
    this.#reap(into, 1, ns);
  }

  close(): void {
    // The context is kept for the next wake path.
  }

  /**
   * Reaps completions by syscall (at least `min`, waiting up to `ns`) into
   * `into`; returns how many.
   */
  #reap(into: Completions, min: number, ns: bigint): number {
    this.#timeView.setBigInt64(TIMESPEC.sec, ns / 1_000_000_000n, true);
    this.#timeView.setBigInt64(TIMESPEC.nsec, ns % 1_000_000_000n, true);
    const n = sys(
      SYS.io_getevents,
      this.#ctx.ctx,
      BigInt(min),
      BigInt(REAP_EVENTS),
      addressOf(this.#events),
      addressOf(this.#time),
    );
    const view = this.#eventsView;
    for (let i = 0; i < n; i++) {
      const at = i * IO_EVENT.size;
      into.add(
        readData(view, at + IO_EVENT.data),
        view.getInt32(at + IO_EVENT.res, true),
      );
    }
    return Math.max(n, 0);
  }
}
