/**
 * What is at the other end of a unix socket, from the kernel's socket
 * diagnostics (`NETLINK_SOCK_DIAG` with `UDIAG_SHOW_PEER`, what `ss -x`
 * reads): the inode of the peer socket, where a socket no process holds (a
 * connection waiting in a listener's queue, or one closed) has inode 0.
 *
 * Everything read back from the kernel is checked against the bytes that
 * came: a reply of another shape is "cannot tell", never a guess.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { SOCK } from "./ffi/layout.ts";

/** `AF_NETLINK`, `SOCK_RAW`, `NETLINK_SOCK_DIAG`. */
const AF_NETLINK = 16;
const SOCK_RAW = 3;
const NETLINK_SOCK_DIAG = 4;
/** `SOCK_DIAG_BY_FAMILY`, `NLM_F_REQUEST`, `NLMSG_ERROR`. */
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1;
const NLMSG_ERROR = 2;
/** `struct nlmsghdr`, `struct unix_diag_req`, `struct unix_diag_msg`. */
const NLMSG_HEADER = 16;
const UNIX_DIAG_REQ = 24;
const UNIX_DIAG_MSG = 16;
/** `UDIAG_SHOW_PEER` asks for the `UNIX_DIAG_PEER` attribute. */
const UDIAG_SHOW_PEER = 4;
const UNIX_DIAG_PEER = 2;
/** `ENOENT`, the error of a lookup that found no such socket. */
const ENOENT = 2;
/** `MSG_DONTWAIT`: the kernel answers within the request; never wait. */
const MSG_DONTWAIT = 0x40;
/** Room for the reply: a header, the message and a few attributes. */
const REPLY_ROOM = 1024;

/** What the kernel says of a unix socket's other end. */
export type PeerLookup =
  /** The socket's peer, by inode: 0 when no process holds it. */
  | { kind: "peer"; ino: number }
  /** The socket has no peer: a listener, or one never connected. */
  | { kind: "none" }
  /** No such socket here: one of another network namespace. */
  | { kind: "absent" }
  /**
   * The kernel cannot tell: no socket diagnostics, netlink refused by a
   * sandbox, or a reply of another shape.
   */
  | { kind: "unknown" };

const UNKNOWN: PeerLookup = Object.freeze({ kind: "unknown" });
const NONE: PeerLookup = Object.freeze({ kind: "none" });
const ABSENT: PeerLookup = Object.freeze({ kind: "absent" });

/** What is at the other end of the unix socket whose inode is `ino`. */
export function peerOf(ino: number): PeerLookup {
  const lib = libc();
  const nl = lib.socket(AF_NETLINK, SOCK_RAW | SOCK.CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl === -1) return UNKNOWN;
  try {
    const request = new Uint8Array(NLMSG_HEADER + UNIX_DIAG_REQ);
    const out = new DataView(request.buffer);
    out.setUint32(0, request.byteLength, true);
    out.setUint16(4, SOCK_DIAG_BY_FAMILY, true);
    out.setUint16(6, NLM_F_REQUEST, true);
    out.setUint32(8, 1, true);
    const req = NLMSG_HEADER;
    out.setUint8(req, SOCK.AF_UNIX);
    // Every state; the socket by its inode; no cookie to match.
    out.setUint32(req + 4, 0xffffffff, true);
    out.setUint32(req + 8, ino, true);
    out.setUint32(req + 12, UDIAG_SHOW_PEER, true);
    out.setUint32(req + 16, 0xffffffff, true);
    out.setUint32(req + 20, 0xffffffff, true);
    const sent = Number(
      lib.send(nl, request, BigInt(request.byteLength), MSG_DONTWAIT),
    );
    if (sent !== request.byteLength) return UNKNOWN;
    const reply = new Uint8Array(REPLY_ROOM);
    const got = Number(
      lib.recv(nl, reply, BigInt(reply.byteLength), MSG_DONTWAIT),
    );
    return parseReply(reply, got, ino);
  } finally {
    lib.close(nl);
  }
}

/** What a `SOCK_DIAG_BY_FAMILY` reply of `got` bytes says. */
function parseReply(
  reply: Uint8Array,
  got: number,
  ino: number,
): PeerLookup {
  if (got < NLMSG_HEADER + 4) return UNKNOWN;
  const view = new DataView(reply.buffer, reply.byteOffset, got);
  const length = view.getUint32(0, true);
  const type = view.getUint16(4, true);
  if (length > got) return UNKNOWN;
  if (type === NLMSG_ERROR) {
    // A negative errno after the header: ENOENT, no socket of that inode
    // in this network namespace.
    return length >= NLMSG_HEADER + 4 &&
        view.getInt32(NLMSG_HEADER, true) === -ENOENT
      ? ABSENT
      : UNKNOWN;
  }
  if (type !== SOCK_DIAG_BY_FAMILY) return UNKNOWN;
  if (length < NLMSG_HEADER + UNIX_DIAG_MSG) return UNKNOWN;
  const msg = NLMSG_HEADER;
  if (view.getUint8(msg) !== SOCK.AF_UNIX) return UNKNOWN;
  if (view.getUint32(msg + 4, true) !== ino) return UNKNOWN;
  // Attributes: a u16 length (header included) and a u16 type each, every
  // one starting 4-aligned.
  let at = msg + UNIX_DIAG_MSG;
  while (at + 4 <= length) {
    const attrLength = view.getUint16(at, true);
    const attrType = view.getUint16(at + 2, true);
    if (attrLength < 4 || at + attrLength > length) return UNKNOWN;
    if (attrType === UNIX_DIAG_PEER) {
      return attrLength >= 8
        ? { kind: "peer", ino: view.getUint32(at + 4, true) }
        : UNKNOWN;
    }
    at += (attrLength + 3) & ~3;
  }
  return NONE;
}
