/**
 * The one-hand-off wake paths, `uring` and `aio`: a kernel queue of one-shot
 * polls (io_uring `IORING_OP_POLL_ADD`, or Linux AIO `IOCB_CMD_POLL`)
 * signals a private eventfd that Deno's own event loop reads on the JS
 * thread (through the `pipe_wrap` binding).
 *
 * @module
 */

import { libc } from "./libc.ts";
import { ERRNO, errno, systemError } from "./errors.ts";
import { EFD, EPOLL } from "./layout.ts";
import {
  Completions,
  DATA_STEP,
  DIRECT_MAX,
  nextSeq,
  type PollQueue,
  type Wake,
} from "./_wake.ts";
import type { PipeHandle } from "./_wake_aio.ts";
import { loopTurned } from "./_turns.ts";

/** How long closing waits for a cancelled poll's completion, in ns. */
const CANCEL_REAP_NS = 100_000_000n;
/**
 * Completions taken in a microtask (their fd was ready when its poll was
 * submitted) in a row before one is left to the event loop.
 */
const SOON_IN_A_ROW = 64;

/**
 * Each watched fd that someone waits on gets its own poll in the queue (a
 * direct poll) while there is room for it; the others, and fds past
 * {@linkcode DIRECT_MAX} (and every fd in a Worker), go through the
 * poller's epoll set, which one more poll watches. Every completion signals
 * a private eventfd that Deno's event loop reads on the JS thread.
 */
export class DirectWake implements Wake {
  readonly path: "uring" | "aio";
  readonly busy = false;
  #queue: PollQueue;
  #epfd: number;
  #efd: number;
  #pipe: PipeHandle;
  // Each submission carries data unique in this process, so that a late
  // completion of an earlier poll is never taken for the current one.
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
    // An AIO context outlives this wake path: once closed, its completions
    // are a later one's.
    if (!this.#closed) this.#completed(this.#onEvents);
  };
  // Direct polls: one slot each, kept until its completion is taken (a
  // cancelled one too). A slot in use has its submission's data (0 when
  // free) and its caller's tag.
  #slotData: number[] = new Array(DIRECT_MAX).fill(0);
  #slotTag: number[] = new Array(DIRECT_MAX).fill(0);
  #inUse = 0;
  #free: number[] = [];
  #taken = new Completions();

  /**
   * Throws, having released what it took (`queue` too), when the queue
   * refuses a poll.
   *
   * @param epfd The poller's epoll fd.
   * @param onEvents Called when the epoll set has events.
   * @param onDirect Called with a direct poll's tag and result (the events,
   * or a negative errno).
   * @param make Makes the `pipe_wrap` handle that reads the eventfd.
   * @param queue The queue of polls, which this wake path owns from now on.
   */
  constructor(
    epfd: number,
    onEvents: () => void,
    onDirect: (tag: number, result: number) => void,
    make: () => PipeHandle,
    queue: PollQueue,
  ) {
    const lib = libc();
    this.path = queue.path;
    this.#queue = queue;
    this.#epfd = epfd;
    this.#onDirect = onDirect;
    this.#onEvents = onEvents;
    for (let i = DIRECT_MAX - 1; i >= 0; i--) this.#free.push(i);
    let efd = -1;
    let pipe: PipeHandle | undefined;
    // The pipe handle owns the eventfd once it opened it, not before.
    let opened = false;
    try {
      this.#take();
      efd = lib.eventfd(0, EFD.CLOEXEC);
      if (efd === -1) throw systemError("eventfd", errno());
      this.#efd = efd;
      queue.attach(efd);
      // A first submission proves that the poll is allowed here (Linux
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
        // A read that lands after close would take completions of the AIO
        // context that belong to the next wake path.
        if (this.#closed) return;
        loopTurned();
        this.#turns++;
        this.#soonInARow = 0;
        this.#completed(onEvents);
      };
      if (pipe.readStart() !== 0) throw new Error("Pipe#readStart failed");
    } catch (error) {
      this.#closed = true;
      this.#cancel();
      queue.close();
      if (pipe !== undefined) pipe.close();
      if (!opened && efd !== -1) lib.close(efd);
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

  /** Whether fds can be polled directly (the queue has room). */
  get direct(): boolean {
    return this.#queue.direct;
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
   * with `tag`. False when no slot is free, or when the queue refuses a
   * file that epoll takes (AIO and a pipe opened for reading and writing,
   * whose poll waits on two queues): the caller goes through the epoll set.
   *
   * @throws When the kernel refuses the poll (the fd is closed).
   */
  poll(tag: number, fd: number, events: number): boolean {
    const slot = this.#free.pop();
    if (slot === undefined) return false;
    const data = nextSeq() * DATA_STEP + slot * 4 + 1;
    const code = this.#queue.poll(data, fd, events, slot);
    if (code !== 0) {
      this.#free.push(slot);
      if (code === ERRNO.EAGAIN || code === ERRNO.EINVAL) return false;
      throw systemError(this.#queue.call, code, `fd ${fd}`);
    }
    this.#slotData[slot] = data;
    this.#slotTag[slot] = tag;
    this.#inUse++;
    this.#completedAtSubmit();
    return true;
  }

  /**
   * A poll of an fd that is ready already completes inside its submission:
   * its completion is taken in a microtask rather than after a turn of the
   * event loop (which still reads the eventfd, and then finds nothing).
   */
  #completedAtSubmit(): void {
    if (this.#soon || this.#queue.empty) return;
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
        this.#queue.cancel(this.#slotData[slot], slot);
      }
    }
  }

  close(): void {
    this.#closed = true;
    if (!this.#queue.closeEnds) {
      for (let slot = 0; slot < DIRECT_MAX; slot++) {
        if (this.#slotData[slot] !== 0) {
          this.#queue.cancel(this.#slotData[slot], slot);
        }
      }
      this.#cancel();
    }
    this.#queue.close();
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
    const code = this.#queue.poll(this.#data, this.#epfd, EPOLL.IN, -1);
    if (code !== 0) throw systemError(this.#queue.call, code);
    this.#armed = true;
    this.#completedAtSubmit();
  }

  /** Cancels an armed epoll fd poll and reaps its completion (microseconds). */
  #cancel(): void {
    if (!this.#armed) return;
    this.#queue.cancel(this.#data, -1);
    if (!this.#queue.closeEnds) {
      const deadline = performance.now() +
        Number(CANCEL_REAP_NS / 1_000_000n);
      while (this.#armed && performance.now() < deadline) {
        this.#queue.waitTake(this.#taken, CANCEL_REAP_NS);
        this.#settle(() => {});
      }
    }
    this.#armed = false;
  }

  /** Takes the completions there are into #taken. */
  #take(): void {
    this.#queue.take(this.#taken);
  }

  /**
   * Sorts the completions taken: the epoll fd's poll (its current one)
   * calls `onEvents`, a direct poll frees its slot and goes to `onDirect`,
   * anything else (a poll of an earlier wake path, a cancellation's own
   * completion) is dropped.
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
