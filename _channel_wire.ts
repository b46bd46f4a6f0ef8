/**
 * The wire of typed channels: one `SOCK_SEQPACKET` connection per sender,
 * so every frame arrives whole or not at all (a sender killed mid-send
 * leaves no partial frame), with fds attached to the frame they belong to.
 *
 * A frame starts with a 16-byte header:
 * ```
 * 0 type u8 | 1 version u8 (1) | 2 flags u16 (0) | 4 a u32 | 8 b u32 | 12 c u32
 * ```
 * - MESSAGE: a = fds of the value, b = head length, c = tree length; the
 *   head and the blobs follow in the same packet.
 * - MESSAGE_MEMFD: as MESSAGE, but head and blobs are in a sealed memfd
 *   attached as the last fd (for frames above {@linkcode INLINE_MAX}).
 * - BYTES / BYTES_MEMFD: raw bytes after the header, or in a sealed memfd.
 * - ACK (receiver to sender): a = messages taken, returning that many
 *   credits.
 * - ADD_PEER: a = capacity, b = mode; one fd, a new connection that a
 *   cloned sender holds the other end of.
 * - HELLO (first frame of a connection to a named server, and only
 *   there): a = capacity, b = mode.
 * - BATCH: a = message count; no fds. Then `a` records, each a
 *   u32 length `L` and `L` bytes that are a whole MESSAGE (without fds) or
 *   BYTES frame, header included. Messages sent in one turn travel
 *   together, in order, in one packet.
 * - REFUSED (receiver to a new sender's connection, before closing it):
 *   a = why ({@linkcode REFUSAL}).
 *
 * Everything here is synchronous on the JS thread and never waits:
 * sends use `MSG_DONTWAIT`, memfd reads and writes never block.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { check, ERRNO, ioErrno, systemError } from "./ffi/errors.ts";
import {
  cmsgSpace,
  F,
  FS_MAGIC,
  MMAP,
  MSG,
  S,
  SEAL,
  SEEK,
  SOCK,
  STAT,
  STATFS,
} from "./ffi/layout.ts";
import { addressOf, cstr } from "./ffi/mem.ts";
import { MAX_FDS, writeRights } from "./ffi/cmsg.ts";
import { MessageArea } from "./ffi/msghdr.ts";
import { invalid, overMaxMessage } from "./_channel_error.ts";
import { encodeAddress, randomName } from "./_unix_addr.ts";
import { socketOption } from "./_socket_options.ts";

/** Frame types. */
export const FRAME = {
  MESSAGE: 1,
  MESSAGE_MEMFD: 2,
  BYTES: 3,
  BYTES_MEMFD: 4,
  ACK: 5,
  ADD_PEER: 6,
  HELLO: 7,
  BATCH: 8,
  REFUSED: 9,
} as const;

/** Why a receiver refused a new sender (the `a` of a REFUSED frame). */
export const REFUSAL = {
  /** The receiver holds as many senders as it takes. */
  FULL: 1,
  /** The sender it was cloned from has added as many as one may. */
  PER_SENDER: 2,
  /**
   * The receivers of its thread hold as many connections that peers put
   * there as they take.
   */
  THREAD_FULL: 3,
} as const;

/** Bytes in front of each record of a BATCH: its length. */
export const RECORD_PREFIX = 4;

/**
 * The wire version in every frame header: 2 since values number their
 * endpoints as objects and carry a `DOMException`'s name (a peer of version
 * 1 would read such a value differently, so its frames are refused).
 */
export const VERSION = 2;
/** Size of the frame header. */
export const HEADER = 16;
/** The largest packet; bigger frames travel in a memfd. */
export const INLINE_MAX = 64 * 1024;
export { MAX_FDS } from "./ffi/cmsg.ts";

const ALL_SEALS = SEAL.SHRINK | SEAL.GROW | SEAL.WRITE | SEAL.SEAL;

// Parts of at most this many bytes are copied into the staging area (V8
// may keep them in its moving heap, and a run of small parts costs one
// iovec instead of many).
const SMALL_PART = 256;
const MAX_IOV = 64;
// One area: header, iovecs, staging for small parts (and for small memfd
// reads and writes), and the control buffer. Made on first use, since
// taking a buffer's address needs FFI permission, which importing the
// module must not.
let wire: MessageArea | undefined;
let controlAddress = 0n;

function wireArea(): MessageArea {
  if (wire !== undefined) return wire;
  const area = new MessageArea({
    iovecs: MAX_IOV,
    stage: INLINE_MAX + SMALL_PART,
    control: cmsgSpace(MAX_FDS * 4),
  });
  controlAddress = area.address(area.controlAt);
  return wire = area;
}

/**
 * Lays out `parts` as iovecs after the `staged` bytes already at the start
 * of the staging area: small parts are copied into the staging area (all
 * of them when there are more than the iovecs), larger ones are referenced
 * where they are. Returns the iovec count.
 */
function gather(
  area: MessageArea,
  parts: readonly Uint8Array[],
  staged: number,
): number {
  const { bytes, stageAt, stageSize, stageAddress } = area;
  let count = 0;
  let stage = staged;
  let runStart = staged > 0 ? 0 : -1;
  const pack = parts.length + (staged > 0 ? 1 : 0) > MAX_IOV;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i];
    const n = part.byteLength;
    if (n === 0) continue;
    if (pack || n <= SMALL_PART) {
      if (stage + n > stageSize) {
        throw new RangeError("Cannot send on channel: frame too large");
      }
      bytes.set(part, stageAt + stage);
      if (runStart === -1) runStart = stage;
      stage += n;
      continue;
    }
    if (runStart !== -1) {
      area.setIovec(count++, stageAddress + BigInt(runStart), stage - runStart);
      runStart = -1;
    }
    area.setIovec(count++, addressOf(part), n);
  }
  if (runStart !== -1) {
    area.setIovec(count++, stageAddress + BigInt(runStart), stage - runStart);
  }
  return count;
}

/**
 * Sends one packet made of `parts` with `fds` attached.
 *
 * @returns `true` when sent, `false` when the socket is full.
 * @throws The system error of any other failure (EPIPE, ...).
 */
export function sendFrame(
  fd: number,
  parts: readonly Uint8Array[],
  fds: readonly number[],
): boolean {
  const area = wireArea();
  return sendArea(fd, area, gather(area, parts, 0), fds);
}

/**
 * Sends one frame of header `type`, `a`, `b`, `c` and then `body`, as
 * {@linkcode sendFrame} does; the header is written where it goes (a
 * message's every send would otherwise make one and copy it there).
 */
export function sendHeaded(
  fd: number,
  type: number,
  a: number,
  b: number,
  c: number,
  body: readonly Uint8Array[],
  fds: readonly number[],
): boolean {
  const area = wireArea();
  writeHeader(area.bytes, area.stageAt, type, a, b, c);
  return sendArea(fd, area, gather(area, body, HEADER), fds);
}

/** Sends the `iovs` iovecs laid out in `area`, with `fds`. */
function sendArea(
  fd: number,
  area: MessageArea,
  iovs: number,
  fds: readonly number[],
): boolean {
  const space = fds.length > 0
    ? writeRights(area.view, area.controlAt, fds)
    : 0;
  area.setHeader(0, 0, iovs, controlAddress, space);
  const lib = libc();
  let failed = 0;
  for (;;) {
    const n = Number(
      lib.sendmsg(fd, area.pointer, MSG.DONTWAIT | MSG.NOSIGNAL),
    );
    if (n >= 0) return true;
    const code = ioErrno(failed++);
    if (code === ERRNO.EINTR) continue;
    if (code === ERRNO.EAGAIN) return false;
    throw systemError("sendmsg", code);
  }
}

/** A frame header. */
export function header(
  type: number,
  a = 0,
  b = 0,
  c = 0,
): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(HEADER);
  writeHeader(out, 0, type, a, b, c);
  return out;
}

/** Writes a frame header at `out[at]`. */
export function writeHeader(
  out: Uint8Array,
  at: number,
  type: number,
  a: number,
  b: number,
  c: number,
): void {
  out[at] = type;
  out[at + 1] = VERSION;
  out[at + 2] = 0;
  out[at + 3] = 0;
  putU32(out, at + 4, a);
  putU32(out, at + 8, b);
  putU32(out, at + 12, c);
}

/** Writes a little-endian u32 at `out[at]`. */
export function putU32(out: Uint8Array, at: number, value: number): void {
  out[at] = value & 0xff;
  out[at + 1] = (value >>> 8) & 0xff;
  out[at + 2] = (value >>> 16) & 0xff;
  out[at + 3] = (value >>> 24) & 0xff;
}

/** Reads a little-endian u32 at `buf[at]` (in bounds). */
export function getU32(buf: Uint8Array, at: number): number {
  return (buf[at] | (buf[at + 1] << 8) | (buf[at + 2] << 16) |
    (buf[at + 3] << 24)) >>> 0;
}

/**
 * Checks the records of a BATCH in `buf[start, end)`: exactly `count`
 * records, each a whole MESSAGE without fds or BYTES frame of this
 * version, that fill the range. Throws `InvalidData` otherwise.
 */
export function checkBatch(
  buf: Uint8Array,
  start: number,
  end: number,
  count: number,
): void {
  if (count < 1 || count > (end - start) / (RECORD_PREFIX + HEADER)) {
    throw invalid(`a batch of ${count} messages in ${end - start} bytes`);
  }
  let at = start;
  for (let i = 0; i < count; i++) {
    if (at + RECORD_PREFIX + HEADER > end) throw invalid("batch cut short");
    const length = getU32(buf, at);
    const inner = at + RECORD_PREFIX;
    if (length < HEADER || length > end - inner) {
      throw invalid(`batch record of ${length} bytes`);
    }
    const type = buf[inner];
    if (buf[inner + 1] !== VERSION) {
      throw invalid(`batch record of wire version ${buf[inner + 1]}`);
    }
    if (type === FRAME.MESSAGE) {
      if (getU32(buf, inner + 4) !== 0) {
        throw invalid("a batched message carries no fds");
      }
    } else if (type !== FRAME.BYTES) {
      throw invalid(`frame type ${type} inside a batch`);
    }
    at = inner + length;
  }
  if (at !== end) throw invalid("bytes after the last batch record");
}

const stat = new Uint8Array(new ArrayBuffer(STAT.size + 64));
const statView = new DataView(stat.buffer);

/**
 * What is wrong with `fd` as a channel connection (a unix seqpacket
 * socket), for an error message: `"a directory"`, `"a stream socket"`,
 * ...; `undefined` when it is one.
 */
export function seqpacketProblem(fd: number): string | undefined {
  if (libc().fstat(fd, stat) === -1) return "not an open fd";
  const mode = statView.getUint32(STAT.mode, true) & S.IFMT;
  if (mode !== S.IFSOCK) {
    return FILE_KINDS.get(mode) ?? `a file of type 0o${mode.toString(8)}`;
  }
  const domain = socketOption(fd, SOCK.SO_DOMAIN) ?? -1;
  if (domain !== SOCK.AF_UNIX) {
    return domain === SOCK.AF_INET
      ? "an IPv4 socket"
      : domain === SOCK.AF_INET6
      ? "an IPv6 socket"
      : `a socket of address family ${domain}`;
  }
  const type = socketOption(fd, SOCK.SO_TYPE) ?? -1;
  if (type !== SOCK.SEQPACKET) {
    return type === SOCK.STREAM
      ? "a unix stream socket"
      : type === SOCK.DGRAM
      ? "a unix datagram socket"
      : `a unix socket of type ${type}`;
  }
  return undefined;
}

const FILE_KINDS = new Map<number, string>([
  [S.IFDIR, "a directory"],
  [S.IFREG, "a regular file or memfd"],
  [S.IFIFO, "a pipe or FIFO"],
  [S.IFCHR, "a character device"],
  [0, "an anonymous inode (an eventfd, epoll fd, timer fd, ...)"],
  [S.IFBLK, "a block device"],
  [S.IFLNK, "a symbolic link"],
]);

/** The identity of an open socket (device and inode), to tell duplicates. */
export function socketIdentity(fd: number): string {
  check("fstat", libc().fstat(fd, stat));
  return statIdentity();
}

/** Device and inode of the file the last `fstat` into `stat` described. */
function statIdentity(): string {
  return `${statView.getBigUint64(STAT.dev, true)}:${
    statView.getBigUint64(STAT.ino, true)
  }`;
}

/**
 * Writes `parts` into a new memfd, straight from their buffers, and seals
 * it against every change: the receiver can trust its size and content.
 *
 * @returns The memfd (CLOEXEC).
 */
export function writeMemfd(parts: readonly Uint8Array[]): number {
  const lib = libc();
  const fd = check(
    "memfd_create",
    lib.memfd_create(
      cstr("conduit-channel-frame"),
      MMAP.MFD_CLOEXEC | MMAP.MFD_ALLOW_SEALING,
    ),
  );
  try {
    let offset = 0;
    for (const part of parts) {
      let done = 0;
      while (done < part.byteLength) {
        const rest = part.subarray(done);
        const n = positioned("pwritev2", fd, rest, offset, true);
        done += n;
        offset += n;
      }
    }
    check("fcntl(F_ADD_SEALS)", lib.fcntl(fd, F.ADD_SEALS, ALL_SEALS));
    return fd;
  } catch (error) {
    lib.close(fd);
    throw error;
  }
}

/**
 * Checks that a received fd is a sealed memfd of a sane size and returns
 * that size.
 */
export function memfdSize(fd: number, max: number): number {
  const lib = libc();
  const seals = lib.fcntl(fd, F.GET_SEALS, 0);
  if (
    seals === -1 || (seals & (SEAL.SHRINK | SEAL.GROW | SEAL.WRITE)) !==
      (SEAL.SHRINK | SEAL.GROW | SEAL.WRITE)
  ) {
    throw invalid("a large frame must come in a sealed memfd");
  }
  check("fstat", lib.fstat(fd, stat));
  if ((statView.getUint32(STAT.mode, true) & S.IFMT) !== S.IFREG) {
    throw invalid("a large frame must come in a memfd");
  }
  const size = Number(statView.getBigInt64(STAT.fsize, true));
  const identity = statIdentity();
  if (size < 0) throw invalid("a memfd of negative size");
  if (size > max) throw overMaxMessage(size, max);
  // A sender writes a fresh memfd whole for each message (writeMemfd). A
  // hole reads as zeros that nobody paid for, and so does a page of a
  // hugetlbfs memfd never written (which `SEEK_HOLE` does not see): a few
  // bytes of frame would make this process allocate and read up to `max`
  // bytes of them. Only tmpfs memfds are taken, with no hole (a page
  // swapped out is still data).
  const fs = new BigInt64Array(STATFS.size / 8);
  check("fstatfs", lib.fstatfs(fd, fs));
  if (fs[STATFS.type / 8] !== BigInt(FS_MAGIC.TMPFS)) {
    throw invalid("a large frame must come in a memfd of tmpfs");
  }
  if (size > 0 && Number(lib.lseek(fd, 0n, SEEK.HOLE)) !== size) {
    throw invalid("a large frame's memfd has holes (unwritten bytes)");
  }
  // One memfd sent again and again would cost its sender the memory once
  // and this process a read of it each time.
  if (recentMemfds.has(identity)) {
    throw invalid(
      "a large frame's memfd came before (each message comes in a memfd of its own)",
    );
  }
  recentMemfds.add(identity);
  if (recentMemfds.size > RECENT_MEMFDS) {
    recentMemfds.delete(recentMemfds.values().next().value!);
  }
  return size;
}

/**
 * How many memfds of large frames this thread remembers, to refuse one
 * that comes again: a peer that cycles through more must have written as
 * many, each at most `maxMessageBytes`.
 */
const RECENT_MEMFDS = 256;
/** The identities (device and inode) of the last memfds taken, oldest first. */
const recentMemfds = new Set<string>();

/** Reads exactly `into.byteLength` bytes at `offset` of a memfd. */
export function preadAll(fd: number, into: Uint8Array, offset: number): void {
  let done = 0;
  while (done < into.byteLength) {
    const n = positioned(
      "preadv2",
      fd,
      into.subarray(done),
      offset + done,
      false,
    );
    if (n === 0) throw invalid("memfd shorter than its frame says");
    done += n;
  }
}

/**
 * One `pwritev2`/`preadv2` at `offset` (flags 0: a memfd never blocks).
 * Views of at most 256 bytes go through the staging area.
 */
function positioned(
  name: string,
  fd: number,
  part: Uint8Array,
  offset: number,
  write: boolean,
): number {
  const n = Math.min(part.byteLength, 1 << 30);
  const small = n <= SMALL_PART;
  const area = wireArea();
  const { bytes, stageAt } = area;
  if (small && write) bytes.set(part.subarray(0, n), stageAt);
  area.setIovec(0, small ? area.stageAddress : addressOf(part), n);
  const lib = libc();
  let failed = 0;
  for (;;) {
    const result = Number(
      write
        ? lib.pwritev2(fd, area.iovPointer, 1, BigInt(offset), 0)
        : lib.preadv2(fd, area.iovPointer, 1, BigInt(offset), 0),
    );
    if (result >= 0) {
      if (small && !write) {
        part.set(bytes.subarray(stageAt, stageAt + result));
      }
      return result;
    }
    const code = ioErrno(failed++);
    if (code !== ERRNO.EINTR) {
      throw systemError(name, code, "channel frame memfd");
    }
  }
}

/**
 * Marks a socket as a channel end by binding it to an abstract name, so
 * that `fromFd()` in another process can tell it from a plain socket:
 * `conduit-ch/<role>/<mode>/<capacity>/<random>`.
 */
export function markSocket(
  fd: number,
  role: "s" | "r",
  mode: number,
  capacity: number,
): void {
  const { bytes, length } = encodeAddress(
    { abstract: `conduit-ch/${role}/${mode}/${capacity}/${randomName(24)}` },
    "mark channel end",
  );
  check("bind", libc().bind(fd, bytes, length));
}

/** The largest capacity a channel has (its `MAX_CAPACITY`). */
const MAX_MARK_CAPACITY = 1_000_000;

/** Reads a channel end's mark, or `null` when the socket has none. */
export function readMark(
  abstract: string | undefined,
): { role: "s" | "r"; mode: number; capacity: number } | null {
  if (abstract === undefined) return null;
  const match = /^conduit-ch\/([sr])\/(\d)\/(\d{1,9})\/[0-9a-f]{24}$/.exec(
    abstract,
  );
  if (match === null) return null;
  // The name is the peer's to choose: a mode or capacity that no channel
  // end has is no mark.
  const capacity = Number(match[3]);
  const mode = Number(match[2]);
  if (capacity < 1 || capacity > MAX_MARK_CAPACITY || mode > 1) return null;
  return {
    role: match[1] as "s" | "r",
    mode,
    capacity,
  };
}

/** A seqpacket socket pair, CLOEXEC and blocking at the description. */
export function seqpacketPair(): [number, number] {
  const fds = new Int32Array(2);
  check(
    "socketpair",
    libc().socketpair(SOCK.AF_UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC, 0, fds),
  );
  return [fds[0], fds[1]];
}
