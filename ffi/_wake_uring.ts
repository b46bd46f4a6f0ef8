/**
 * The queue of the `uring` wake path (see `_wake_direct.ts`): an io_uring
 * of one-shot `IORING_OP_POLL_ADD` requests with the wake path's eventfd
 * registered, so that each completion signals it.
 *
 * Why not AIO alone: with `IOCB_FLAG_RESFD`, Linux completes an AIO poll in
 * a kernel worker thread (`aio_poll_put_work` on the `events` workqueue),
 * which the sender's CPU runs before it wakes the receiver: a second
 * hand-off per wake, costly when the machine is idle between messages. An
 * io_uring poll completes in task work of the thread that submitted it (the
 * JS thread), which the waker signals directly: one hand-off.
 *
 * One ring per wake path, closed with it: closing the ring ends its polls
 * (the kernel cancels them), so nothing is left to cancel and wait for, and
 * an idle poller holds no fd.
 *
 * @module
 */

import { libc, SYS } from "./libc.ts";
import { ERRNO, errno, systemError } from "./errors.ts";
import { URING_CQE, URING_PARAMS, URING_SQE } from "./layout.ts";
import { addressOf, mapFd, stableBuffer } from "./mem.ts";
import {
  type Completions,
  type PollQueue,
  readData,
  writeData,
} from "./_wake.ts";

/** Submission queue entries: requests are submitted one at a time. */
const SQ_ENTRIES = 4;
/**
 * Completion queue entries: at most one completion per outstanding poll
 * (48 direct ones and the epoll set's) and per cancellation, each taken at
 * the next wake, so the queue cannot fill.
 */
const CQ_ENTRIES = 256;

const ENTER = BigInt(SYS.io_uring_enter);

/** Raw syscall through `syscall(2)`: a number, or -1 with errno set. */
function sys(nr: number, a = 0n, b = 0n, c = 0n, d = 0n): number {
  return Number(libc().syscall6(BigInt(nr), a, b, c, d, 0n));
}

/** Maps `length` bytes of the ring `fd` at `offset`, or throws. */
function mapRing(
  fd: number,
  length: number,
  offset: number,
): NonNullable<Deno.PointerValue> {
  const pointer = mapFd(fd, length, offset);
  if (pointer === null) {
    throw systemError("mmap(io_uring)", errno(), `${length} bytes`);
  }
  return pointer;
}

interface Mapping {
  pointer: NonNullable<Deno.PointerValue>;
  length: number;
}

/** An io_uring of poll requests. */
export class UringQueue implements PollQueue {
  readonly path = "uring" as const;
  readonly call = "io_uring_enter(IORING_OP_POLL_ADD)";
  readonly direct = true;
  readonly closeEnds = true;
  #fd: number;
  #fdBig: bigint;
  #maps: Mapping[] = [];
  #sqTail!: Uint32Array;
  #sqMask = 0;
  #sqArray!: Uint32Array;
  #sqes!: Uint8Array;
  #sqesView!: DataView;
  #cqHead!: Uint32Array;
  #cqTail!: Uint32Array;
  #cqMask = 0;
  #cqes!: DataView;
  #closed = false;

  /**
   * Sets up a ring and maps it.
   *
   * @throws When io_uring is refused (an old kernel, seccomp,
   * `kernel.io_uring_disabled`) or lacks a feature this path needs.
   */
  constructor() {
    const params = stableBuffer(URING_PARAMS.size);
    const view = new DataView(params);
    view.setUint32(URING_PARAMS.flags, URING_PARAMS.SETUP_CQSIZE, true);
    view.setUint32(URING_PARAMS.cqEntries, CQ_ENTRIES, true);
    const fd = sys(SYS.io_uring_setup, BigInt(SQ_ENTRIES), addressOf(params));
    if (fd === -1) throw systemError("io_uring_setup", errno());
    this.#fd = fd;
    this.#fdBig = BigInt(fd);
    try {
      this.#map(view);
    } catch (error) {
      this.close();
      throw error;
    }
  }

  #map(params: DataView): void {
    const u32 = (at: number) => params.getUint32(at, true);
    const features = u32(URING_PARAMS.features);
    const needed = URING_PARAMS.FEAT_SINGLE_MMAP | URING_PARAMS.FEAT_NODROP;
    if ((features & needed) !== needed) {
      throw new Error(
        "io_uring lacks single-mmap rings or no-drop completions (Linux 5.5 or later)",
      );
    }
    const sqEntries = u32(URING_PARAMS.sqEntries);
    const cqEntries = u32(URING_PARAMS.cqEntries);
    const ringLength = Math.max(
      u32(URING_PARAMS.sqArray) + sqEntries * 4,
      u32(URING_PARAMS.cqes) + cqEntries * URING_CQE.size,
    );
    const ring = mapRing(this.#fd, ringLength, URING_PARAMS.OFF_SQ_RING);
    this.#maps.push({ pointer: ring, length: ringLength });
    const sqesLength = sqEntries * URING_SQE.size;
    const sqes = mapRing(this.#fd, sqesLength, URING_PARAMS.OFF_SQES);
    this.#maps.push({ pointer: sqes, length: sqesLength });
    const memory = Deno.UnsafePointerView.getArrayBuffer(ring, ringLength);
    const word = (at: number) => new Uint32Array(memory, u32(at), 1);
    this.#sqTail = word(URING_PARAMS.sqTail);
    this.#sqMask = word(URING_PARAMS.sqMask)[0];
    this.#sqArray = new Uint32Array(
      memory,
      u32(URING_PARAMS.sqArray),
      sqEntries,
    );
    this.#cqHead = word(URING_PARAMS.cqHead);
    this.#cqTail = word(URING_PARAMS.cqTail);
    this.#cqMask = word(URING_PARAMS.cqMask)[0];
    this.#cqes = new DataView(
      memory,
      u32(URING_PARAMS.cqes),
      cqEntries * URING_CQE.size,
    );
    const sqesMemory = Deno.UnsafePointerView.getArrayBuffer(sqes, sqesLength);
    this.#sqes = new Uint8Array(sqesMemory);
    this.#sqesView = new DataView(sqesMemory);
  }

  attach(efd: number): void {
    const fd = new Int32Array(stableBuffer(4));
    fd[0] = efd;
    const done = sys(
      SYS.io_uring_register,
      BigInt(this.#fd),
      BigInt(URING_PARAMS.REGISTER_EVENTFD),
      addressOf(fd.buffer),
      1n,
    );
    if (done === -1) throw systemError("io_uring_register(EVENTFD)", errno());
  }

  get empty(): boolean {
    if (this.#closed) return true;
    return Atomics.load(this.#cqHead, 0) === Atomics.load(this.#cqTail, 0);
  }

  poll(data: number, fd: number, events: number, _slot: number): number {
    return this.#submit(URING_SQE.OP_POLL_ADD, fd, events, 0, data);
  }

  cancel(data: number, _slot: number): void {
    // The removal's own completion has data 0, which no poll has.
    this.#submit(URING_SQE.OP_POLL_REMOVE, -1, 0, data, 0);
  }

  /** Submits one request; 0, or the errno of a refusal. */
  #submit(
    opcode: number,
    fd: number,
    events: number,
    target: number,
    data: number,
  ): number {
    if (this.#closed) return ERRNO.EBADF;
    const tail = Atomics.load(this.#sqTail, 0);
    const index = tail & this.#sqMask;
    const at = index * URING_SQE.size;
    const sqe = this.#sqesView;
    this.#sqes.fill(0, at, at + URING_SQE.size);
    sqe.setUint8(at + URING_SQE.opcode, opcode);
    sqe.setInt32(at + URING_SQE.fd, fd, true);
    writeData(sqe, at + URING_SQE.addr, target);
    sqe.setUint32(at + URING_SQE.pollEvents, events, true);
    writeData(sqe, at + URING_SQE.userData, data);
    this.#sqArray[index] = index;
    Atomics.store(this.#sqTail, 0, (tail + 1) >>> 0);
    const lib = libc();
    for (;;) {
      const n = lib.io_uring_enter(ENTER, this.#fdBig, 1n, 0n, 0n, 0n, 0n);
      if (n === 1) return 0;
      const code = n === -1 ? errno() : ERRNO.EAGAIN;
      if (code === ERRNO.EINTR) continue;
      // Not taken: the entry is withdrawn (the kernel did not move past it).
      Atomics.store(this.#sqTail, 0, tail);
      return code === ERRNO.EBUSY ? ERRNO.EAGAIN : code;
    }
  }

  take(into: Completions): void {
    if (this.#closed) return;
    let head = Atomics.load(this.#cqHead, 0);
    const tail = Atomics.load(this.#cqTail, 0);
    const cqes = this.#cqes;
    const mask = this.#cqMask;
    while (head !== tail) {
      const at = (head & mask) * URING_CQE.size;
      into.add(
        readData(cqes, at + URING_CQE.userData),
        cqes.getInt32(at + URING_CQE.res, true),
      );
      head = (head + 1) >>> 0;
      Atomics.store(this.#cqHead, 0, head);
    }
  }

  waitTake(into: Completions, _ns: bigint): void {
    // Closing the ring ends its polls: there is nothing to wait for.
    this.take(into);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const lib = libc();
    for (const map of this.#maps) lib.munmap(map.pointer, BigInt(map.length));
    this.#maps = [];
    lib.close(this.#fd);
  }
}
