/**
 * Socket message I/O: `sendmsg`/`recvmsg` with SCM_RIGHTS, and the per-call
 * nonblocking byte primitives of stream sockets. Everything here is
 * synchronous on the JS thread; callers decide when to wait in the poller.
 *
 * Messages are laid out with the module's one msghdr builder
 * (`ffi/msghdr.ts`), and received control data goes through its one strict
 * parser (`ffi/cmsg.ts`) before any fd is believed: a wrong length never
 * makes this code read outside the control buffer or adopt a number that is
 * not a received fd, and every fd that arrived is handed out or closed.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import {
  ERRNO,
  errno,
  ioErrno,
  type SystemError,
  systemError,
} from "./ffi/errors.ts";
import { cmsgSpace, MSG, POLL, POLLFD } from "./ffi/layout.ts";
import {
  closeAll,
  CREDENTIALS_SPACE,
  MAX_FDS,
  receivedFds,
  writeRights,
} from "./ffi/cmsg.ts";
import { MAY_MOVE, MessageArea } from "./ffi/msghdr.ts";
import { addressOf, reservedArea, stableBuffer } from "./ffi/mem.ts";
import { IN_WORKER } from "./ffi/_wake_aio.ts";

export { closeAll, MAX_FDS } from "./ffi/cmsg.ts";

// Room for a full SCM_RIGHTS message plus other control messages the
// socket may carry (credentials, security labels).
const CONTROL_SIZE = cmsgSpace(MAX_FDS * 4) + 256;

// One message at a time: its header and iovec are filled once, and each
// call sets only what changes. Made on first use, since taking a buffer's
// address needs FFI permission, which importing the module must not.
let oneMessage: MessageArea | undefined;

function singleArea(): MessageArea {
  if (oneMessage !== undefined) return oneMessage;
  const area = new MessageArea({
    iovecs: 1,
    stage: MAY_MOVE,
    control: CONTROL_SIZE,
  });
  area.setHeader(0, 0, 1, area.address(area.controlAt), CONTROL_SIZE);
  return oneMessage = area;
}

/** A buffer for peeks that take no bytes. */
const empty = new Uint8Array(new ArrayBuffer(64));

/** Flags of every nonblocking send: no SIGPIPE, EPIPE instead. */
const SEND_NOWAIT = MSG.DONTWAIT | MSG.NOSIGNAL;

/**
 * Sends `data` with `fds` attached (SCM_RIGHTS when there are any).
 *
 * @param fd The socket.
 * @param data The bytes.
 * @param fds The fds to pass; at most {@linkcode MAX_FDS}.
 * @param wait Whether the call may block (the `*Sync` forms).
 * @returns Bytes sent, or -1 when the socket is full (never when `wait`).
 * @throws The system error of any other failure (EPIPE, EMSGSIZE, ...).
 */
export function sendMessage(
  fd: number,
  data: Uint8Array,
  fds: readonly number[],
  wait: boolean,
): number {
  const single = singleArea();
  const controlBytes = fds.length === 0
    ? 0
    : writeRights(single.view, single.controlAt, fds);
  single.setIovecFor(0, data, 0, true);
  single.reset(0, controlBytes);
  const flags = wait ? MSG.NOSIGNAL : SEND_NOWAIT;
  const lib = libc();
  let failed = 0;
  for (;;) {
    const n = Number(lib.sendmsg(fd, single.pointer, flags));
    if (n >= 0) return n;
    const code = ioErrno(failed++);
    if (code === ERRNO.EINTR) continue;
    if (code === ERRNO.EAGAIN && !wait) return -1;
    throw systemError("sendmsg", code);
  }
}

/** One message of a batch for {@linkcode sendMessages}. */
export interface OutgoingMessage {
  /** The bytes. */
  readonly data: Uint8Array;
  /**
   * How many bytes `data` had when the message was sent: a buffer
   * transferred away or shrunk since must not go as a shorter message.
   */
  readonly length: number;
  /** The fds to pass with them; may be empty. */
  readonly fds: readonly number[];
}

/** The most messages one `sendmmsg` call carries. */
const BATCH_MAX = 64;
/** Control space for the fds of one batch; a batch ends where it is full. */
const BATCH_CONTROL = 16 * 1024;
// The batch area: one header, iovec and staging slot per message, then the
// control space. Made on the first batch.
let batch: MessageArea | undefined;

/**
 * Sends `messages[start]` and as many following ones as one `sendmmsg` call
 * takes (at most 64, and as many fds as fit its control space), in order,
 * without blocking. Datagrams and packets go whole or not at all.
 *
 * @param fd The socket (datagram or seqpacket).
 * @param messages The messages.
 * @param start The first one to send.
 * @returns How many were sent (at least one), or -1 when the socket has no
 * room for the first. A message after the first that cannot go now ends the
 * count; sending from it again reports why. So does a message whose buffer
 * was transferred away or shrunk below its `length` (the caller checks the
 * first itself).
 * @throws The system error of the first message when it cannot be sent
 * (EMSGSIZE, EPIPE, EBADF, ...).
 */
export function sendMessages(
  fd: number,
  messages: readonly OutgoingMessage[],
  start: number,
): number {
  const area = batch ??= new MessageArea({
    headers: BATCH_MAX,
    iovecs: BATCH_MAX,
    stage: BATCH_MAX * MAY_MOVE,
    control: BATCH_CONTROL,
  });
  let count = 0;
  let control = 0;
  for (let i = start; i < messages.length && count < BATCH_MAX; i++) {
    const { data, fds, length } = messages[i];
    // A buffer transferred away or shrunk while its message waited: it must
    // not go as a shorter message. The batch ends before it; the caller
    // reports it once it is first.
    if (data.byteLength !== length && count > 0) break;
    const space = fds.length === 0 ? 0 : cmsgSpace(fds.length * 4);
    // A batch always takes its first message; MAX_FDS fit the space.
    if (control + space > BATCH_CONTROL) break;
    let controlAddress = 0n;
    if (space !== 0) {
      const at = area.controlAt + control;
      writeRights(area.view, at, fds);
      controlAddress = area.address(at);
      control += space;
    }
    area.setHeader(count, count, 1, controlAddress, space);
    area.setIovecFor(count, data, count * MAY_MOVE, true);
    count++;
  }
  const lib = libc();
  let failed = 0;
  for (;;) {
    const n = lib.sendmmsg(fd, area.pointer, count, SEND_NOWAIT);
    if (n >= 0) return n;
    const code = ioErrno(failed++);
    if (code === ERRNO.EINTR) continue;
    if (code === ERRNO.EAGAIN) return -1;
    throw systemError("sendmmsg", code);
  }
}

/** What one `recvmsg` call returned. */
export interface Received {
  /** Bytes received into the buffer. */
  bytes: number;
  /** Received fds, already CLOEXEC, now owned by the caller. */
  fds: number[];
  /** `msg_flags` as the kernel set them. */
  flags: number;
  /**
   * With `keepBytes`: why the control data was refused (its fds closed,
   * none in `fds`), while `bytes` still counts the bytes received.
   */
  refused?: unknown;
}

/**
 * Receives into `into`, taking up to `maxFds` fds (CLOEXEC from the start).
 * Control data that is malformed, truncated or carries more fds than
 * allowed closes the fds that did arrive and throws.
 *
 * @param fd The socket.
 * @param into Where the data goes.
 * @param maxFds Room for this many fds, at most {@linkcode MAX_FDS}.
 * @param wait Whether the call may block (the `*Sync` forms).
 * @param keepBytes Whether refused control data is reported in `refused`
 * (the bytes kept) instead of thrown: a stream socket's bytes are not the
 * message's alone.
 * @returns What arrived, or `null` when nothing is ready (never when `wait`).
 */
export function receiveMessage(
  fd: number,
  into: Uint8Array,
  maxFds: number,
  wait: boolean,
  keepBytes = false,
): Received | null {
  const single = singleArea();
  const staged = single.setIovecFor(0, into, 0, false);
  const got = recvInto(single, fd, maxFds, wait, keepBytes);
  if (got === null) return null;
  const n = got.bytes;
  const fds = got.fds;
  if (n > into.byteLength) {
    closeAll(fds);
    throw new RangeError(
      `Cannot receive on socket: recvmsg reported ${n} bytes for a ${into.byteLength}-byte buffer`,
    );
  }
  if (staged) single.copyOut(0, into, n);
  return got;
}

/**
 * One `recvmsg` through `area`'s first header (its iovecs set by the
 * caller), offering control room for `maxFds` fds: what arrived, or `null`
 * when nothing is ready (never when `wait`).
 */
function recvInto(
  area: MessageArea,
  fd: number,
  maxFds: number,
  wait: boolean,
  keepBytes = false,
): Received | null {
  const offered = controlRoom(maxFds);
  const n = recvRaw(area, fd, offered, wait);
  if (n < 0) return null;
  const flags = area.flags(0);
  try {
    return { bytes: n, fds: fdsOf(area, offered, maxFds), flags };
  } catch (error) {
    if (!keepBytes) throw error;
    return { bytes: n, fds: [], flags, refused: error };
  }
}

/**
 * Control room for `maxFds` fds plus a credentials message, should the
 * socket carry one; a message with more fds than allowed is caught by
 * {@linkcode fdsOf} either way (truncated, or counted).
 */
function controlRoom(maxFds: number): number {
  return Math.min(
    CONTROL_SIZE,
    cmsgSpace(Math.max(1, Math.min(maxFds, MAX_FDS)) * 4) + CREDENTIALS_SPACE,
  );
}

/**
 * The `recvmsg` itself, offering `offered` bytes of control room: bytes
 * received, or -1 when nothing is ready (never when `wait`).
 */
function recvRaw(
  area: MessageArea,
  fd: number,
  offered: number,
  wait: boolean,
): number {
  area.reset(0, offered);
  const flags = MSG.CMSG_CLOEXEC | (wait ? 0 : MSG.DONTWAIT);
  const lib = libc();
  let failed = 0;
  for (;;) {
    const n = Number(lib.recvmsg(fd, area.pointer, flags));
    if (n >= 0) return n;
    const code = ioErrno(failed++);
    if (code === ERRNO.EINTR) continue;
    if (code === ERRNO.EAGAIN && !wait) return -1;
    throw systemError("recvmsg", code);
  }
}

/**
 * The fds a `recvmsg` through `area` took: throws, with them closed, when
 * the control data is malformed, truncated or carries more than `maxFds`.
 */
function fdsOf(area: MessageArea, offered: number, maxFds: number): number[] {
  const msgFlags = area.flags(0);
  const controlLen = area.controlLength(0);
  return controlLen > 0 || (msgFlags & MSG.CTRUNC) !== 0
    ? receivedFds(
      area.view,
      area.controlAt,
      controlLen,
      offered,
      msgFlags,
      maxFds,
    )
    : [];
}

/** Bytes of a packet received in place; a larger one goes on in the reserve. */
const WHOLE_SCRATCH = 64 * 1024;
/**
 * Room past the scratch for the rest of the largest packet a peer can send.
 * The kernel refuses a datagram or packet larger than its sender's send
 * buffer, which even `SO_SNDBUFFORCE` keeps below 2^31 bytes.
 */
const WHOLE_RESERVE = 2 ** 31;
/** `MADV_DONTNEED`: give the pages of a range back. */
const MADV_DONTNEED = 4;

interface WholeArea {
  area: MessageArea;
  scratch: Uint8Array<ArrayBuffer>;
  reserve: NonNullable<Deno.PointerValue>;
}

// Made on first use; null in a Worker and where the reserve cannot be
// mapped (a strict overcommit policy, an address-space limit): packets are
// then measured first.
let wholeMessage: WholeArea | null | undefined;

function wholeArea(): WholeArea | null {
  if (wholeMessage !== undefined) return wholeMessage;
  // A Worker's reserve would outlive it (nothing unmaps it when the Worker
  // ends), and a process may start Workers without end: they measure.
  if (IN_WORKER) return wholeMessage = null;
  // Address space only: pages are made when a large packet lands in it,
  // and given back once it is copied out.
  const reserve = reservedArea(WHOLE_RESERVE);
  if (reserve === null) return wholeMessage = null;
  const area = new MessageArea({ iovecs: 2, stage: 0, control: CONTROL_SIZE });
  const scratch = new Uint8Array(stableBuffer(WHOLE_SCRATCH));
  area.setIovec(0, addressOf(scratch), WHOLE_SCRATCH);
  area.setIovec(1, reserve.address, WHOLE_RESERVE);
  area.setHeader(0, 0, 2, area.address(area.controlAt), CONTROL_SIZE);
  return wholeMessage = { area, scratch, reserve: reserve.pointer };
}

let measureFirst = false;

/**
 * For tests: the address of the reserve, once a whole-packet receive has
 * made it.
 *
 * @internal
 */
export function wholeReserve(): bigint | undefined {
  return wholeMessage
    ? BigInt(Deno.UnsafePointer.value(wholeMessage.reserve))
    : undefined;
}

/**
 * For tests: `false` makes {@linkcode receiveWhole} decline, so that
 * packets are measured first, as where the reserve cannot be made.
 *
 * @internal
 */
export function receiveWholly(on: boolean): void {
  measureFirst = !on;
}

/** What one whole-packet receive returned. */
export interface ReceivedWhole {
  /** The packet's bytes, a new buffer of their length. */
  data: Uint8Array<ArrayBuffer>;
  /** Received fds, already CLOEXEC, now owned by the caller. */
  fds: number[];
  /** `msg_flags` as the kernel set them. */
  flags: number;
}

/**
 * Receives one datagram or packet whole in one `recvmsg`, however large,
 * without measuring it first: it lands in a 64 KiB scratch buffer and, past
 * that, in a reserve of address space as large as any packet the kernel
 * lets a peer send. Returns `undefined` when the reserve could not be made
 * (the caller measures with {@linkcode peekSize} and receives into a buffer
 * of that size), `null` when nothing is ready (never when `wait`).
 */
export function receiveWhole(
  fd: number,
  maxFds: number,
  wait: boolean,
): ReceivedWhole | null | undefined {
  if (measureFirst) return undefined;
  const whole = wholeArea();
  if (whole === null) return undefined;
  const area = whole.area;
  const offered = controlRoom(maxFds);
  const n = recvRaw(area, fd, offered, wait);
  if (n < 0) return null;
  const flags = area.flags(0);
  let fds: number[];
  try {
    fds = fdsOf(area, offered, maxFds);
  } catch (error) {
    // The packet is taken, refused for its control data: its pages in the
    // reserve go back all the same.
    giveBack(whole, n);
    throw error;
  }
  // The kernel takes at most about 2 GiB in one call: a packet larger than
  // that (a peer with SO_SNDBUFFORCE near its cap) cannot be taken whole.
  if ((flags & MSG.TRUNC) !== 0 || n > WHOLE_SCRATCH + WHOLE_RESERVE) {
    closeAll(fds);
    giveBack(whole, n);
    throw new RangeError(
      `Cannot receive on socket: a packet of more than ${n} bytes was truncated`,
    );
  }
  if (n <= WHOLE_SCRATCH) {
    return { data: whole.scratch.slice(0, n), fds, flags };
  }
  const data = new Uint8Array(n);
  data.set(whole.scratch);
  Deno.UnsafePointerView.copyInto(whole.reserve, data.subarray(WHOLE_SCRATCH));
  giveBack(whole, n);
  return { data, fds, flags };
}

/** Gives back the reserve's pages that a packet of `n` bytes touched. */
function giveBack(whole: WholeArea, n: number): void {
  if (n <= WHOLE_SCRATCH) return;
  const touched = Math.ceil(
    Math.min(n - WHOLE_SCRATCH, WHOLE_RESERVE) / 4096,
  ) * 4096;
  libc().madvise(whole.reserve, BigInt(touched), MADV_DONTNEED);
}

/**
 * The size of the next datagram or packet without taking it (MSG_PEEK with
 * MSG_TRUNC reports the whole length), or -1 when none is queued. 0 means
 * an empty message or end of stream; {@linkcode readHangup} tells which.
 */
export function peekSize(fd: number, wait: boolean): number {
  const flags = MSG.PEEK | MSG.TRUNC | (wait ? 0 : MSG.DONTWAIT);
  const lib = libc();
  let failed = 0;
  for (;;) {
    const n = Number(lib.recv(fd, empty, 0n, flags));
    if (n >= 0) return n;
    const code = ioErrno(failed++);
    if (code === ERRNO.EINTR) continue;
    if (code === ERRNO.EAGAIN && !wait) return -1;
    throw systemError("recv", code);
  }
}

const pollBuf = new Uint8Array(new ArrayBuffer(64));
const pollView = new DataView(pollBuf.buffer);

/**
 * Which of `events` ({@linkcode POLL} bits) the fd reports right now: a
 * sync `poll` with a zero timeout (it never waits, so it is no second
 * poller).
 */
export function pollNow(fd: number, events: number): number {
  pollView.setInt32(POLLFD.fd, fd, true);
  pollView.setInt16(POLLFD.events, events, true);
  pollView.setInt16(POLLFD.revents, 0, true);
  const lib = libc();
  for (;;) {
    const n = lib.poll(pollBuf, 1n, 0);
    if (n >= 0) break;
    const code = errno();
    if (code !== ERRNO.EINTR) throw systemError("poll", code);
  }
  return pollView.getInt16(POLLFD.revents, true) & events;
}

/**
 * Whether the socket's receive side is shut down (the peer closed a stream
 * or seqpacket socket, or this side called `shutdown(SHUT_RD)`).
 */
export function readHangup(fd: number): boolean {
  return pollNow(fd, POLL.RDHUP) !== 0;
}

/**
 * After a seqpacket receive that took 0 bytes and no fds: whether that was
 * the end of stream rather than an empty packet, which the kernel reports
 * alike. Once the peer has hung up, a packet of more than 0 bytes still
 * queued shows the 0 bytes were an empty packet; an empty packet followed
 * only by empty packets and the hang-up still reads as the end.
 */
export function endOfPackets(fd: number): boolean {
  if (!readHangup(fd)) return false;
  for (;;) {
    try {
      return peekSize(fd, false) <= 0;
    } catch (error) {
      // Reported once, ahead of what the peer sent before closing.
      if ((error as SystemError).errno !== ERRNO.ECONNRESET) throw error;
    }
  }
}

/**
 * Stream sockets: reads once without blocking (MSG_DONTWAIT). Bytes read,
 * 0 at end of stream, -1 when nothing is ready.
 */
export function recvNoWait(fd: number, into: Uint8Array): number {
  const lib = libc();
  let failed = 0;
  for (;;) {
    const n = Number(
      lib.recv(fd, into, BigInt(into.byteLength), MSG.DONTWAIT),
    );
    if (n >= 0) return n;
    const code = ioErrno(failed++);
    if (code === ERRNO.EAGAIN) return -1;
    // A peer that closed with unread data of ours reports ECONNRESET once,
    // ahead of what it sent before closing: read on to that data, then EOF.
    if (code === ERRNO.ECONNRESET) continue;
    if (code !== ERRNO.EINTR) throw systemError("recv", code);
  }
}

/** Stream sockets: a blocking read. Bytes read, 0 at end of stream. */
export function recvBlocking(fd: number, into: Uint8Array): number {
  const lib = libc();
  let failed = 0;
  for (;;) {
    const n = Number(lib.recv(fd, into, BigInt(into.byteLength), 0));
    if (n >= 0) return n;
    const code = ioErrno(failed++);
    if (code === ERRNO.ECONNRESET) continue; // once, ahead of queued data
    if (code !== ERRNO.EINTR) throw systemError("recv", code);
  }
}

/**
 * Stream sockets: writes once without blocking (MSG_DONTWAIT). Bytes
 * written (possibly fewer than given), or -1 when nothing fits now.
 */
export function sendNoWait(fd: number, from: Uint8Array): number {
  const lib = libc();
  let failed = 0;
  for (;;) {
    const n = Number(
      lib.send(fd, from, BigInt(from.byteLength), SEND_NOWAIT),
    );
    if (n >= 0) return n;
    const code = ioErrno(failed++);
    if (code === ERRNO.EAGAIN) return -1;
    if (code !== ERRNO.EINTR) throw systemError("send", code);
  }
}

/**
 * A blocking send of one message or chunk: bytes sent (for datagrams and
 * packets, all or an error).
 */
export function sendBlocking(fd: number, from: Uint8Array): number {
  const lib = libc();
  let failed = 0;
  for (;;) {
    const n = Number(
      lib.send(fd, from, BigInt(from.byteLength), MSG.NOSIGNAL),
    );
    if (n >= 0) return n;
    const code = ioErrno(failed++);
    if (code !== ERRNO.EINTR) throw systemError("send", code);
  }
}

/** Stream sockets: a blocking write of every byte. */
export function sendAllBlocking(fd: number, from: Uint8Array): void {
  const lib = libc();
  let done = 0;
  let failed = 0;
  while (done < from.byteLength) {
    const part = from.subarray(done);
    const n = Number(lib.send(fd, part, BigInt(part.byteLength), MSG.NOSIGNAL));
    if (n >= 0) {
      done += n;
      continue;
    }
    const code = ioErrno(failed++);
    if (code !== ERRNO.EINTR) throw systemError("send", code);
  }
}
