/**
 * Named local socket addresses: `sockaddr_un` encoding for filesystem paths
 * and Linux abstract names, and publishing a listening socket at a path.
 *
 * A path socket is bound with its final permissions from the start (the
 * socket's mode is set before `bind`, which creates the file with it). A
 * socket file left by a crashed server is told apart from a live one by
 * connecting to it, and only a file nobody accepts on is removed; a
 * directory lock serializes servers of this module that start on the same
 * path at the same moment.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { check, ERRNO, errno, retry, systemError } from "./ffi/errors.ts";
import { LOCK, O, S, SOCK, SOCKADDR_UN, STAT } from "./ffi/layout.ts";
import { cstr } from "./ffi/mem.ts";

/** A filesystem path or a Linux abstract name. */
export type UnixAddress =
  | { path: string; abstract?: undefined }
  | { abstract: string; path?: undefined };

/** An encoded address. */
export interface Sockaddr {
  /** The `sockaddr_un` bytes. */
  bytes: Uint8Array<ArrayBuffer>;
  /** The length to pass as `addrlen`. */
  length: number;
  /** How messages name it: `/run/x.sock` or `abstract name "x"`. */
  label: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const MAX_NAME = SOCKADDR_UN.pathMax - 1;

/**
 * Encodes `{ path }` or `{ abstract }`.
 *
 * @param address The address.
 * @param doing What the caller does, for messages: `"listen on"`.
 */
export function encodeAddress(address: UnixAddress, doing: string): Sockaddr {
  const { path, abstract } = address ?? {};
  if ((path === undefined) === (abstract === undefined)) {
    throw new TypeError(
      `Cannot ${doing} socket: give exactly one of path and abstract`,
    );
  }
  const bytes = new Uint8Array(SOCKADDR_UN.size);
  new DataView(bytes.buffer).setUint16(SOCKADDR_UN.family, SOCK.AF_UNIX, true);
  if (path !== undefined) {
    if (typeof path !== "string" || path === "" || path.includes("\0")) {
      throw new TypeError(
        `Cannot ${doing} socket: path must be a non-empty string without NUL bytes`,
      );
    }
    const name = encoder.encode(path);
    if (name.length > MAX_NAME) {
      throw new RangeError(
        `Cannot ${doing} ${path}: the path is ${name.length} bytes, and a socket path holds at most ${MAX_NAME}`,
      );
    }
    bytes.set(name, SOCKADDR_UN.path);
    return {
      bytes,
      length: SOCKADDR_UN.path + name.length + 1,
      label: path,
    };
  }
  if (typeof abstract !== "string" || abstract === "") {
    throw new TypeError(
      `Cannot ${doing} socket: abstract must be a non-empty string`,
    );
  }
  const name = encoder.encode(abstract);
  if (name.length > MAX_NAME) {
    throw new RangeError(
      `Cannot ${doing} abstract name: it is ${name.length} bytes, and an abstract name holds at most ${MAX_NAME}`,
    );
  }
  // A leading NUL puts the name in the abstract namespace; the length, not a
  // terminator, ends it.
  bytes.set(name, SOCKADDR_UN.path + 1);
  return {
    bytes,
    length: SOCKADDR_UN.path + 1 + name.length,
    label: `abstract name ${JSON.stringify(abstract)}`,
  };
}

/**
 * Decodes the address a socket is bound to (`getsockname`), or `{}` when it
 * is unnamed.
 */
export function boundAddress(fd: number): { path?: string; abstract?: string } {
  const bytes = new Uint8Array(SOCKADDR_UN.size);
  const len = new Uint32Array([SOCKADDR_UN.size]);
  check("getsockname", libc().getsockname(fd, bytes, len));
  const end = Math.min(len[0], SOCKADDR_UN.size);
  if (end <= SOCKADDR_UN.path) return {};
  if (bytes[SOCKADDR_UN.path] === 0) {
    return {
      abstract: decoder.decode(bytes.subarray(SOCKADDR_UN.path + 1, end)),
    };
  }
  let stop = bytes.indexOf(0, SOCKADDR_UN.path);
  if (stop === -1 || stop > end) stop = end;
  return { path: decoder.decode(bytes.subarray(SOCKADDR_UN.path, stop)) };
}

/** Identity of a filesystem object: device and inode. */
export interface FileId {
  dev: bigint;
  ino: bigint;
}

/** lstat: the file's type bits and identity, or `null` when it is absent. */
function lstatId(path: string): { type: number; id: FileId } | null {
  const buf = new Uint8Array(STAT.size + 64);
  if (libc().lstat(cstr(path), buf) === -1) {
    const code = errno();
    if (code === ERRNO.ENOENT) return null;
    throw systemError("lstat", code, path);
  }
  const view = new DataView(buf.buffer);
  return {
    type: view.getUint32(STAT.mode, true) & S.IFMT,
    id: {
      dev: view.getBigUint64(STAT.dev, true),
      ino: view.getBigUint64(STAT.ino, true),
    },
  };
}

/** What a connection attempt tells about a socket file. */
type Liveness = "live" | "stale" | "gone";

/**
 * Connects to `addr` with a private nonblocking socket of each type in turn:
 * any connection (or a full backlog) means a live server; refusal by every
 * type means the file is left over from a socket that was closed.
 */
function probe(addr: Sockaddr): Liveness {
  const lib = libc();
  for (const type of [SOCK.STREAM, SOCK.SEQPACKET, SOCK.DGRAM]) {
    const fd = check(
      "socket",
      lib.socket(SOCK.AF_UNIX, type | SOCK.CLOEXEC | SOCK.NONBLOCK, 0),
    );
    const result = lib.connect(fd, addr.bytes, addr.length);
    const code = result === -1 ? errno() : 0;
    lib.close(fd);
    if (result === 0 || code === ERRNO.EAGAIN) return "live";
    if (code === ERRNO.ENOENT) return "gone";
    // Another socket type is bound there: try the next type.
    if (code === ERRNO.EPROTOTYPE || code === ERRNO.ECONNREFUSED) continue;
    // Anything else (permission denied, ...) cannot prove the server dead.
    return "live";
  }
  return "stale";
}

function dirOf(path: string): string {
  const at = path.lastIndexOf("/");
  if (at === -1) return ".";
  if (at === 0) return "/";
  return path.slice(0, at);
}

/** Holds an exclusive flock on a directory, if it can be opened. */
function lockDir(dir: string): number {
  const lib = libc();
  const fd = lib.open(cstr(dir), O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0);
  // Without a readable directory there is no lock; the steps below are
  // still safe against every server but a second one starting this instant.
  if (fd === -1) return -1;
  retry("flock", () => lib.flock(fd, LOCK.EX));
  return fd;
}

/**
 * Binds `fd` at `path` with permissions `mode` and puts it in the listening
 * state, replacing a stale socket file but never a live server's.
 *
 * @returns The socket file's identity, to remove it at close only if it is
 * still this server's.
 * @throws {Deno.errors.AddrInUse} When a live server listens at `path`.
 * @throws {Deno.errors.AlreadyExists} When a file that is not a socket is
 * in the way.
 */
export function publishPath(
  fd: number,
  path: string,
  mode: number,
  backlog: number,
): FileId {
  const lib = libc();
  const addr = encodeAddress({ path }, "listen on");
  const pathC = cstr(path);
  // On Linux, bind() creates the file with the socket's own mode minus the
  // umask: set before bind, the file is never more open than `mode`.
  check("fchmod", lib.fchmod(fd, mode));
  const lock = lockDir(dirOf(path));
  try {
    for (let attempt = 0;; attempt++) {
      if (lib.bind(fd, addr.bytes, addr.length) === 0) break;
      const code = errno();
      if (code !== ERRNO.EADDRINUSE || attempt >= 8) {
        throw systemError("bind", code, path);
      }
      const existing = lstatId(path);
      if (existing === null) continue;
      if (existing.type !== S.IFSOCK) {
        throw new Deno.errors.AlreadyExists(
          `Cannot listen on ${path}: a file that is not a socket is in the way`,
        );
      }
      const state = probe(addr);
      if (state === "live") {
        throw new Deno.errors.AddrInUse(
          `Cannot listen on ${path}: a live server is listening on it`,
        );
      }
      // Left over by a server that is gone: remove it and bind again.
      if (state === "stale" && lib.unlink(pathC) === -1) {
        const failed = errno();
        if (failed !== ERRNO.ENOENT) throw systemError("unlink", failed, path);
      }
    }
    try {
      // Bits the umask took away are given back now that the file exists.
      check("chmod", lib.chmod(pathC, mode));
      check("listen", lib.listen(fd, backlog));
      const published = lstatId(path);
      if (published === null) {
        throw new Deno.errors.NotFound(
          `Cannot listen on ${path}: the socket file vanished as it was made`,
        );
      }
      return published.id;
    } catch (error) {
      lib.unlink(pathC);
      throw error;
    }
  } finally {
    if (lock !== -1) lib.close(lock);
  }
}

/** Removes the socket file at `path` if it is still the one published. */
export function unpublishPath(path: string, id: FileId): void {
  const now = lstatId(path);
  if (now !== null && now.id.dev === id.dev && now.id.ino === id.ino) {
    libc().unlink(cstr(path));
  }
}
