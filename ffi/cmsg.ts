/**
 * Control messages of unix sockets, in one place: writing SCM_RIGHTS, and
 * the one strict parser of what `recvmsg` returns (SCM_RIGHTS,
 * SCM_CREDENTIALS), with the rule that every fd which arrived is either
 * handed out or closed.
 *
 * Control data comes from the kernel, but a socket may have been set up by
 * a peer (`SO_PASSCRED`, `SO_PASSSEC`, `SO_PASSPIDFD` are options of the
 * socket, not of the call), so nothing in it is believed unchecked: every
 * `cmsg_len` is checked against the control length before anything behind
 * it is read, payloads must have the size of their kind, and a kind a unix
 * socket never carries makes the whole buffer malformed. The kinds that
 * carry only data about the message (a security label, receive
 * timestamps, the bytes still queued: `SO_TIMESTAMP*` and `SO_INQ` are
 * options of the socket too) are skipped.
 *
 * @module
 */

import { libc } from "./libc.ts";
import { CMSGHDR, cmsgLen, cmsgSpace, MSG, SOCK, UCRED } from "./layout.ts";

/** Linux's limit on fds in one SCM_RIGHTS message (`SCM_MAX_FD`). */
export const MAX_FDS = 253;

/** Control space for one `struct ucred`. */
export const CREDENTIALS_SPACE: number = cmsgSpace(UCRED.size);

/**
 * Writes one SCM_RIGHTS control message carrying `fds` at `at` in `view`,
 * padding included.
 *
 * @param view The control buffer's memory.
 * @param at Where the control message starts (8-aligned).
 * @param fds The fds to pass, at least one, at most {@linkcode MAX_FDS}.
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
    view.setInt32(at + CMSGHDR.data + i * 4, fds[i], true);
  }
  // An odd fd count leaves 4 bytes of padding up to CMSG_SPACE.
  for (let i = len; i < space; i += 4) view.setInt32(at + i, 0, true);
  return space;
}

/** The sender's credentials from an SCM_CREDENTIALS message. */
export interface Credentials {
  /** Its process id. */
  pid: number;
  /** Its user id. */
  uid: number;
  /** Its group id. */
  gid: number;
}

/** What a control buffer holds. */
export interface ParsedControl {
  /**
   * The SCM_RIGHTS fds, in order: this process holds each of them now. On
   * a malformed buffer, those found up to the fault.
   */
  fds: number[];
  /**
   * Fds the kernel installed that nobody asked for (an SCM_PIDFD of a
   * socket a peer set up with `SO_PASSPIDFD`): to be closed.
   */
  stray: number[];
  /** SCM_CREDENTIALS, when the message carried them. */
  credentials: Credentials | undefined;
  /** What is wrong with the buffer, or `""` when nothing is. */
  malformed: string;
}

/** Reads a `size_t` field as a number, or -1 when it is 2^32 or more. */
function readSize(view: DataView, at: number): number {
  if (view.getUint32(at + 4, true) !== 0) return -1;
  return view.getUint32(at, true);
}

/**
 * Walks `length` bytes of control messages at `at` in `view`. It never
 * reads outside `[at, at + length)`, and never closes anything: a
 * malformed buffer still reports the fds found up to the fault, for the
 * caller to close ({@linkcode receivedFds} does).
 *
 * Strict: each `cmsg_len` must cover its header and fit the bytes left;
 * messages start 8-aligned (only the last may lack its padding); SCM_RIGHTS
 * carries whole non-negative ints, at most {@linkcode MAX_FDS} in all;
 * SCM_CREDENTIALS exactly one `struct ucred`; SCM_PIDFD exactly one fd;
 * SCM_SECURITY (a label), the receive timestamps (SCM_TIMESTAMP,
 * SCM_TIMESTAMPNS, SCM_TIMESTAMPING, old and new layouts) and SCM_INQ (the
 * bytes still queued) are skipped; any
 * other level or type, or bytes after the last message too few for a
 * header, make the buffer malformed.
 *
 * @param view The memory holding the control buffer.
 * @param at Where it starts (8-aligned).
 * @param length Its length: `msg_controllen` as `recvmsg` reported it.
 * @returns The fds, credentials and the fault, if any.
 */
export function parseControl(
  view: DataView,
  at: number,
  length: number,
): ParsedControl {
  const result: ParsedControl = {
    fds: [],
    stray: [],
    credentials: undefined,
    malformed: "",
  };
  let offset = 0;
  while (offset < length) {
    const left = length - offset;
    if (left < CMSGHDR.size) {
      result.malformed =
        `${left} bytes after the last control message, too few for a header`;
      break;
    }
    const start = at + offset;
    const len = readSize(view, start + CMSGHDR.len);
    if (len < CMSGHDR.size || len > left) {
      const shown = len === -1
        ? String(view.getBigUint64(start + CMSGHDR.len, true))
        : String(len);
      result.malformed =
        `control message length ${shown} at offset ${offset} (${left} bytes left)`;
      break;
    }
    const fault = parseOne(view, start, len, result);
    if (fault !== "") {
      result.malformed = fault;
      break;
    }
    offset += (len + 7) & ~7;
  }
  return result;
}

/** Takes one control message whose length was checked; returns a fault. */
function parseOne(
  view: DataView,
  start: number,
  len: number,
  into: ParsedControl,
): string {
  const level = view.getInt32(start + CMSGHDR.level, true);
  const type = view.getInt32(start + CMSGHDR.type, true);
  const data = start + CMSGHDR.data;
  const payload = len - CMSGHDR.data;
  if (level !== SOCK.SOL_SOCKET) {
    return `control message of level ${level} (type ${type}), which a unix socket never carries`;
  }
  if (type === SOCK.SCM_RIGHTS) {
    let fault = payload % 4 === 0
      ? ""
      : `SCM_RIGHTS payload of ${payload} bytes`;
    // Even in a faulty message, the whole ints are fds this process holds.
    for (let i = 0; i + 4 <= payload; i += 4) {
      const fd = view.getInt32(data + i, true);
      if (fd >= 0) into.fds.push(fd);
      else fault = `negative fd ${fd}`;
    }
    if (into.fds.length > MAX_FDS) {
      fault = `${into.fds.length} fds in one message`;
    }
    return fault;
  }
  if (type === SOCK.SCM_CREDENTIALS) {
    if (payload !== UCRED.size) {
      return `SCM_CREDENTIALS payload of ${payload} bytes, not ${UCRED.size}`;
    }
    into.credentials ??= {
      pid: view.getInt32(data + UCRED.pid, true),
      uid: view.getUint32(data + UCRED.uid, true),
      gid: view.getUint32(data + UCRED.gid, true),
    };
    return "";
  }
  if (type === SOCK.SCM_PIDFD) {
    if (payload !== 4) return `SCM_PIDFD payload of ${payload} bytes, not 4`;
    const fd = view.getInt32(data, true);
    if (fd < 0) return `negative pidfd ${fd}`;
    into.stray.push(fd);
    return "";
  }
  if (type === SOCK.SCM_SECURITY || DATA_ONLY.has(type)) return "";
  return `control message of type ${type}, which a unix socket never carries`;
}

/**
 * Receive timestamps, which a datagram or seqpacket socket carries once
 * its `SO_TIMESTAMP*` option is set, and the bytes still queued, which a
 * stream socket carries once `SO_INQ` is set (a peer that handed the socket
 * over may have set them): data about the message, no fds.
 */
const DATA_ONLY: ReadonlySet<number> = new Set([
  SOCK.SCM_INQ,
  SOCK.SCM_TIMESTAMP,
  SOCK.SCM_TIMESTAMPNS,
  SOCK.SCM_TIMESTAMPING,
  SOCK.SO_TIMESTAMP_NEW,
  SOCK.SO_TIMESTAMPNS_NEW,
  SOCK.SO_TIMESTAMPING_NEW,
]);

/** Closes fds that arrived but will not be handed out. */
export function closeAll(fds: readonly number[]): void {
  const lib = libc();
  for (const fd of fds) lib.close(fd);
}

/**
 * The SCM_RIGHTS fds of a received message, checked: the one place that
 * decides whether what arrived is handed out. Any stray fd is closed. When
 * the control data is malformed, was truncated (`MSG_CTRUNC`), or carries
 * more than `maxFds`, every fd that arrived is closed and it throws.
 *
 * @param view The memory holding the control buffer.
 * @param at Where it starts.
 * @param reported `msg_controllen` as `recvmsg` set it.
 * @param offered The control bytes offered to `recvmsg`.
 * @param flags `msg_flags` as `recvmsg` set them.
 * @param maxFds The most fds the caller takes.
 * @returns The fds, now owned by the caller.
 * @throws {TypeError} When the control data is malformed.
 * @throws {RangeError} When it was truncated or carries more than
 * `maxFds`.
 */
export function receivedFds(
  view: DataView,
  at: number,
  reported: number,
  offered: number,
  flags: number,
  maxFds: number,
): number[] {
  // The kernel never reports more than it was offered; if it did, only the
  // offered part is read, and the buffer counts as malformed.
  const parsed = parseControl(view, at, Math.min(reported, offered));
  if (parsed.stray.length > 0) closeAll(parsed.stray);
  const { fds } = parsed;
  let malformed = parsed.malformed;
  if (malformed === "" && reported > offered) {
    malformed = `control length ${reported} beyond the ${offered} offered`;
  }
  if (malformed !== "") {
    closeAll(fds);
    throw new TypeError(
      `Cannot receive on socket: malformed control data: ${malformed}` +
        (fds.length > 0
          ? `; the ${fds.length} fds that arrived were closed`
          : ""),
    );
  }
  if (fds.length > maxFds || (flags & MSG.CTRUNC) !== 0) {
    closeAll(fds);
    // Room for maxFds that was not filled: the kernel could not install
    // them all (this process's fd table is full), or other control data
    // took the room.
    const why = fds.length < maxFds
      ? "not all of the message's fds could be received (this process may be out of fds: EMFILE)"
      : `the message carried more fds than the ${maxFds} allowed`;
    throw new RangeError(
      `Cannot receive on socket: ${why} ` +
        `(control data truncated); the ${fds.length} fds that arrived were closed`,
    );
  }
  return fds;
}
