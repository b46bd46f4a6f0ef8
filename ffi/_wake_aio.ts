/**
 * The `aio` wake path: one Linux AIO `IOCB_CMD_POLL` on the poller's epoll
 * fd signals a private eventfd that Deno's own event loop reads on the JS
 * thread (through the `pipe_wrap` binding): one hand-off per wake.
 *
 * @module
 */

import process from "node:process";
import { libc, SYS } from "./libc.ts";
import { ERRNO, errno, systemError } from "./errors.ts";
import { EFD, EPOLL, IO_EVENT, IOCB, TIMESPEC } from "./layout.ts";
import { addressOf, stableBuffer } from "./mem.ts";
import type { Wake } from "./_wake.ts";
import { loopTurned } from "./_turns.ts";

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

/** Completions taken at once through `io_getevents` (the fallback reap). */
const REAP_EVENTS = 16;
/** How long closing waits for a cancelled poll's completion, in ns. */
const CANCEL_REAP_NS = 100_000_000n;
/**
 * Events of the AIO context: room for the epoll fd's poll and for
 * {@linkcode DIRECT_MAX} direct polls with their cancellations. The kernel
 * counts this against `fs.aio-max-nr` (65,536 for the whole machine by
 * default) until the process exits.
 */
const CTX_EVENTS = 64;
/**
 * Completions taken in a microtask (their fd was ready when its poll was
 * submitted) in a row before one is left to the event loop.
 */
const SOON_IN_A_ROW = 64;
/** Direct polls (one watched fd each) outstanding at once. */
const DIRECT_MAX = 48;
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

/**
 * A submission's `aio_data`: a number unique in the context (`aioSeq`)
 * times {@linkcode DATA_STEP}, plus, for a direct poll, its slot times 4
 * and 1. Low two bits 0: the epoll fd's poll. Numbers, not bigints: no
 * allocation and no map per wake-up.
 */
const DATA_STEP = 256;
/**
 * Where `aioSeq` starts over, so that `aio_data` stays an exact integer
 * below 2^53. At one submission a µs (about what one costs) it takes half
 * a year to get there, and a completion that old is long taken.
 */
const SEQ_WRAP = 2 ** 44;

/** The next submission number of this context. */
function nextSeq(): number {
  aioSeq = aioSeq >= SEQ_WRAP ? 1 : aioSeq + 1;
  return aioSeq;
}

/** `aio_data` read from a completion (two u32 halves, little-endian). */
function readData(view: DataView, at: number): number {
  return view.getUint32(at, true) +
    view.getUint32(at + 4, true) * 0x1_0000_0000;
}

/** Writes `data` as an iocb's `aio_data`. */
function writeData(view: DataView, at: number, data: number): void {
  view.setUint32(at, data % 0x1_0000_0000, true);
  view.setUint32(at + 4, Math.floor(data / 0x1_0000_0000), true);
}

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
let aioSeq = 0;

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
 * Completions taken and not yet sorted: kept in typed arrays that are
 * reused, so that taking them allocates nothing.
 */
class Completions {
  datas = new Float64Array(REAP_EVENTS);
  results = new Int32Array(REAP_EVENTS);
  count = 0;

  add(data: number, result: number): void {
    if (this.count === this.datas.length) {
      const datas = new Float64Array(this.count * 2);
      const results = new Int32Array(this.count * 2);
      datas.set(this.datas);
      results.set(this.results);
      this.datas = datas;
      this.results = results;
    }
    this.datas[this.count] = data;
    this.results[this.count] = result;
    this.count++;
  }
}

/**
 * The one-hand-off path. Each watched fd that someone waits on gets its own
 * AIO poll (a direct poll) while there is room for it; the others, and fds
 * past {@linkcode DIRECT_MAX} (and every fd in a Worker), go through the
 * poller's epoll set, which one more AIO poll watches. Every completion signals a private eventfd that
 * Deno's event loop reads on the JS thread.
 */
export class AioWake implements Wake {
  readonly path = "aio" as const;
  readonly busy = false;
  #ctx: AioContext;
  #efd: number;
  #pipe: PipeHandle;
  #iocb = stableBuffer(IOCB.size);
  #iocbView = new DataView(this.#iocb);
  #iocbList = stableBuffer(8);
  #iocbListView = new DataView(this.#iocbList);
  #iocbAddress = addressOf(this.#iocb);
  #events = stableBuffer(REAP_EVENTS * IO_EVENT.size);
  #eventsView = new DataView(this.#events);
  #time = stableBuffer(TIMESPEC.size);
  #timeView = new DataView(this.#time);
  // Each submission carries an aio_data unique in this context, so that a
  // late completion of an earlier poll is never taken for the current one.
  #data = 0;
  #armed = false;
  #refed = true;
  #onDirect: (tag: number, result: number) => void;
  #onEvents: () => void;
  /** Wakes that came through the event loop (the eventfd was read). */
  #turns = 0;
  /** Whether a look at completions is due in a microtask. */
  #soon = false;
  #closed = false;
  /** Looks taken in a microtask since the event loop last woke this path. */
  #soonInARow = 0;
  readonly #lookSoon = (): void => {
    this.#soon = false;
    this.#soonInARow++;
    // The context outlives this wake path: once closed, its completions
    // are a later one's.
    if (!this.#closed) this.#completed(this.#onEvents);
  };
  // Direct polls: one iocb slot each, known by its address to io_cancel and
  // kept until its completion is taken (a cancelled one too). A slot in use
  // has its submission's aio_data (0 when free) and its caller's tag.
  #slots = stableBuffer(DIRECT_MAX * IOCB.size);
  #slotsView = new DataView(this.#slots);
  #slotsAddress = addressOf(this.#slots);
  #slotData: number[] = new Array(DIRECT_MAX).fill(0);
  #slotTag: number[] = new Array(DIRECT_MAX).fill(0);
  #inUse = 0;
  #free: number[] = [];
  #taken = new Completions();

  /**
   * Throws, having released what it took, when AIO poll is refused.
   *
   * @param epfd The poller's epoll fd.
   * @param onEvents Called when the epoll set has events.
   * @param onDirect Called with a direct poll's tag and result (the events,
   * or a negative errno).
   * @param make Makes the `pipe_wrap` handle that reads the eventfd.
   */
  constructor(
    epfd: number,
    onEvents: () => void,
    onDirect: (tag: number, result: number) => void,
    make: () => PipeHandle,
  ) {
    const lib = libc();
    this.#ctx = aioCtx();
    this.#onDirect = onDirect;
    this.#onEvents = onEvents;
    this.#take();
    const efd = lib.eventfd(0, EFD.CLOEXEC);
    if (efd === -1) throw systemError("eventfd", errno());
    this.#efd = efd;
    const iocb = this.#iocbView;
    iocb.setUint16(IOCB.lioOpcode, IOCB.CMD_POLL, true);
    iocb.setUint32(IOCB.fildes, epfd, true);
    iocb.setBigUint64(IOCB.buf, BigInt(EPOLL.IN), true);
    iocb.setUint32(IOCB.flags, IOCB.FLAG_RESFD, true);
    iocb.setUint32(IOCB.resfd, efd, true);
    const slots = this.#slotsView;
    for (let i = DIRECT_MAX - 1; i >= 0; i--) {
      const at = i * IOCB.size;
      slots.setUint16(at + IOCB.lioOpcode, IOCB.CMD_POLL, true);
      slots.setUint32(at + IOCB.flags, IOCB.FLAG_RESFD, true);
      slots.setUint32(at + IOCB.resfd, efd, true);
      this.#free.push(i);
    }
    let pipe: PipeHandle | undefined;
    // The pipe handle owns the eventfd once it opened it, not before.
    let opened = false;
    try {
      // A first submission proves that IOCB_CMD_POLL is allowed here (Linux
      // 4.18 or later, no seccomp or sandbox refusal); it stays armed.
      this.#submit();
      pipe = make();
      if (pipe.open(efd) !== 0) {
        throw new Error("Pipe#open of an eventfd failed");
      }
      opened = true;
      // Reads of the eventfd land in one small buffer instead of a new
      // 64 KiB one each time (where this Deno has the call).
      pipe.useUserBuffer?.(new Uint8Array(new ArrayBuffer(64)));
      pipe.onread = () => {
        loopTurned();
        this.#turns++;
        this.#soonInARow = 0;
        this.#completed(onEvents);
      };
      if (pipe.readStart() !== 0) throw new Error("Pipe#readStart failed");
    } catch (error) {
      this.#cancel();
      if (pipe !== undefined) pipe.close();
      if (!opened) lib.close(efd);
      throw error;
    }
    this.#pipe = pipe;
    this.#setRef(false);
  }

  get holding(): boolean {
    return (this.#armed || this.#inUse > 0) && this.#refed;
  }

  /** The private eventfd that Deno's event loop watches. */
  get eventFd(): number {
    return this.#efd;
  }

  /** Wakes that came through the event loop, not from a submit. */
  get turns(): number {
    return this.#turns;
  }

  /** Whether fds can be polled directly (the AIO context has room). */
  get direct(): boolean {
    return this.#ctx.direct;
  }

  arm(ref: boolean, set: boolean): void {
    this.#setRef(ref);
    if (set && !this.#armed) this.#submit();
  }

  disarm(): void {
    // An armed poll may stay: the set has no interest left, so it completes
    // only for a late event, which is then drained and ignored.
    this.#setRef(false);
  }

  /**
   * Polls `fd` for `events` directly; its completion goes to `onDirect`
   * with `tag`. False when no slot is free, or when AIO refuses a file that
   * epoll takes (one whose poll waits on two queues, such as a pipe opened
   * for reading and writing): the caller goes through the epoll set.
   *
   * @throws When the kernel refuses the poll (the fd is closed).
   */
  poll(tag: number, fd: number, events: number): boolean {
    const slot = this.#free.pop();
    if (slot === undefined) return false;
    const view = this.#slotsView;
    const at = slot * IOCB.size;
    const data = nextSeq() * DATA_STEP + slot * 4 + 1;
    writeData(view, at + IOCB.data, data);
    view.setUint32(at + IOCB.fildes, fd, true);
    view.setBigUint64(at + IOCB.buf, BigInt(events), true);
    const address = this.#slotsAddress + BigInt(at);
    this.#iocbListView.setBigUint64(0, address, true);
    const n = libc().io_submit(
      IO_SUBMIT,
      this.#ctx.pointer,
      1n,
      this.#iocbList,
    );
    if (n !== 1) {
      const code = errno();
      this.#free.push(slot);
      if (code === ERRNO.EAGAIN || code === ERRNO.EINVAL) return false;
      throw systemError("io_submit(IOCB_CMD_POLL)", code, `fd ${fd}`);
    }
    this.#slotData[slot] = data;
    this.#slotTag[slot] = tag;
    this.#inUse++;
    this.#completedAtSubmit();
    return true;
  }

  /**
   * A poll of an fd that is ready already completes inside `io_submit`:
   * its completion is taken in a microtask rather than after a turn of the
   * event loop (which still reads the eventfd, and then finds nothing).
   */
  #completedAtSubmit(): void {
    if (this.#soon || this.#ctx.ring?.empty !== false) return;
    // An fd that polls ready while its owner's call makes no progress must
    // not loop in microtasks, where timers and other I/O never run: after a
    // run of such looks, completions wait for the event loop again.
    if (this.#soonInARow >= SOON_IN_A_ROW) return;
    this.#soon = true;
    queueMicrotask(this.#lookSoon);
  }

  /**
   * Cancels the direct poll tagged `tag`, if it is outstanding: its file is
   * no longer held once the kernel has completed it (microseconds).
   */
  cancel(tag: number): void {
    // Rare (a handle closing): a scan of the slots in use.
    for (let slot = 0; slot < DIRECT_MAX; slot++) {
      if (this.#slotData[slot] !== 0 && this.#slotTag[slot] === tag) {
        this.#cancelSlot(slot);
      }
    }
  }

  #cancelSlot(slot: number): void {
    // EINPROGRESS: it completes shortly and its slot is freed then.
    sys(
      SYS.io_cancel,
      this.#ctx.ctx,
      this.#slotsAddress + BigInt(slot * IOCB.size),
      addressOf(this.#events),
    );
  }

  close(): void {
    this.#closed = true;
    for (let slot = 0; slot < DIRECT_MAX; slot++) {
      if (this.#slotData[slot] !== 0) this.#cancelSlot(slot);
    }
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
    this.#data = nextSeq() * DATA_STEP;
    writeData(this.#iocbView, IOCB.data, this.#data);
    this.#iocbListView.setBigUint64(0, this.#iocbAddress, true);
    const n = libc().io_submit(
      IO_SUBMIT,
      this.#ctx.pointer,
      1n,
      this.#iocbList,
    );
    if (n !== 1) throw systemError("io_submit(IOCB_CMD_POLL)", errno());
    this.#armed = true;
    this.#completedAtSubmit();
  }

  /** Cancels an armed epoll fd poll and reaps its completion (microseconds). */
  #cancel(): void {
    if (!this.#armed) return;
    // EINPROGRESS: the cancelled poll completes shortly; EINVAL: it already
    // had. Either way its completion is reaped here.
    sys(
      SYS.io_cancel,
      this.#ctx.ctx,
      addressOf(this.#iocb),
      addressOf(this.#events),
    );
    const deadline = performance.now() + Number(CANCEL_REAP_NS / 1_000_000n);
    while (this.#armed && performance.now() < deadline) {
      this.#syscallReap(1, CANCEL_REAP_NS);
      this.#settle(() => {});
    }
    this.#armed = false;
  }

  /** Takes the completions there are into #taken. */
  #take(): void {
    if (this.#ctx.ring?.take(this.#taken)) return;
    while (this.#syscallReap(0, 0n) === REAP_EVENTS);
  }

  /**
   * Reaps completions by syscall (at least `min`, waiting up to `ns`) into
   * #taken; returns how many.
   */
  #syscallReap(min: number, ns: bigint): number {
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
      this.#taken.add(
        readData(view, at + IO_EVENT.data),
        view.getInt32(at + IO_EVENT.res, true),
      );
    }
    return Math.max(n, 0);
  }

  /**
   * Sorts the completions taken: the epoll fd's poll (its current one)
   * calls `onEvents`, a direct poll frees its slot and goes to `onDirect`,
   * anything else (a poll of an earlier wake path) is dropped.
   */
  #settle(onEvents: () => void): void {
    const taken = this.#taken;
    let setReady = false;
    // A callback may take more (a wake path closing reaps its last
    // completions): count and arrays are read afresh each time.
    for (let i = 0; i < taken.count; i++) {
      const data = taken.datas[i];
      const low = data % DATA_STEP;
      if (low === 0) {
        if (data === this.#data && this.#armed) {
          this.#armed = false;
          setReady = true;
        }
        continue;
      }
      const slot = low >>> 2;
      if (slot >= DIRECT_MAX || this.#slotData[slot] !== data) continue;
      this.#slotData[slot] = 0;
      this.#inUse--;
      this.#free.push(slot);
      this.#onDirect(this.#slotTag[slot], taken.results[i]);
    }
    taken.count = 0;
    if (setReady) onEvents();
  }

  #completed(onEvents: () => void): void {
    // Deno's reader has consumed the eventfd count; take the completions so
    // the next polls can be submitted.
    this.#take();
    this.#settle(onEvents);
  }
}
