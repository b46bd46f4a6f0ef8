/**
 * {@linkcode shmQueue}: a one-way queue of whole messages of any size
 * through a ring in shared memory, between two processes or within one.
 *
 * The ring lives in a memfd: a 256-byte header, then the data area. Each
 * message is a record: its length (u32) and sequence number (u32), then the
 * bytes, padded to 8. A record may wrap around the end of the data area.
 * `head` and `tail` are byte positions counted modulo twice the data size,
 * so a full ring and an empty one differ. The sender only ever writes the
 * tail, the receiver only the head; both are read and written with
 * `Atomics`, and a record is complete before the tail that covers it is
 * published. Everything read from the ring is checked before it is used:
 * the other process may have crashed or may be hostile.
 *
 * Waiting needs no polling loop and no thread: each end owns one side of a
 * SOCK_SEQPACKET doorbell. In the main thread on the `uring` and `aio` wake
 * paths, Deno's
 * own event loop reads a duplicate of it (`_bell.ts`: a wake is one read of
 * the ring); elsewhere the process's one poller watches it. A wait first
 * spins briefly (the shared spin-then-park of `ffi/spin.ts`), then parks. The protocol that keeps a busy queue free of system calls, and
 * that no wake-up is ever lost:
 *
 * - A receiver parks only when the ring is empty. It raises
 *   `RECEIVER_WAITING`, then reads `TAIL` once more; if a message arrived
 *   meanwhile it lowers the flag and takes it instead of parking.
 * - The sender, after publishing `TAIL`, takes `RECEIVER_WAITING` down with
 *   a compare-and-exchange and rings the doorbell only if it was up: a
 *   receiver that is not parked costs the sender no system call.
 * - A sender parks only when the ring has no room for its record. It
 *   writes the room it needs to `SENDER_NEEDS`, raises `SENDER_WAITING`,
 *   then reads `HEAD` once more and writes instead of parking if room was
 *   made meanwhile.
 * - The receiver, after publishing `HEAD`, looks at `SENDER_WAITING`. It
 *   rings at once when half the ring is free (so a sender that outruns its
 *   receiver wakes once per half ring, not once per message), and otherwise,
 *   once the record the sender needs fits, rings after the current turn of
 *   the event loop, or before it hands its end over or closes it.
 *
 * All of these are sequentially consistent `Atomics` operations: a flag
 * raised before the re-read and a position published before the flag is
 * read mean that either the waiter sees the new position or the other side
 * sees the flag. A peer in another language must use the same orderings,
 * and must not count on a blocking doorbell: where Deno's event loop reads
 * it, it is non-blocking for every holder of the end (wait with `poll()`,
 * read and write with `MSG_DONTWAIT`).
 * When the other process exits or closes its end, the doorbell hangs up,
 * which also ends a wait.
 *
 * A loop that receives (or sends) without ever having to wait gives the
 * event loop a turn (`setImmediate`) after a few milliseconds of continuous
 * delivery, so timers and other I/O of the process keep running while a
 * fast peer floods the queue.
 *
 * @example Messages of any size, in order
 * ```ts
 * import { shmQueue } from "@conduit/ipc";
 *
 * const [tx, rx] = shmQueue({ bytes: 1 << 20 });
 * await tx.send(new Uint8Array(100_000));
 * await tx.send(new TextEncoder().encode("hi"));
 * tx.close();
 * console.log((await rx.recv())?.length); // 100000
 * console.log(new TextDecoder().decode((await rx.recv())!)); // "hi"
 * console.log(await rx.recv()); // null: drained and the sender is gone
 * rx.close();
 * ```
 *
 * @module
 */

import { libc } from "../ffi/libc.ts";
import { check } from "../ffi/errors.ts";
import { checkSpin } from "../ffi/spin.ts";
import { O, SOCK } from "../ffi/layout.ts";
import { checkNumberOption, checkOptionsObject } from "../_socket_options.ts";
import { createMemfd, fileSize, sealedAgainstShrink } from "./_memfd.ts";
import { mapShared, unmap } from "./_map.ts";
import {
  doorbellProblem,
  HELLO_FLAGS,
  peekHello,
  ROLE,
  sendHello,
} from "./_carrier.ts";
import {
  align8,
  CAPACITY,
  DEFAULT_BYTES,
  HEADER_BYTES,
  MAGIC,
  MAX_BYTES,
  MAX_MESSAGE,
  RECORD,
  Ring,
  RING_MAGIC,
  RING_VERSION,
  VERSION,
} from "./_ring.ts";
import { ShmSender } from "./queue_sender.ts";
import { ShmReceiver } from "./queue_receiver.ts";

export { ShmSender, type ShmWaitOptions } from "./queue_sender.ts";
export { ShmReceiver, type ShmRecvOptions } from "./queue_receiver.ts";

/** Options for {@linkcode shmQueue}. */
export interface ShmQueueOptions {
  /**
   * The largest message, in bytes; the ring holds at least this much (plus
   * 8 bytes of record header). Default 4 MiB: a ring of 64 KiB messages
   * then holds 64 of them, so a sender that fills it and parks is woken
   * (at half the ring) with enough left for the receiver to work on while
   * the wake-up takes (with 1 MiB, 64 KiB messages ran at half the speed).
   * At most 1 GiB. The memory is touched as the ring turns; a queue of
   * small messages that must stay small passes a smaller size.
   */
  bytes?: number;
  /**
   * How a send or receive that would wait first retries before it parks
   * (yielding the CPU each pass). Default: adaptive, spinning up
   * to 100 µs only while recent spins were answered, so a quick peer is
   * met without a wake-up and a slow one costs no CPU. `0`: never spin. A
   * number: always spin up to that many µs (at most one second).
   */
  spin?: number;
}

/** The two ends of a {@linkcode shmQueue}; `using` closes both. */
export type ShmQueue = [ShmSender, ShmReceiver] & Disposable;

/**
 * Creates a queue of whole messages through a ring in shared memory. Keep
 * one end and hand the other to a child (`spawn({ fds: [rx] })`, then
 * `fromFd(3)` there) or send it over a socket (`send(bytes, { fds: [rx] })`);
 * then close this process's copy.
 *
 * @param options Ring size and spinning.
 * @returns The sender and the receiver.
 * @throws {RangeError} When `bytes` is not an integer from 1 to 1 GiB.
 *
 * @example Hand the receiver to a child
 * ```ts ignore
 * import { shmQueue, spawn } from "@conduit/ipc";
 *
 * const [tx, rx] = shmQueue({ bytes: 4 << 20 });
 * const child = spawn(Deno.execPath(), {
 *   args: ["run", "--allow-ffi", "child.ts"], // fromFd(3) is a ShmReceiver
 *   fds: [rx],
 * });
 * rx.close();
 * await tx.send(new Uint8Array(1 << 20));
 * tx.close();
 * await child.status;
 * ```
 */
export function shmQueue(options: ShmQueueOptions = {}): ShmQueue {
  checkOptionsObject(options, "create shmQueue");
  const bytes = options.bytes ?? DEFAULT_BYTES;
  const spin = checkSpin(options.spin, "Cannot create shmQueue");
  checkNumberOption(bytes, "bytes", "create shmQueue");
  if (!Number.isInteger(bytes) || bytes < 1 || bytes > MAX_BYTES) {
    throw new RangeError(
      `Cannot create shmQueue: bytes must be an integer from 1 to ${MAX_BYTES}, got ${bytes}`,
    );
  }
  const capacity = align8(bytes) + RECORD;
  const size = HEADER_BYTES + capacity;
  const lib = libc();
  // Released whatever happens: the memfd (the hellos carry it to the ends)
  // and this process's copies of what the hellos carry.
  using setUp = new DisposableStack();
  // Released only when shmQueue() fails: what the two ends take over.
  using onFailure = new DisposableStack();
  const memfd = createMemfd(size, "conduit-shmq");
  setUp.defer(() => lib.close(memfd));
  const first = onFailure.adopt(mapShared(memfd, size, "shmQueue"), unmap);
  const header = new Int32Array(first.buffer, 0, HEADER_BYTES / 4);
  header[VERSION] = RING_VERSION;
  header[CAPACITY] = capacity;
  header[MAX_MESSAGE] = bytes;
  Atomics.store(header, MAGIC, RING_MAGIC);
  const second = onFailure.adopt(mapShared(memfd, size, "shmQueue"), unmap);
  const [bellTx, bellRx] = socketPair(onFailure, onFailure);
  // A carrier: the queue end's socket, with the hello (its role, the memfd
  // and its doorbell) queued on it by the other end of its pair, which is
  // then closed. Whoever the end is handed to reads the hello.
  const carrier = (role: number, bell: number): number => {
    const [keep, put] = socketPair(onFailure, setUp);
    sendHello(put, role, [memfd, bell]);
    return keep;
  };
  const carrierTx = carrier(ROLE.sender, bellTx);
  const carrierRx = carrier(ROLE.receiver, bellRx);
  const tx = new ShmSender(
    new Ring("ShmSender", first, carrierTx, bellTx, spin, false),
  );
  const rx = new ShmReceiver(
    new Ring("ShmReceiver", second, carrierRx, bellRx, spin, false),
  );
  onFailure.move();
  return Object.assign([tx, rx] as [ShmSender, ShmReceiver], {
    [Symbol.dispose]() {
      tx.close();
      rx.close();
    },
  });
}

/**
 * Rebuilds a queue end from its carrier fd (what `rawFd` was in the process
 * that handed it over). `fromFd()` does the same for any fd; this one says
 * what it expects.
 *
 * @param fd The carrier fd; the returned end owns it.
 * @param options `spin` as for {@linkcode shmQueue}.
 * @returns The sender or receiver.
 * @throws {TypeError} When `fd` is not a queue end (it is left open then).
 *
 * @example In a child started with `spawn(..., { fds: [rx] })`
 * ```ts ignore
 * import { ShmReceiver, shmQueueFromFd } from "@conduit/ipc";
 *
 * const rx = shmQueueFromFd(3);
 * if (!(rx instanceof ShmReceiver)) throw new TypeError("fd 3 is not a receiver");
 * for await (const message of rx) console.log(message.length);
 * ```
 */
export function shmQueueFromFd(
  fd: number,
  options: Pick<ShmQueueOptions, "spin"> = {},
): ShmSender | ShmReceiver {
  const end = adoptQueueEnd(
    fd,
    checkSpin(options.spin, `Cannot adopt fd ${fd}`),
  );
  if (end === null) {
    throw new TypeError(`Cannot adopt fd ${fd}: it is not a shmQueue end`);
  }
  return end;
}

/** A seqpacket pair, each end's closing deferred to the stack given for it. */
function socketPair(a: DisposableStack, b: DisposableStack): [number, number] {
  const lib = libc();
  const fds = new Int32Array(2);
  check(
    "socketpair",
    lib.socketpair(SOCK.AF_UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC, 0, fds),
  );
  a.defer(() => lib.close(fds[0]));
  b.defer(() => lib.close(fds[1]));
  return [fds[0], fds[1]];
}

/**
 * Puts under `fd` a new carrier whose hello carries `fds` for `role` with
 * the SHARED flag (the old carrier's file goes with its last fd).
 */
function remarkShared(fd: number, role: number, fds: number[]): void {
  using setUp = new DisposableStack();
  const [keep, put] = socketPair(setUp, setUp);
  sendHello(put, role, fds, HELLO_FLAGS.SHARED);
  check("dup3", libc().dup3(keep, fd, O.CLOEXEC));
}

/**
 * The queue end whose carrier socket `fd` is, or `null` when the socket
 * holds no queue hello: `fromFd()`'s test for a queue end. `received`: it
 * came in a message from a peer, and so waits through the poller.
 *
 * @throws {TypeError} When the hello is there but what it carries is no
 * valid queue end (the fds it carried are closed, `fd` is left open).
 */
export function adoptQueueEnd(
  fd: number,
  spin: number | undefined,
  received = false,
): ShmSender | ShmReceiver | null {
  const hello = peekHello(fd);
  if (hello === null) return null;
  const lib = libc();
  const { role, fds, flags } = hello;
  // Released only when adoption fails: every fd the hello carried, and the
  // mapping.
  using onFailure = new DisposableStack();
  for (const carried of fds) onFailure.defer(() => lib.close(carried));
  if (fds.length !== 2 || (role !== ROLE.sender && role !== ROLE.receiver)) {
    throw new TypeError(
      `Cannot adopt fd ${fd}: a shmQueue end with role ${role} and ${fds.length} fds`,
    );
  }
  const [memfd, bell] = fds;
  const what = role === ROLE.sender ? "ShmSender" : "ShmReceiver";
  // Every fd the peer put in the hello is checked before anything maps or
  // waits on it.
  const bellProblem = doorbellProblem(bell, fd);
  if (bellProblem !== undefined) {
    throw new TypeError(`Cannot adopt ${what} from fd ${fd}: ${bellProblem}`);
  }
  if (!sealedAgainstShrink(memfd)) {
    throw new TypeError(
      `Cannot adopt ${what} from fd ${fd}: its shared memory is not sealed against shrinking`,
    );
  }
  const size = fileSize(memfd);
  if (size < HEADER_BYTES || size > HEADER_BYTES + MAX_BYTES + RECORD) {
    throw new TypeError(
      `Cannot adopt ${what} from fd ${fd}: shared memory of ${size} bytes is no shmQueue ring`,
    );
  }
  const shared = received || (flags & HELLO_FLAGS.SHARED) !== 0;
  // An end received in a message is marked shared for good: handed on to
  // a child, it is adopted there with fromFd(), and the mark tells that
  // child too to wait through the poller. The carrier under `fd` is swapped
  // for a new one, this process's own, whose hello says so.
  // Whatever the hello says: its maker may still hold this carrier and the
  // socket that put the hello, and so could put another without the mark.
  if (received) remarkShared(fd, role, [memfd, bell]);
  const ring = new Ring(
    what,
    onFailure.adopt(mapShared(memfd, size, what), unmap),
    fd,
    bell,
    spin,
    shared,
  );
  onFailure.move();
  // The ring holds the mapping and the doorbell; the memfd is done with.
  lib.close(memfd);
  return role === ROLE.sender ? new ShmSender(ring) : new ShmReceiver(ring);
}
