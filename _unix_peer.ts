/**
 * What is at the other end of a unix socket: the inode of the peer socket,
 * from the kernel's socket diagnostics (`NETLINK_SOCK_DIAG` with
 * `UDIAG_SHOW_PEER`, what `ss -x` reads). A socket no process holds (a
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
/** `MSG_DONTWAIT`: the kernel answers within the request; never wait. */
const MSG_DONTWAIT = 0x40;
/** Room for the reply: a header, the message and a few attributes. */
const REPLY_ROOM = 1024;

/**
 * The inode of the socket at the other end of the unix socket whose own
 * inode is `ino`, or `undefined` when the kernel cannot tell (no peer, no
 * socket diagnostics in this kernel, netlink refused by a sandbox, or a
 * reply of another shape).
 */
export function peerInode(ino: number): number | undefined {
  const lib = libc();
  const nl = lib.socket(AF_NETLINK, SOCK_RAW | SOCK.CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl === -1) return undefined;
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
    if (sent !== request.byteLength) return undefined;
    const reply = new Uint8Array(REPLY_ROOM);
    const got = Number(
      lib.recv(nl, reply, BigInt(reply.byteLength), MSG_DONTWAIT),
    );
    return parseReply(reply, got, ino);
  } finally {
    lib.close(nl);
  }
}

/** The peer inode in a `SOCK_DIAG_BY_FAMILY` reply of `got` bytes. */
function parseReply(
  reply: Uint8Array,
  got: number,
  ino: number,
): number | undefined {
  if (got < NLMSG_HEADER + UNIX_DIAG_MSG) return undefined;
  const view = new DataView(reply.buffer, reply.byteOffset, got);
  const length = view.getUint32(0, true);
  const type = view.getUint16(4, true);
  if (type === NLMSG_ERROR || type !== SOCK_DIAG_BY_FAMILY) return undefined;
  if (length < NLMSG_HEADER + UNIX_DIAG_MSG || length > got) return undefined;
  const msg = NLMSG_HEADER;
  if (view.getUint8(msg) !== SOCK.AF_UNIX) return undefined;
  if (view.getUint32(msg + 4, true) !== ino) return undefined;
  // Attributes: a u16 length (header included) and a u16 type each, every
  // one starting 4-aligned.
  let at = msg + UNIX_DIAG_MSG;
  while (at + 4 <= length) {
    const attrLength = view.getUint16(at, true);
    const attrType = view.getUint16(at + 2, true);
    if (attrLength < 4 || at + attrLength > length) return undefined;
    if (attrType === UNIX_DIAG_PEER) {
      return attrLength >= 8 ? view.getUint32(at + 4, true) : undefined;
    }
    at += (attrLength + 3) & ~3;
  }
  return undefined;
}
