/**
 * The carrier of a queue end: a SOCK_SEQPACKET socket whose receive queue
 * holds one message that is never consumed, the "hello": a 16-byte record
 * (magic, version, role, flags) with the ring's memfd and the end's doorbell
 * attached by SCM_RIGHTS. Handing the carrier to another process (spawn,
 * SCM_RIGHTS) hands over the hello with it; that process peeks at it, which
 * installs copies of the attached fds, and leaves it in place so the end can
 * travel again.
 *
 * Everything here is synchronous on the JS thread and never waits.
 *
 * @module
 */

import { libc } from "../ffi/libc.ts";
import { ERRNO, ioErrno, systemError } from "../ffi/errors.ts";
import { cmsgSpace, MSG, S, SOCK, STAT } from "../ffi/layout.ts";
import { closeAll, receivedFds, writeRights } from "../ffi/cmsg.ts";
import { MessageArea } from "../ffi/msghdr.ts";
import { socketOption } from "../_socket_options.ts";
import { readHangup } from "../_scm.ts";

/** "CQE1" little-endian: a conduit queue end. */
export const HELLO_MAGIC = 0x31455143;
/** The hello's layout version. */
export const HELLO_VERSION = 1;
/** The hello's size in bytes. */
export const HELLO_SIZE = 16;

/** Which end a carrier belongs to. */
export const ROLE = { sender: 1, receiver: 2 } as const;

/**
 * The hello's flags (its last u32). SHARED: the end came to a process in
 * a message, so its maker, any peer, may hold its doorbell's open file;
 * whoever adopts it from here waits through the poller (see `_bell.ts`).
 */
export const HELLO_FLAGS = { SHARED: 1 } as const;

// The most fds a peek accepts; a hello carries two, anything else is closed.
const PEEK_FDS = 8;

// The hello travels in the staging area; header and iovec never change.
// Made on first use, since taking a buffer's address needs FFI permission,
// which importing the module must not.
let hello: MessageArea | undefined;

function helloArea(): MessageArea {
  if (hello !== undefined) return hello;
  const area = new MessageArea({
    iovecs: 1,
    stage: HELLO_SIZE,
    control: cmsgSpace(PEEK_FDS * 4),
  });
  area.setIovec(0, area.stageAddress, HELLO_SIZE);
  return hello = area;
}

/** Points the header at the hello and `controlBytes` of control space. */
function fill(area: MessageArea, controlBytes: number): void {
  area.setHeader(0, 0, 1, area.address(area.controlAt), controlBytes);
}

/** Puts the hello for `role` with `fds` and `flags` into the socket `fd`. */
export function sendHello(
  fd: number,
  role: number,
  fds: number[],
  flags = 0,
): void {
  const area = helloArea();
  const { view, stageAt: dataAt } = area;
  view.setUint32(dataAt, HELLO_MAGIC, true);
  view.setUint32(dataAt + 4, HELLO_VERSION, true);
  view.setUint32(dataAt + 8, role, true);
  view.setUint32(dataAt + 12, flags, true);
  fill(area, writeRights(view, area.controlAt, fds));
  const lib = libc();
  let n: number;
  for (let failed = 0;;) {
    n = Number(lib.sendmsg(fd, area.pointer, MSG.NOSIGNAL | MSG.DONTWAIT));
    if (n !== -1) break;
    const code = ioErrno(failed++);
    if (code !== ERRNO.EINTR) {
      throw systemError("sendmsg", code, "queue end hello");
    }
  }
  if (n !== HELLO_SIZE) {
    throw new Error(
      `Cannot create shmQueue: hello sent ${n} of ${HELLO_SIZE} bytes`,
    );
  }
}

const statBuffer = new Uint8Array(STAT.size);
const statView = new DataView(statBuffer.buffer);

/** The file type bits, device and inode behind an fd, or `undefined`. */
function identity(
  fd: number,
): { type: number; dev: bigint; ino: bigint } | undefined {
  if (libc().fstat(fd, statBuffer) === -1) return undefined;
  return {
    type: statView.getUint32(STAT.mode, true) & S.IFMT,
    dev: statView.getBigUint64(STAT.dev, true),
    ino: statView.getBigUint64(STAT.ino, true),
  };
}

/** Whether `fd` is an AF_UNIX SOCK_SEQPACKET socket that does not listen. */
export function isSeqpacket(fd: number): boolean {
  return socketOption(fd, SOCK.SO_DOMAIN) === SOCK.AF_UNIX &&
    socketOption(fd, SOCK.SO_TYPE) === SOCK.SEQPACKET &&
    socketOption(fd, SOCK.SO_ACCEPTCONN) === 0;
}

/**
 * Why `fd` cannot be the doorbell of the end carried by `carrier`, or
 * `undefined` when it can: the design gives every end one side of a unix
 * seqpacket socket pair, and anything else from a peer (a regular file that
 * epoll refuses, an eventfd, a listening socket, the carrier itself, whose
 * hello a ring would consume) is refused before anything waits on it.
 */
export function doorbellProblem(
  fd: number,
  carrier: number,
): string | undefined {
  const bell = identity(fd);
  if (bell === undefined) return "its doorbell is not an open fd";
  if (bell.type !== S.IFSOCK) {
    const kind = bell.type === S.IFREG
      ? "a regular file"
      : bell.type === S.IFIFO
      ? "a pipe"
      : "a file that is not a socket";
    return `its doorbell is ${kind}, not a unix seqpacket socket`;
  }
  if (!isSeqpacket(fd)) {
    return "its doorbell is a socket of another kind, not a unix seqpacket socket";
  }
  const own = identity(carrier);
  if (own !== undefined && own.dev === bell.dev && own.ino === bell.ino) {
    return "its doorbell is its own carrier";
  }
  return undefined;
}

/** What a carrier's hello says, with the fds that came with it. */
export interface Hello {
  role: number;
  fds: number[];
  /** {@linkcode HELLO_FLAGS} bits. */
  flags: number;
}

/**
 * Peeks at the hello in a carrier, without consuming it. Returns `null`
 * (having closed whatever fds the peek installed) when `fd` is not a queue
 * end's carrier: no message, another kind of socket, a foreign message.
 */
export function peekHello(fd: number): Hello | null {
  const lib = libc();
  if (!isSeqpacket(fd)) return null;
  const area = helloArea();
  const { view, stageAt: dataAt } = area;
  area.bytes.fill(0, area.controlAt, area.controlAt + area.controlSize);
  fill(area, area.controlSize);
  let n: number;
  for (let failed = 0;;) {
    n = Number(
      lib.recvmsg(fd, area.pointer, MSG.PEEK | MSG.DONTWAIT | MSG.CMSG_CLOEXEC),
    );
    if (n !== -1) break;
    const code = ioErrno(failed++);
    if (code === ERRNO.EINTR) continue;
    if (
      code === ERRNO.EAGAIN || code === ERRNO.EINVAL || code === ERRNO.ENOTCONN
    ) {
      return null;
    }
    throw systemError("recvmsg", code, `peek at fd ${fd}`);
  }
  const flags = area.flags(0);
  let fds: number[];
  try {
    // Malformed or truncated control data: what arrived is closed.
    fds = receivedFds(
      view,
      area.controlAt,
      area.controlLength(0),
      area.controlSize,
      flags,
      PEEK_FDS,
    );
  } catch (error) {
    // A hello whose fds could not all be installed (this process is short
    // of fds) is still a queue end's, not some other socket's.
    if (
      (flags & MSG.CTRUNC) !== 0 && n === HELLO_SIZE &&
      view.getUint32(dataAt, true) === HELLO_MAGIC
    ) {
      // receivedFds() tells the two: fewer fds than room for them came.
      if (/\bEMFILE\b/.test((error as Error)?.message ?? "")) {
        throw new RangeError(
          `Cannot adopt fd ${fd}: a shmQueue end whose fds could not all be received (this process may be out of fds: EMFILE)`,
          { cause: error },
        );
      }
      throw new TypeError(
        `Cannot adopt fd ${fd}: a shmQueue end whose hello carries more than ${PEEK_FDS} fds`,
        { cause: error },
      );
    }
    return null;
  }
  const ok = n === HELLO_SIZE && (flags & MSG.TRUNC) === 0 &&
    view.getUint32(dataAt, true) === HELLO_MAGIC;
  if (!ok) {
    closeAll(fds);
    return null;
  }
  if (view.getUint32(dataAt + 4, true) !== HELLO_VERSION) {
    closeAll(fds);
    throw new TypeError(
      `Cannot adopt fd ${fd}: a shmQueue end of layout version ${
        view.getUint32(dataAt + 4, true)
      }, this module reads version ${HELLO_VERSION}`,
    );
  }
  return {
    role: view.getUint32(dataAt + 8, true),
    fds,
    flags: view.getUint32(dataAt + 12, true),
  };
}

const bell = new Uint8Array(new ArrayBuffer(64));

/**
 * Rings a doorbell: one 1-byte message. Returns `false` when the peer's
 * side is gone; a full doorbell (a ring is already pending) counts as rung.
 */
export function ring(fd: number): boolean {
  const lib = libc();
  for (let failed = 0;;) {
    const n = Number(lib.send(fd, bell, 1n, MSG.DONTWAIT | MSG.NOSIGNAL));
    if (n !== -1) return true;
    const code = ioErrno(failed++);
    if (code === ERRNO.EINTR) continue;
    if (code === ERRNO.EAGAIN) return true;
    if (
      code === ERRNO.EPIPE || code === ERRNO.ECONNRESET ||
      code === ERRNO.ENOTCONN
    ) {
      return false;
    }
    throw systemError("send", code, "shmQueue doorbell");
  }
}

const drainBuffer = new Uint8Array(new ArrayBuffer(64));
// A peer that keeps ringing cannot hold the thread here: what is left after
// this many reads wakes the next wait at once instead.
const DRAIN_READS = 64;

/**
 * Takes the pending rings off a doorbell. Returns `false` once the peer's
 * side is gone (hung up, or never connected).
 */
export function drain(fd: number): boolean {
  const lib = libc();
  let failed = 0;
  for (let reads = 0; reads < DRAIN_READS; reads++) {
    const n = Number(lib.recv(fd, drainBuffer, 64n, MSG.DONTWAIT));
    if (n > 0) continue;
    // 0 bytes: the hang-up, or an empty packet (a peer's, which reads
    // alike): only a hang-up ends the end.
    if (n === 0) {
      if (readHangup(fd)) return false;
      continue;
    }
    const code = ioErrno(failed++);
    if (code === ERRNO.EAGAIN) return true;
    if (code === ERRNO.EINTR) continue;
    if (code === ERRNO.ECONNRESET || code === ERRNO.ENOTCONN) return false;
    throw systemError("recv", code, "shmQueue doorbell");
  }
  return true;
}
