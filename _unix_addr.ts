/**
 * Named local socket addresses: `sockaddr_un` encoding for filesystem paths
 * and Linux abstract names, and publishing a listening socket at a path.
 *
 * A path socket is made in a private directory (mode 0700, in the same
 * directory as the path) where nobody else can reach it: bound, given its
 * mode there, listening, and only then renamed into place. So its mode is
 * never set through a name another user could swap for a symlink, and it
 * appears already listening, with its final permissions.
 *
 * Nothing takes a lock another user could hold. A socket file left by a
 * crashed server is told apart from a live one by connecting to it; it is
 * replaced atomically (`RENAME_EXCHANGE`), and what was swapped out is
 * removed only if it is that same dead file, otherwise swapped back. Two
 * servers starting on one stale path at once: one gets it, the other
 * `AddrInUse`.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { check, ERRNO, errno, systemError } from "./ffi/errors.ts";
import { AT, O, RENAME, S, SOCK, SOCKADDR_UN, STAT } from "./ffi/layout.ts";
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
 * A name nobody can guess: `digits` random digits of base 16 (`0-9a-f`) or
 * 32 (`0-9a-v`), each from a random byte of its own, so `digits` hex digits
 * hold `4 * digits` random bits. The one source of random names: socket
 * names, channel marks, private directories.
 */
export function randomName(digits: number, radix: 16 | 32 = 16): string {
  const bytes = crypto.getRandomValues(new Uint8Array(digits));
  let name = "";
  for (let i = 0; i < digits; i++) {
    name += (bytes[i] & (radix - 1)).toString(radix);
  }
  return name;
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
  const path = decoder.decode(bytes.subarray(SOCKADDR_UN.path, stop));
  // A socket published by publishPath() was bound in its private directory
  // under its final name, then moved up one level.
  return { path: path.replace(PRIVATE_COMPONENT, "$1") };
}

/** Identity of a filesystem object: device and inode. */
export interface FileId {
  dev: bigint;
  ino: bigint;
}

function sameFile(a: FileId, b: FileId): boolean {
  return a.dev === b.dev && a.ino === b.ino;
}

/** What `lstat`/`fstatat` says of a file: its type bits and identity. */
interface FileInfo {
  type: number;
  id: FileId;
  uid: number;
  mode: number;
}

function fileInfo(buf: Uint8Array<ArrayBuffer>): FileInfo {
  const view = new DataView(buf.buffer);
  const mode = view.getUint32(STAT.mode, true);
  return {
    type: mode & S.IFMT,
    mode: mode & 0o7777,
    uid: view.getUint32(STAT.uid, true),
    id: {
      dev: view.getBigUint64(STAT.dev, true),
      ino: view.getBigUint64(STAT.ino, true),
    },
  };
}

/**
 * `fstatat` without following a final symlink: the file's type, mode,
 * owner and identity, or `null` when it is absent.
 */
function statAt(dir: number, name: string): FileInfo | null {
  const buf = new Uint8Array(STAT.size + 64);
  if (libc().fstatat(dir, cstr(name), buf, AT.SYMLINK_NOFOLLOW) === -1) {
    const code = errno();
    if (code === ERRNO.ENOENT) return null;
    throw systemError("lstat", code, name);
  }
  return fileInfo(buf);
}

const KINDS: ReadonlyMap<number, string> = new Map([
  [S.IFSOCK, "a socket"],
  [S.IFDIR, "a directory"],
  [S.IFREG, "a regular file"],
  [S.IFIFO, "a named pipe"],
  [S.IFCHR, "a character device"],
  [S.IFBLK, "a block device"],
  [S.IFLNK, "a symbolic link"],
]);

/**
 * What is at `path`, following symlinks as `connect()` does: `"a socket"`,
 * `"a directory"`, `"a regular file"`, ..., or `undefined` when nothing is
 * there (or it cannot be told). For error messages only.
 */
export function pathKind(path: string): string | undefined {
  const buf = new Uint8Array(STAT.size + 64);
  if (libc().fstatat(AT.FDCWD, cstr(path), buf, 0) === -1) return undefined;
  const type = fileInfo(buf).type;
  return KINDS.get(type) ?? "not a socket";
}

/**
 * The deepest directory of `path` that does not exist or is not a
 * directory, as `"/a/b/"`, for messages on ENOENT and ENOTDIR; `undefined`
 * when every directory on the path is there.
 */
export function missingDirectory(
  path: string,
): { dir: string; kind: string | undefined } | undefined {
  const { dir } = splitPath(path);
  if (dir === "" || dir === "/") return undefined;
  const kind = pathKind(dir.slice(0, -1));
  if (kind === "a directory") return undefined;
  // Report the first broken component from the top, so the message points
  // at what to create or fix.
  return missingDirectory(dir.slice(0, -1)) ?? { dir, kind };
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

/** A path's directory part (up to its last `/`, or `""`) and final name. */
function splitPath(path: string): { dir: string; base: string } {
  const at = path.lastIndexOf("/");
  return { dir: path.slice(0, at + 1), base: path.slice(at + 1) };
}

/** The private directory's name: a prefix and 12 random base-32 digits. */
const PRIVATE_PREFIX = ".ipc-";
/** How much longer a path is inside the private directory. */
const PRIVATE_LENGTH = 1 + PRIVATE_PREFIX.length + 12;
/** Its component in a bound path, as `boundAddress` strips it. */
const PRIVATE_COMPONENT = /(^|\/)\.ipc-[0-9a-v]{12}\/(?=[^/]+$)/;

function privateName(): string {
  return PRIVATE_PREFIX + randomName(12, 32);
}

/**
 * A directory only this user can enter, made next to the socket's path (so
 * a rename moves the socket out of it), held open by fd.
 */
class PrivateDir implements Disposable {
  readonly path: string;
  readonly fd: number;

  /**
   * @param dir Where to make it: a path ending in `/`, or `""` for the
   * current directory.
   * @param doing What the caller does, for messages.
   */
  constructor(dir: string, doing: string) {
    const lib = libc();
    for (let attempt = 0;; attempt++) {
      const path = dir + privateName();
      if (lib.mkdir(cstr(path), 0o700) === 0) {
        this.path = path;
        break;
      }
      const code = errno();
      const broken = code === ERRNO.ENOENT || code === ERRNO.ENOTDIR
        ? missingDirectory(path)
        : undefined;
      if (broken !== undefined) {
        // The name's directory is missing: say so, not the private one's.
        const cause = systemError("mkdir", code, path);
        throw broken.kind === undefined
          ? new Deno.errors.NotFound(
            `Cannot ${doing}: directory ${broken.dir} does not exist`,
            { cause },
          )
          : new Deno.errors.NotADirectory(
            `Cannot ${doing}: ${broken.dir} is ${broken.kind}, not a directory`,
            { cause },
          );
      }
      if (code !== ERRNO.EEXIST || attempt >= 8) {
        const cause = systemError("mkdir", code, path);
        const Class = cause.constructor as ErrorConstructor;
        throw new Class(
          `Cannot ${doing}: the socket's private directory cannot be made in ${
            dir === "" ? "./" : dir
          } (${cause.code}); the directory must be writable`,
          { cause },
        );
      }
    }
    const fd = lib.open(
      cstr(this.path),
      O.RDONLY | O.DIRECTORY | O.NOFOLLOW | O.CLOEXEC,
      0,
    );
    if (fd === -1) {
      const code = errno();
      lib.unlinkat(AT.FDCWD, cstr(this.path), AT.REMOVEDIR);
      throw systemError("open", code, this.path);
    }
    this.fd = fd;
    // The name is in a shared directory: make sure the directory opened is
    // the one made, this user's and closed to others.
    const info = statAt(fd, ".");
    if (
      info === null || info.type !== S.IFDIR ||
      info.uid !== lib.geteuid() || (info.mode & 0o077) !== 0
    ) {
      lib.close(fd);
      throw new Deno.errors.PermissionDenied(
        `Cannot ${doing}: the private directory ${this.path} was replaced as it was made`,
      );
    }
  }

  /** Removes the entry `name` in it, if any. */
  unlink(name: string): void {
    libc().unlinkat(this.fd, cstr(name), 0);
  }

  /** Removes the directory (which must be empty by now) and closes it. */
  [Symbol.dispose](): void {
    const lib = libc();
    lib.unlinkat(AT.FDCWD, cstr(this.path), AT.REMOVEDIR);
    lib.close(this.fd);
  }
}

/**
 * Moves `name` out of the private directory to `path`: only if nothing is
 * there (`"placed"`), or in exchange for what is there (`"swapped"`: that
 * is now `name` in the private directory). `"occupied"` when something is
 * in the way of a move without exchange; `"unsupported"` when the
 * filesystem cannot exchange.
 */
function moveOut(
  priv: PrivateDir,
  name: string,
  path: string,
  flags: number,
): "placed" | "swapped" | "occupied" | "unsupported" {
  const lib = libc();
  const from = cstr(name);
  const to = cstr(path);
  if (lib.renameat2(priv.fd, from, AT.FDCWD, to, flags) === 0) {
    return flags === RENAME.EXCHANGE ? "swapped" : "placed";
  }
  let code = errno();
  if (code === ERRNO.EEXIST) return "occupied";
  if (code === ERRNO.EINVAL && flags === RENAME.EXCHANGE) return "unsupported";
  if (code === ERRNO.EINVAL) {
    // No rename flags on this filesystem: a hard link fails the same way
    // when the path is taken.
    if (lib.linkat(priv.fd, from, AT.FDCWD, to, 0) === 0) {
      priv.unlink(name);
      return "placed";
    }
    code = errno();
    if (code === ERRNO.EEXIST) return "occupied";
  }
  throw systemError("rename", code, path);
}

/** {@linkcode moveOut}, with `"failed"` for its errors. */
function tryMoveOut(
  priv: PrivateDir,
  name: string,
  path: string,
  flags: number,
): ReturnType<typeof moveOut> | "failed" {
  try {
    return moveOut(priv, name, path, flags);
  } catch {
    return "failed";
  }
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
  const { dir, base } = splitPath(path);
  const doing = `listen on ${path}`;
  // The socket is bound in the private directory first, which makes its
  // path longer.
  const longest = MAX_NAME - PRIVATE_LENGTH;
  if (encoder.encode(path).length > longest) {
    throw new RangeError(
      `Cannot ${doing}: the path is ${
        encoder.encode(path).length
      } bytes, and a listening socket path holds at most ${longest}`,
    );
  }
  using priv = new PrivateDir(dir, doing);
  const inside = encodeAddress({ path: `${priv.path}/${base}` }, "listen on");
  if (lib.bind(fd, inside.bytes, inside.length) === -1) {
    throw systemError("bind", errno(), path);
  }
  let mine: FileInfo | null = null;
  try {
    // Inside the private directory nobody else can swap the name.
    check("chmod", lib.fchmodat(priv.fd, cstr(base), mode, 0));
    check("listen", lib.listen(fd, backlog));
    mine = statAt(priv.fd, base);
    if (mine === null || mine.type !== S.IFSOCK) {
      throw new Deno.errors.NotFound(
        `Cannot ${doing}: the socket file vanished as it was made`,
      );
    }
    for (let attempt = 0;; attempt++) {
      if (attempt >= 8) {
        throw new Deno.errors.AddrInUse(
          `Cannot ${doing}: other servers keep taking the path`,
        );
      }
      if (moveOut(priv, base, path, RENAME.NOREPLACE) === "placed") {
        return mine.id;
      }
      const existing = statAt(AT.FDCWD, path);
      if (existing === null) continue;
      if (existing.type !== S.IFSOCK) {
        throw new Deno.errors.AlreadyExists(
          `Cannot listen on ${path}: ${
            KINDS.get(existing.type) ?? "a file"
          } is in the way, and only a socket file left by a server that died is replaced`,
        );
      }
      const state = probe(addr);
      if (state === "live") {
        throw new Deno.errors.AddrInUse(
          `Cannot listen on ${path}: a live server is listening on it`,
        );
      }
      if (state === "gone") continue;
      if (replaceStale(priv, base, path, existing.id, inside) === "done") {
        return mine.id;
      }
    }
  } catch (error) {
    // Remove this server's socket file, and nothing a failed exchange may
    // have left in its place.
    const left = statAt(priv.fd, base);
    if (left !== null && (mine === null || sameFile(left.id, mine.id))) {
      priv.unlink(base);
    }
    throw error;
  }
}

/**
 * Puts the socket `base` of the private directory at `path` in place of
 * the stale socket file `stale`, and deletes that file. `"retry"` when
 * something else turned out to be at `path`: it is put back, and `base`
 * is this server's socket again.
 */
function replaceStale(
  priv: PrivateDir,
  base: string,
  path: string,
  stale: FileId,
  inside: Sockaddr,
): "done" | "retry" {
  const lib = libc();
  const outcome = moveOut(priv, base, path, RENAME.EXCHANGE);
  if (outcome !== "swapped") {
    // No atomic exchange here: remove the stale file if it is still the
    // one probed, then place this socket only if the path is free.
    const now = statAt(AT.FDCWD, path);
    if (now !== null && sameFile(now.id, stale)) lib.unlink(cstr(path));
    return moveOut(priv, base, path, RENAME.NOREPLACE) === "placed"
      ? "done"
      : "retry";
  }
  // `base` in the private directory is now whatever was at `path`. It goes
  // only if it is the dead file probed (a live socket answers the probe).
  const out = statAt(priv.fd, base);
  if (out !== null && sameFile(out.id, stale) && probe(inside) === "stale") {
    priv.unlink(base);
    return "done";
  }
  // Another server's socket took the path meanwhile: give it back. The
  // path holds this server's socket, so the exchange finds both; should
  // that name be gone, the other socket still goes back if it can.
  if (tryMoveOut(priv, base, path, RENAME.EXCHANGE) !== "swapped") {
    tryMoveOut(priv, base, path, RENAME.NOREPLACE);
    throw new Deno.errors.AddrInUse(
      `Cannot listen on ${path}: another server took the path as this one started`,
    );
  }
  return "retry";
}

/** Removes the socket file at `path` if it is still the one published. */
export function unpublishPath(path: string, id: FileId): void {
  const now = statAt(AT.FDCWD, path);
  if (now !== null && sameFile(now.id, id)) {
    libc().unlink(cstr(path));
  }
}
