/**
 * From an fd to the endpoint that fits it: the algorithm behind `fromFd()`,
 * `UnixSocket.recv()` and the endpoints in channel values. It sits above
 * every endpoint module (it imports them all, none imports it) and hands
 * {@linkcode adoptFd} to `_received.ts` for the endpoints that receive fds.
 *
 * The fd's file type (`fstat`) picks the candidates; those of one file
 * type are asked in the order of {@linkcode ADOPTERS}, most specific
 * first, and the first that recognises the fd makes its endpoint.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { check, errno, systemError } from "./ffi/errors.ts";
import { F, O, S, SOCK, STAT } from "./ffi/layout.ts";
import { OwnedFd } from "./ffi/fd.ts";
import { getIntOption, typeName } from "./_socket_options.ts";
import { readMark, seqpacketProblem } from "./_channel_wire.ts";
import { boundAddress } from "./_unix_addr.ts";
import { setReceivedAdopter } from "./_received.ts";
import { PipeReader, PipeWriter } from "./pipe.ts";
import { UnixSocket } from "./unix_socket.ts";
import { UnixListener } from "./unix_listener.ts";
import { SharedMemory } from "./shm/shared_memory.ts";
import { fdLink, SHM_NAME } from "./shm/_memfd.ts";
import {
  adoptQueueEnd,
  type ShmReceiver,
  type ShmSender,
} from "./shm/queue.ts";
import { Sender } from "./channel/sender.ts";
import { Receiver } from "./channel/receiver.ts";

/**
 * Every endpoint class `fromFd()` can return: a socket by `SO_TYPE`
 * (a listening one as `UnixListener`), a memfd as `SharedMemory`, queue and
 * channel ends by their marker.
 */
export type Endpoint =
  | PipeReader
  | PipeWriter
  | UnixSocket
  | UnixListener
  | SharedMemory
  | ShmSender
  | ShmReceiver
  | Sender<unknown>
  | Receiver<unknown>;

/** What kind of file an fd refers to, by `fstat`. */
export type FdKind = "fifo" | "socket" | "file" | "other";

/** The kind of file behind an fd, and its open access mode. */
export function describeFd(fd: number): { kind: FdKind; access: number } {
  const lib = libc();
  const stat = new Uint8Array(STAT.size);
  check("fstat", lib.fstat(fd, stat));
  const mode = new DataView(stat.buffer).getUint32(STAT.mode, true) & S.IFMT;
  const access = check("fcntl(F_GETFL)", lib.fcntl(fd, F.GETFL, 0)) &
    O.ACCMODE;
  const kind: FdKind = mode === S.IFIFO
    ? "fifo"
    : mode === S.IFSOCK
    ? "socket"
    : mode === S.IFREG
    ? "file"
    : "other";
  return { kind, access };
}

/** Sets FD_CLOEXEC on an fd, so it does not leak into unrelated children. */
export function setCloexec(fd: number): void {
  const lib = libc();
  const flags = check("fcntl(F_GETFD)", lib.fcntl(fd, F.GETFD, 0));
  if ((flags & F.FD_CLOEXEC) === 0) {
    check("fcntl(F_SETFD)", lib.fcntl(fd, F.SETFD, flags | F.FD_CLOEXEC));
  }
}

/** Whether an fd is close-on-exec; `BadResource` when it is not open. */
export function isCloexec(fd: number): boolean {
  const flags = libc().fcntl(fd, F.GETFD, 0);
  if (flags === -1) {
    const error = systemError("fcntl(F_GETFD)", errno());
    if (error.code !== "EBADF") throw error;
    throw new Deno.errors.BadResource(
      `Cannot adopt fd ${fd}: it is not open in this process`,
      { cause: error },
    );
  }
  return (flags & F.FD_CLOEXEC) !== 0;
}

/**
 * One kind of endpoint: the file type it is made from, and how it
 * recognises an fd of that type as its own. `adopt` returns `null` for an
 * fd that is not its kind, and may throw a `TypeError` for one that is but
 * that it refuses (the fd is left open then).
 */
interface Adopter {
  readonly file: FdKind;
  /** `received`: the fd came in a message from a peer (see adoptFd). */
  readonly adopt: (
    fd: number,
    access: number,
    received: boolean,
  ) => Endpoint | null;
}

// Pipe ends (and FIFOs), by their access mode.
function pipeEnd(fd: number, access: number): Endpoint {
  if (access === O.RDONLY) return new PipeReader(fd);
  if (access === O.WRONLY) return new PipeWriter(fd);
  throw new TypeError(
    `Cannot adopt fd ${fd}: a FIFO opened for reading and writing has no single direction`,
  );
}

// Channel ends handed over by spawn or raw fd passing carry a mark (their
// socket's abstract name) that says which end, mode and capacity they are.
function channelEnd(fd: number): Endpoint | null {
  let mark;
  try {
    mark = readMark(boundAddress(fd).abstract);
  } catch {
    return null;
  }
  if (mark === null) return null;
  const problem = seqpacketProblem(fd);
  if (problem !== undefined) {
    throw new TypeError(
      `Cannot adopt fd ${fd} as a channel ${
        mark.role === "s" ? "Sender" : "Receiver"
      }: it is ${problem}, not a unix seqpacket socket`,
    );
  }
  if (mark.role === "s") return new Sender(fd, mark.capacity, mark.mode);
  return new Receiver([{
    fd: new OwnedFd(fd, "Receiver"),
    capacity: mark.capacity,
    unacked: 0,
  }], mark.mode);
}

// Any other unix socket, by SO_TYPE; a listening one as UnixListener.
function unixSocket(fd: number): Endpoint | null {
  if (getIntOption(fd, SOCK.SO_DOMAIN, "SO_DOMAIN") !== SOCK.AF_UNIX) {
    return null;
  }
  const type = typeName(getIntOption(fd, SOCK.SO_TYPE, "SO_TYPE"));
  if (type === undefined) return null;
  if (getIntOption(fd, SOCK.SO_ACCEPTCONN, "SO_ACCEPTCONN") === 1) {
    return new UnixListener(fd);
  }
  return new UnixSocket(fd, type);
}

// Memory adopted from another process gets the constructor's defaults:
// sealed against shrinking and at most 1 GiB. A named object (which takes no
// seals) is therefore refused; a trusted peer's can be mapped with
// `new SharedMemory(fd, { allowShrink: true })`.
function sharedMemory(fd: number, access: number): Endpoint | null {
  if (access !== O.RDWR) return null;
  const link = fdLink(fd);
  if (link === undefined) return null;
  if (link.startsWith("/memfd:")) return new SharedMemory(fd);
  if (link.startsWith("/dev/shm/")) {
    const name = link.slice("/dev/shm/".length);
    return new SharedMemory(fd, {
      name: SHM_NAME.test(name) ? name : undefined,
    });
  }
  return null;
}

/**
 * The adopters in rank order: for an fd of one file type, the first that
 * recognises it makes the endpoint. A shmQueue end and a channel end are
 * unix sockets too, so both rank above the plain socket. A channel end is
 * asked first since its test (the socket's name) costs one syscall and
 * reads nothing, while a queue end's peeks at the socket's first message.
 */
const ADOPTERS: readonly Adopter[] = [
  { file: "fifo", adopt: pipeEnd },
  { file: "socket", adopt: channelEnd },
  {
    file: "socket",
    adopt: (fd, _access, received) => adoptQueueEnd(fd, undefined, received),
  },
  { file: "socket", adopt: unixSocket },
  { file: "file", adopt: sharedMemory },
];

/**
 * Wraps an fd in the endpoint that fits it and makes it CLOEXEC. No check
 * of where the fd came from: this is the path of fds this process
 * received (SCM_RIGHTS fds arrive CLOEXEC); `fromFd()` adds the check for
 * fds named by a caller.
 *
 * @param received Whether the fd came in a message from a peer, which may
 * be another user's process, rather than from `fromFd()` (an fd inherited
 * from the process that started this one, or this process's own): a shm
 * queue end received so waits through the poller (see shm/_bell.ts).
 * @throws {TypeError} When no endpoint fits the fd (it is left open).
 */
export function adoptFd(fd: number, received = false): Endpoint {
  const { kind, access } = describeFd(fd);
  for (const adopter of ADOPTERS) {
    if (adopter.file !== kind) continue;
    const endpoint = adopter.adopt(fd, access, received);
    if (endpoint !== null) {
      setCloexec(fd);
      return endpoint;
    }
  }
  throw new TypeError(
    `Cannot adopt fd ${fd}: it is ${
      KIND_NAMES[kind]
    }, and no endpoint fits it (fromFd() takes pipe ends, unix sockets, shared-memory queue ends and sealed shared memory)`,
  );
}

const KIND_NAMES: Record<FdKind, string> = {
  fifo: "a pipe",
  socket: "a socket",
  file: "a regular file",
  other:
    "neither a pipe, a socket nor a regular file (a terminal, a device, a directory, ...)",
};

setReceivedAdopter((fd) => adoptFd(fd, true));
