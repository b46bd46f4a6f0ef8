/**
 * Who holds a lock, and whether that process still lives.
 *
 * A holder is named by its pid and the low 32 bits of its start time
 * (`/proc/<pid>/stat` field 22, clock ticks since boot). A pid alone is not
 * enough: `pid_max` is often 32768, so the pid of a holder that died can
 * name an unrelated process a while later, and a waiter would then wait on
 * that stranger forever. The pair names one process for the life of the
 * system (a second process with the same pid would have to start within the
 * same clock tick).
 *
 * A holder is dead when `pidfd_open` finds no such pid, when its pidfd
 * reports that it exited (a zombie has; a thread-group leader that ended
 * while other threads of its process run shows as a zombie in
 * `/proc/<pid>/stat` but has not), or when the pid now belongs to a process
 * with another start time. `kill(pid, 0)` is not used: it says nothing about
 * reuse or zombies, and gives no way to be told of the exit. A live holder's
 * pidfd is what a waiter watches (through the poller) to learn of its death
 * without polling.
 *
 * Every process sharing a lock must see the same pids: one pid namespace.
 * A start time is shown relative to the boot time of the reader's time
 * namespace, so a holder in another time namespace names itself with a
 * start time this process does not see for it: then only its pidfd (or its
 * pid gone) tells that it died, and a pid it left behind that another
 * process took counts as alive until that process exits too.
 *
 * @module
 */

import { libc, SYS } from "../ffi/libc.ts";
import { ERRNO, errno } from "../ffi/errors.ts";
import { O, POLL, POLLFD } from "../ffi/layout.ts";
import { cstr } from "../ffi/mem.ts";

/** The largest pid Linux can hand out (`PID_MAX_LIMIT`). */
export const PID_MAX = 4_194_304;

/** A process as a lock names it. */
export interface ProcessId {
  /** The pid. */
  pid: number;
  /** The low 32 bits of its start time, unsigned. */
  start: number;
}

const statBuffer = new Uint8Array(1024);
const decoder = new TextDecoder();

/**
 * The state letter and start time of `pid` from `/proc/<pid>/stat`, or
 * `undefined` when it cannot be read (no such process, or /proc hides it).
 * Read through libc: /proc needs no Deno read permission that way.
 */
export function procStat(
  pid: number,
): { state: string; start: number } | undefined {
  const lib = libc();
  const fd = lib.open(cstr(`/proc/${pid}/stat`), O.RDONLY | O.CLOEXEC, 0);
  if (fd === -1) return undefined;
  let n: number;
  try {
    n = Number(lib.read(fd, statBuffer, BigInt(statBuffer.length)));
  } finally {
    lib.close(fd);
  }
  if (n <= 0) return undefined;
  const text = decoder.decode(statBuffer.subarray(0, n));
  // The command name in parentheses may hold spaces and parentheses.
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const start = Number(fields[19]);
  if (fields.length < 20 || !Number.isSafeInteger(start)) return undefined;
  return { state: fields[0], start: start % 2 ** 32 };
}

let self: ProcessId | undefined;

/** This process, as a lock names it. */
export function selfId(): ProcessId {
  if (self !== undefined) return self;
  const pid = libc().getpid();
  const stat = procStat(pid);
  if (stat === undefined) {
    throw new Deno.errors.NotSupported(
      `Cannot name this process for a lock: /proc/${pid}/stat is unreadable`,
    );
  }
  self = { pid, start: stat.start };
  return self;
}

const linkBuffer = new Uint8Array(64);

/** Where `/proc/<pid>/ns/time` links, or `undefined` when it cannot say. */
function timeNamespace(pid: number | "self"): string | undefined {
  const n = Number(
    libc().readlink(
      cstr(`/proc/${pid}/ns/time`),
      linkBuffer,
      BigInt(linkBuffer.length),
    ),
  );
  return n > 0 ? decoder.decode(linkBuffer.subarray(0, n)) : undefined;
}

/**
 * Whether `pid` is in this process's time namespace, where the start times
 * of both read alike. True when its namespace cannot be read (another
 * user's process, a kernel without time namespaces): the start time then
 * decides, as it always did.
 */
function sameTimeNamespace(pid: number): boolean {
  const theirs = timeNamespace(pid);
  return theirs === undefined || theirs === timeNamespace("self");
}

const pollBuffer = new Uint8Array(new ArrayBuffer(64));
const pollView = new DataView(pollBuffer.buffer);

/** Whether a pidfd already reports its process's exit. */
function exited(pidfd: number): boolean {
  pollView.setInt32(POLLFD.fd, pidfd, true);
  pollView.setInt16(POLLFD.events, POLL.IN, true);
  pollView.setInt16(POLLFD.revents, 0, true);
  return libc().poll(pollBuffer, 1n, 0) === 1 &&
    pollView.getInt16(POLLFD.revents, true) !== 0;
}

/**
 * Looks at the process a lock names. `dead` only when it is certainly gone
 * (a false `dead` would hand the lock to two holders); otherwise `alive`,
 * with a pidfd to watch for its exit when one could be had (the caller owns
 * and closes it; -1 when none).
 */
export function lookAt(
  owner: ProcessId,
): { dead: true } | { dead: false; pidfd: number } {
  const me = selfId();
  if (owner.pid === me.pid) {
    // This process, or an earlier one that had its pid.
    return owner.start === me.start ? { dead: false, pidfd: -1 } : {
      dead: true,
    };
  }
  const lib = libc();
  const pidfd = lib.pidfd_open(BigInt(SYS.pidfd_open), BigInt(owner.pid), 0n);
  if (pidfd === -1 && errno() === ERRNO.ESRCH) return { dead: true };
  const stat = procStat(owner.pid);
  let dead = false;
  if (stat !== undefined) {
    // Without a pidfd a zombie is taken for one: its process most likely
    // ended (pidfd_open fails for want of an fd at most).
    dead = stat.state === "X" || (stat.state === "Z" && pidfd === -1) ||
      (stat.start !== owner.start && sameTimeNamespace(owner.pid));
  }
  if (!dead && pidfd !== -1) dead = exited(pidfd);
  if (dead) {
    if (pidfd !== -1) lib.close(pidfd);
    return { dead: true };
  }
  return { dead: false, pidfd };
}
