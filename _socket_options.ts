/**
 * Options and types of unix sockets: int options through `getsockopt` and
 * `setsockopt`, the peer's credentials (`SO_PEERCRED`), and the names of
 * the socket types. Shared by the socket endpoints, the shared-memory
 * queue's carrier and the channel wire.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { check, ERRNO, type SystemError } from "./ffi/errors.ts";
import { SOCK, UCRED } from "./ffi/layout.ts";
import type { Credentials } from "./ffi/cmsg.ts";

/** The kind of a Unix socket. */
export type SocketType = "stream" | "dgram" | "seqpacket";

/** The kernel's number of each socket type. */
export const KERNEL_TYPES: Readonly<Record<SocketType, number>> = {
  stream: SOCK.STREAM,
  dgram: SOCK.DGRAM,
  seqpacket: SOCK.SEQPACKET,
};

/** The name of a kernel socket type, or `undefined` for another type. */
export function typeName(kernelType: number): SocketType | undefined {
  if (kernelType === SOCK.STREAM) return "stream";
  if (kernelType === SOCK.DGRAM) return "dgram";
  if (kernelType === SOCK.SEQPACKET) return "seqpacket";
  return undefined;
}

/**
 * Checks a `type` option.
 *
 * @throws {TypeError} When it is not a socket type; `doing` says what
 * failed, such as `"create socket pair"`.
 */
export function checkType(type: unknown, doing: string): SocketType {
  if (type === "stream" || type === "dgram" || type === "seqpacket") {
    return type;
  }
  throw new TypeError(
    `Cannot ${doing}: type must be "stream", "dgram" or "seqpacket", got ${
      JSON.stringify(type)
    }`,
  );
}

// Off-heap, so the addresses passed to C are stable.
const intBuf = new Int32Array(new ArrayBuffer(64), 0, 1);
const lenBuf = new Uint32Array(new ArrayBuffer(64), 0, 1);

/** An int `SOL_SOCKET` option; throws the system error of a failure. */
export function getIntOption(
  fd: number,
  option: number,
  name: string,
): number {
  lenBuf[0] = 4;
  check(
    `getsockopt(${name})`,
    libc().getsockopt(fd, SOCK.SOL_SOCKET, option, intBuf, lenBuf),
  );
  return intBuf[0];
}

/**
 * The kernel type (`SO_TYPE`) of an fd handed to an endpoint's constructor,
 * with the reason when it is not a socket at all.
 *
 * @throws {Deno.errors.BadResource} When `fd` is not open.
 * @throws {TypeError} When `fd` is not a socket.
 */
export function adoptedSocketType(fd: number, what: string): number {
  try {
    return getIntOption(fd, SOCK.SO_TYPE, "SO_TYPE");
  } catch (error) {
    const code = (error as Partial<SystemError>)?.errno;
    if (code === ERRNO.EBADF) {
      throw new Deno.errors.BadResource(
        `Cannot adopt fd ${fd} as ${what}: it is not open`,
        { cause: error },
      );
    }
    if (code === ERRNO.ENOTSOCK) {
      throw new TypeError(
        `Cannot adopt fd ${fd} as ${what}: it is not a socket`,
        { cause: error },
      );
    }
    throw error;
  }
}

/**
 * An int `SOL_SOCKET` option, or `undefined` when the fd has none (not
 * open, not a socket): for telling what an fd from a peer is.
 */
export function socketOption(fd: number, option: number): number | undefined {
  lenBuf[0] = 4;
  const result = libc().getsockopt(
    fd,
    SOCK.SOL_SOCKET,
    option,
    intBuf,
    lenBuf,
  );
  return result === -1 ? undefined : intBuf[0];
}

/** Sets an int `SOL_SOCKET` option; throws the system error of a failure. */
export function setIntOption(
  fd: number,
  option: number,
  name: string,
  value: number,
): void {
  intBuf[0] = value;
  check(
    `setsockopt(${name})`,
    libc().setsockopt(fd, SOCK.SOL_SOCKET, option, intBuf, 4),
  );
}

/** The credentials of a connected socket's peer (`SO_PEERCRED`). */
export function peerCredentialsOf(fd: number): Credentials {
  const buf = new Uint8Array(UCRED.size + 4);
  const len = new Uint32Array([UCRED.size]);
  check(
    "getsockopt(SO_PEERCRED)",
    libc().getsockopt(fd, SOCK.SOL_SOCKET, SOCK.SO_PEERCRED, buf, len),
  );
  const view = new DataView(buf.buffer);
  return {
    pid: view.getInt32(UCRED.pid, true),
    uid: view.getUint32(UCRED.uid, true),
    gid: view.getUint32(UCRED.gid, true),
  };
}

/**
 * Checks that an options argument is an object (or absent, when `optional`).
 *
 * @throws {TypeError} Otherwise; `doing` says what failed, such as
 * `"listen"`.
 */
export function checkOptionsObject(
  options: unknown,
  doing: string,
  what = "an options object",
): void {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(
      `Cannot ${doing}: expected ${what}, got ${
        options === null ? "null" : typeof options
      }`,
    );
  }
}

/**
 * Checks that a numeric option, when given, is a number at all; its range
 * is the caller's to check.
 *
 * @throws {TypeError} When it is given and not a number, naming `name`.
 */
export function checkNumberOption(
  value: unknown,
  name: string,
  doing: string,
): void {
  if (value !== undefined && typeof value !== "number") {
    throw new TypeError(
      `Cannot ${doing}: ${name} must be a number, got ${
        value === null ? "null" : typeof value
      }`,
    );
  }
}

/**
 * The user id an `expectUid` option asks for: `me` when it is not given,
 * `undefined` for `"any"` (no check).
 *
 * @throws {TypeError} When it is neither a user id nor `"any"`.
 */
export function expectedUid(
  expectUid: unknown,
  me: number,
  doing: string,
): number | undefined {
  if (expectUid === undefined) return me;
  if (expectUid === "any") return undefined;
  if (
    typeof expectUid !== "number" || !Number.isInteger(expectUid) ||
    expectUid < 0 || expectUid > 2 ** 32 - 1
  ) {
    throw new TypeError(
      `Cannot ${doing}: expectUid must be a user id or "any", got ${
        JSON.stringify(expectUid)
      }`,
    );
  }
  return expectUid;
}

/** The name a socket was connected or accepted on. */
export interface SocketName {
  /** A filesystem path. */
  path?: string;
  /** A Linux abstract name. */
  abstract?: string;
}

/**
 * The names of sockets made by `connect()` and `accept()`, for inspection
 * only: kept beside the socket, so the public class carries no setter.
 */
export const socketNames: WeakMap<object, SocketName> = new WeakMap();

/** The socket type of a named socket: datagram sockets do not connect. */
export type ListenType = "stream" | "seqpacket";

/** Checks the `type` option of a named socket (`"stream"` by default). */
export function listenType(type: unknown, doing: string): ListenType {
  const checked = checkType(type ?? "stream", doing);
  if (checked === "dgram") {
    throw new TypeError(
      `Cannot ${doing}: a dgram socket does not connect; use "stream" or "seqpacket"`,
    );
  }
  return checked;
}
