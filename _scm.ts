/**
 * Socket message I/O: `sendmsg`/`recvmsg` with SCM_RIGHTS, and the per-call
 * nonblocking byte primitives of stream sockets. Everything here is
 * synchronous on the JS thread; callers decide when to wait in the poller.
 *
 * Received control data comes from the kernel, but its lengths and counts
 * are still checked before any fd is believed: a wrong length never makes
 * this code read outside the control buffer or adopt a number that is not a
 * received fd.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { ERRNO, errno, systemError } from "./ffi/errors.ts";
import {
  CMSGHDR,
  cmsgLen,
  cmsgSpace,
  IOVEC,
  MMSGHDR,
  MSG,
  MSGHDR,
  SOCK,
} from "./ffi/layout.ts";
import { addressOf, pointerOf, stableBuffer } from "./ffi/mem.ts";

/** Linux's limit on fds in one SCM_RIGHTS message (`SCM_MAX_FD`). */
export const MAX_FDS = 253;

// One off-heap buffer holds the msghdr, the iovec, a bounce area for data
// that V8 may move, and the control buffer. Calls are synchronous on the JS
// thread, so they never overlap.
const HDR_AT = 0;
const IOV_AT = 64;
const BOUNCE_AT = 128;
const BOUNCE_SIZE = 64;
const CONTROL_AT = 192;
// Room for a full SCM_RIGHTS message plus other control messages the
// socket may carry (credentials, security labels).
const CONTROL_SIZE = cmsgSpace(MAX_FDS * 4) + 256;
// SCM_CREDENTIALS: a struct ucred of 12 bytes.
const CREDENTIALS_SPACE = cmsgSpace(12);

const area = stableBuffer(CONTROL_AT + CONTROL_SIZE);
const areaView = new DataView(area);
const areaBytes = new Uint8Array(area);
const areaAddress = addressOf(area);
const hdrPointer = pointerOf(area);
const empty = new Uint8Array(new ArrayBuffer(64));

/** Flags of every nonblocking send: no SIGPIPE, EPIPE instead. */
const SEND_NOWAIT = MSG.DONTWAIT | MSG.NOSIGNAL;

/** Writes a non-negative integer below 2^53 as a u64, without a BigInt. */
function setSize(at: number, value: number): void {
  areaView.setUint32(at, value >>> 0, true);
  areaView.setUint32(at + 4, Math.floor(value / 0x1_0000_0000), true);
}

// The fields that never change: no name, one iovec, the control buffer.
areaView.setBigUint64(HDR_AT + MSGHDR.name, 0n, true);
areaView.setBigUint64(
  HDR_AT + MSGHDR.iov,
  areaAddress + BigInt(IOV_AT),
  true,
);
setSize(HDR_AT + MSGHDR.iovlen, 1);
areaView.setBigUint64(
  HDR_AT + MSGHDR.control,
  areaAddress + BigInt(CONTROL_AT),
  true,
);
const bounceAddress = areaAddress + BigInt(BOUNCE_AT);

/**
 * Fills the msghdr for one data buffer and `controlBytes` of control space.
 * Returns whether the data goes through the bounce area (copied there first
 * when `copyIn`).
 */
function prepare(
  data: Uint8Array,
  controlBytes: number,
  copyIn: boolean,
): boolean {
  // V8 keeps buffers of at most 64 bytes in its heap, where they may move.
  // Testing the view's own length avoids reading `.buffer`, which would
  // move such a buffer out of the heap on every call.
  const bounced = data.byteLength <= BOUNCE_SIZE;
  if (bounced) {
    if (copyIn) {
      for (let i = 0; i < data.byteLength; i++) {
        areaBytes[BOUNCE_AT + i] = data[i];
      }
    }
    areaView.setBigUint64(IOV_AT, bounceAddress, true);
  } else {
    areaView.setBigUint64(IOV_AT, addressOf(data), true);
  }
  setSize(IOV_AT + 8, data.byteLength);
  // recvmsg writes these two back: set them for every call.
  areaView.setUint32(HDR_AT + MSGHDR.namelen, 0, true);
  setSize(HDR_AT + MSGHDR.controllen, controlBytes);
  areaView.setInt32(HDR_AT + MSGHDR.flags, 0, true);
  return bounced;
}

/**
 * Writes one SCM_RIGHTS control message carrying `fds` at `at` in `view`,
 * padding included, for a msghdr of any layout.
 *
 * @param view The control buffer's memory.
 * @param at Where the control message starts (8-aligned).
 * @param fds The fds to pass, at least one.
 * @returns The control bytes to send (`CMSG_SPACE`), for `msg_controllen`.
 */
export function writeRights(
  view: DataView,
  at: number,
  fds: readonly number[],
): number {
  const len = cmsgLen(fds.length * 4);
  const space = cmsgSpace(fds.length * 4);
  // cmsg_len is a size_t: written as two u32 halves, without a BigInt.
  view.setUint32(at + CMSGHDR.len, len, true);
  view.setUint32(at + CMSGHDR.len + 4, 0, true);
  view.setInt32(at + CMSGHDR.level, SOCK.SOL_SOCKET, true);
  view.setInt32(at + CMSGHDR.type, SOCK.SCM_RIGHTS, true);
  for (let i = 0; i < fds.length; i++) {
    view.setInt32(at + CMSGHDR.size + i * 4, fds[i], true);
  }
  // An odd fd count leaves 4 bytes of padding up to CMSG_SPACE.
  for (let i = len; i < space; i += 4) view.setInt32(at + i, 0, true);
  return space;
}

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
  const controlBytes = fds.length === 0
    ? 0
    : writeRights(areaView, CONTROL_AT, fds);
  prepare(data, controlBytes, true);
  const flags = wait ? MSG.NOSIGNAL : SEND_NOWAIT;
  const lib = libc();
  for (;;) {
    const n = Number(lib.sendmsg(fd, hdrPointer, flags));
    if (n >= 0) return n;
    const code = errno();
    if (code === ERRNO.EINTR) continue;
    if (code === ERRNO.EAGAIN && !wait) return -1;
    throw systemError("sendmsg", code);
  }
}

/** One message of a batch for {@linkcode sendMessages}. */
export interface OutgoingMessage {
  /** The bytes. */
  readonly data: Uint8Array;
  /** The fds to pass with them; may be empty. */
  readonly fds: readonly number[];
}

/** The most messages one `sendmmsg` call carries. */
const BATCH_MAX = 64;
/** Control space for the fds of one batch; a batch ends where it is full. */
const BATCH_CONTROL = 16 * 1024;
// The batch area: the mmsghdr array, one iovec and one bounce slot per
// message, then the control space. Off-heap and stable, like `area`.
const BATCH_IOV_AT = BATCH_MAX * MMSGHDR.size;
const BATCH_BOUNCE_AT = BATCH_IOV_AT + BATCH_MAX * IOVEC.size;
const BATCH_CONTROL_AT = BATCH_BOUNCE_AT + BATCH_MAX * BOUNCE_SIZE;
let batch:
  | {
    view: DataView;
    bytes: Uint8Array;
    address: bigint;
    pointer: Deno.PointerValue;
  }
  | undefined;

function batchArea(): NonNullable<typeof batch> {
  if (batch !== undefined) return batch;
  const buffer = stableBuffer(BATCH_CONTROL_AT + BATCH_CONTROL);
  batch = {
    view: new DataView(buffer),
    bytes: new Uint8Array(buffer),
    address: addressOf(buffer),
    pointer: pointerOf(buffer),
  };
  return batch;
}

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
 * count; sending from it again reports why.
 * @throws The system error of the first message when it cannot be sent
 * (EMSGSIZE, EPIPE, EBADF, ...).
 */
export function sendMessages(
  fd: number,
  messages: readonly OutgoingMessage[],
  start: number,
): number {
  const { view, bytes, address, pointer } = batchArea();
  let count = 0;
  let control = 0;
  for (let i = start; i < messages.length && count < BATCH_MAX; i++) {
    const { data, fds } = messages[i];
    const space = fds.length === 0 ? 0 : cmsgSpace(fds.length * 4);
    // A batch always takes its first message; MAX_FDS fit the space.
    if (control + space > BATCH_CONTROL) break;
    const hdr = count * MMSGHDR.size + MMSGHDR.hdr;
    const iov = BATCH_IOV_AT + count * IOVEC.size;
    view.setBigUint64(hdr + MSGHDR.name, 0n, true);
    view.setUint32(hdr + MSGHDR.namelen, 0, true);
    view.setBigUint64(hdr + MSGHDR.iov, address + BigInt(iov), true);
    view.setBigUint64(hdr + MSGHDR.iovlen, 1n, true);
    if (space === 0) {
      view.setBigUint64(hdr + MSGHDR.control, 0n, true);
      view.setBigUint64(hdr + MSGHDR.controllen, 0n, true);
    } else {
      const at = BATCH_CONTROL_AT + control;
      writeRights(view, at, fds);
      view.setBigUint64(hdr + MSGHDR.control, address + BigInt(at), true);
      view.setBigUint64(hdr + MSGHDR.controllen, BigInt(space), true);
      control += space;
    }
    view.setInt32(hdr + MSGHDR.flags, 0, true);
    // Small views may live in V8's heap, where they can move: copied.
    if (data.byteLength <= BOUNCE_SIZE) {
      const slot = BATCH_BOUNCE_AT + count * BOUNCE_SIZE;
      for (let b = 0; b < data.byteLength; b++) bytes[slot + b] = data[b];
      view.setBigUint64(iov + IOVEC.base, address + BigInt(slot), true);
    } else {
      view.setBigUint64(iov + IOVEC.base, addressOf(data), true);
    }
    view.setBigUint64(iov + IOVEC.len, BigInt(data.byteLength), true);
    count++;
  }
  const lib = libc();
  for (;;) {
    const n = lib.sendmmsg(fd, pointer, count, SEND_NOWAIT);
    if (n >= 0) return n;
    const code = errno();
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
}

/** Closes fds that arrived but will not be handed out. */
export function closeAll(fds: readonly number[]): void {
  const lib = libc();
  for (const fd of fds) lib.close(fd);
}

/** What a control buffer holds. */
export interface ParsedControl {
  /** The SCM_RIGHTS fds found: this process holds each of them now. */
  fds: number[];
  /** What is wrong with the buffer, or `""` when nothing is. */
  malformed: string;
}

/**
 * Walks `length` bytes of control messages at `at` in `view` and collects
 * the SCM_RIGHTS fds, checking every length against the buffer: it never
 * reads outside `[at, at + length)`. A malformed buffer still reports the
 * fds found up to the fault, so that the caller can close them.
 */
export function parseControl(
  view: DataView,
  at: number,
  length: number,
): ParsedControl {
  const fds: number[] = [];
  let malformed = "";
  let offset = 0;
  while (offset + CMSGHDR.size <= length) {
    const lenBig = view.getBigUint64(at + offset + CMSGHDR.len, true);
    if (
      lenBig < BigInt(CMSGHDR.size) || lenBig > BigInt(length - offset)
    ) {
      malformed = `control message length ${lenBig} at offset ${offset}`;
      break;
    }
    const len = Number(lenBig);
    const level = view.getInt32(at + offset + CMSGHDR.level, true);
    const type = view.getInt32(at + offset + CMSGHDR.type, true);
    if (level === SOCK.SOL_SOCKET && type === SOCK.SCM_RIGHTS) {
      const payload = len - CMSGHDR.size;
      if (payload % 4 !== 0) {
        malformed = `SCM_RIGHTS payload of ${payload} bytes`;
        // The whole ints in it are still fds this process now holds.
      }
      for (let i = 0; i + 4 <= payload; i += 4) {
        const received = view.getInt32(at + offset + CMSGHDR.size + i, true);
        if (received >= 0) fds.push(received);
        else malformed = `negative fd ${received}`;
      }
      if (fds.length > MAX_FDS) malformed = `${fds.length} fds in one message`;
      if (malformed !== "") break;
    }
    offset += (len + 7) & ~7;
  }
  return { fds, malformed };
}

/**
 * Collects the SCM_RIGHTS fds of the control buffer. Throws (after closing
 * what was found) when the buffer is malformed.
 */
function collectFds(controlBytes: number): number[] {
  const { fds, malformed } = parseControl(areaView, CONTROL_AT, controlBytes);
  if (malformed !== "") {
    closeAll(fds);
    throw new TypeError(
      `Cannot receive on socket: malformed control data: ${malformed}` +
        (fds.length > 0
          ? `; the ${fds.length} fds that arrived were closed`
          : ""),
    );
  }
  return fds;
}

/**
 * Receives into `into`, taking up to `maxFds` fds (CLOEXEC from the start).
 * A truncated control message closes the fds that did arrive and throws.
 *
 * @param fd The socket.
 * @param into Where the data goes.
 * @param maxFds Room for this many fds, at most {@linkcode MAX_FDS}.
 * @param wait Whether the call may block (the `*Sync` forms).
 * @returns What arrived, or `null` when nothing is ready (never when `wait`).
 */
export function receiveMessage(
  fd: number,
  into: Uint8Array,
  maxFds: number,
  wait: boolean,
): Received | null {
  // Room for the fds allowed plus a credentials message, should the socket
  // carry one; a message with more fds than allowed is caught below either
  // way (truncated, or counted).
  const offered = Math.min(
    CONTROL_SIZE,
    cmsgSpace(Math.max(1, Math.min(maxFds, MAX_FDS)) * 4) + CREDENTIALS_SPACE,
  );
  const bounced = prepare(into, offered, false);
  const flags = MSG.CMSG_CLOEXEC | (wait ? 0 : MSG.DONTWAIT);
  const lib = libc();
  let n: number;
  for (;;) {
    n = Number(lib.recvmsg(fd, hdrPointer, flags));
    if (n >= 0) break;
    const code = errno();
    if (code === ERRNO.EINTR) continue;
    if (code === ERRNO.EAGAIN && !wait) return null;
    throw systemError("recvmsg", code);
  }
  if (n > into.byteLength) {
    throw new RangeError(
      `Cannot receive on socket: recvmsg reported ${n} bytes for a ${into.byteLength}-byte buffer`,
    );
  }
  if (bounced) {
    for (let i = 0; i < n; i++) into[i] = areaBytes[BOUNCE_AT + i];
  }
  const msgFlags = areaView.getInt32(HDR_AT + MSGHDR.flags, true);
  const controlLen = areaView.getUint32(HDR_AT + MSGHDR.controllen, true) +
    areaView.getUint32(HDR_AT + MSGHDR.controllen + 4, true) * 0x1_0000_0000;
  // The kernel never reports more control data than it was offered; if it
  // did, only the offered part is read.
  const fds = controlLen > 0 ? collectFds(Math.min(controlLen, offered)) : [];
  if (fds.length > maxFds || (msgFlags & MSG.CTRUNC) !== 0) {
    closeAll(fds);
    throw new RangeError(
      `Cannot receive on socket: the message carried more fds than the ${maxFds} allowed ` +
        `(control data truncated); the ${fds.length} fds that arrived were closed`,
    );
  }
  return { bytes: n, fds, flags: msgFlags };
}

/**
 * The size of the next datagram or packet without taking it (MSG_PEEK with
 * MSG_TRUNC reports the whole length), or -1 when none is queued. 0 means
 * an empty message or end of stream; {@linkcode readHangup} tells which.
 */
export function peekSize(fd: number, wait: boolean): number {
  const flags = MSG.PEEK | MSG.TRUNC | (wait ? 0 : MSG.DONTWAIT);
  const lib = libc();
  for (;;) {
    const n = Number(lib.recv(fd, empty, 0n, flags));
    if (n >= 0) return n;
    const code = errno();
    if (code === ERRNO.EINTR) continue;
    if (code === ERRNO.EAGAIN && !wait) return -1;
    throw systemError("recv", code);
  }
}

/** `poll` event bits. */
export const POLL = { IN: 0x001, RDHUP: 0x2000 } as const;

const pollBuf = new Uint8Array(new ArrayBuffer(64));
const pollView = new DataView(pollBuf.buffer);

/**
 * Which of `events` the fd reports right now: a sync `poll` with a zero
 * timeout (it never waits, so it is no second poller).
 */
export function pollNow(fd: number, events: number): number {
  pollView.setInt32(0, fd, true);
  pollView.setInt16(4, events, true);
  pollView.setInt16(6, 0, true);
  const lib = libc();
  for (;;) {
    const n = lib.poll(pollBuf, 1n, 0);
    if (n >= 0) break;
    const code = errno();
    if (code !== ERRNO.EINTR) throw systemError("poll", code);
  }
  return pollView.getInt16(6, true) & events;
}

/**
 * Whether the socket's receive side is shut down (the peer closed a stream
 * or seqpacket socket, or this side called `shutdown(SHUT_RD)`).
 */
export function readHangup(fd: number): boolean {
  return pollNow(fd, POLL.RDHUP) !== 0;
}

/**
 * Stream sockets: reads once without blocking (MSG_DONTWAIT). Bytes read,
 * 0 at end of stream, -1 when nothing is ready.
 */
export function recvNoWait(fd: number, into: Uint8Array): number {
  const lib = libc();
  for (;;) {
    const n = Number(
      lib.recv(fd, into, BigInt(into.byteLength), MSG.DONTWAIT),
    );
    if (n >= 0) return n;
    const code = errno();
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
  for (;;) {
    const n = Number(lib.recv(fd, into, BigInt(into.byteLength), 0));
    if (n >= 0) return n;
    const code = errno();
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
  for (;;) {
    const n = Number(
      lib.send(fd, from, BigInt(from.byteLength), SEND_NOWAIT),
    );
    if (n >= 0) return n;
    const code = errno();
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
  for (;;) {
    const n = Number(
      lib.send(fd, from, BigInt(from.byteLength), MSG.NOSIGNAL),
    );
    if (n >= 0) return n;
    const code = errno();
    if (code !== ERRNO.EINTR) throw systemError("send", code);
  }
}

/** Stream sockets: a blocking write of every byte. */
export function sendAllBlocking(fd: number, from: Uint8Array): void {
  const lib = libc();
  let done = 0;
  while (done < from.byteLength) {
    const part = from.subarray(done);
    const n = Number(lib.send(fd, part, BigInt(part.byteLength), MSG.NOSIGNAL));
    if (n >= 0) {
      done += n;
      continue;
    }
    const code = errno();
    if (code !== ERRNO.EINTR) throw systemError("send", code);
  }
}
