/**
 * Named local sockets, the client side: {@linkcode connect} to a server
 * that listens on a filesystem path or a Linux abstract name, and check
 * who that server is before anything is sent.
 *
 * @module
 */

import { libc } from "./ffi/libc.ts";
import { check, ERRNO, errno, systemError } from "./ffi/errors.ts";
import { F, O, SOCK } from "./ffi/layout.ts";
import {
  encodeAddress,
  missingDirectory,
  pathKind,
  type UnixAddress,
} from "./_unix_addr.ts";
import {
  checkOptionsObject,
  expectedUid,
  KERNEL_TYPES,
  type ListenType,
  listenType,
  peerCredentialsOf,
  socketNames,
} from "./_socket_options.ts";
import { UnixSocket } from "./unix_socket.ts";
import { requirePath } from "./_permissions.ts";
import { checkSignal } from "./_byte_io.ts";

/**
 * Who the server must be, checked by {@linkcode connect} before it returns
 * (so before anything is sent): the credentials the kernel recorded when
 * the server called `listen()` (`SO_PEERCRED`).
 */
export interface ExpectedServer {
  /**
   * The server's user id. Default: this process's own, so that a name
   * released by its server and taken over by another user (abstract names
   * have no permissions; a path in a shared directory can be replaced)
   * never receives this process's messages. `"any"` skips the check.
   */
  expectUid?: number | "any";
  /** The server's process id, when it is known. Default: any. */
  expectPid?: number;
}

/** Options for {@linkcode connect}: an address and the socket type. */
export type ConnectOptions = UnixAddress & ExpectedServer & {
  /** `"stream"` (the default) or `"seqpacket"`: the listener's type. */
  type?: ListenType;
  /** Aborting it while the server's queue is full gives up. */
  signal?: AbortSignal;
};

/** The checks of {@linkcode ExpectedServer}, validated. */
interface ServerCheck {
  uid: number | undefined;
  pid: number | undefined;
}

function serverCheck(expected: ExpectedServer): ServerCheck {
  const { expectUid, expectPid } = expected;
  const uid = expectedUid(expectUid, libc().getuid(), "connect");
  if (
    expectPid !== undefined &&
    (!Number.isInteger(expectPid) || expectPid <= 0)
  ) {
    throw new TypeError(
      `Cannot connect: expectPid must be a process id, got ${
        JSON.stringify(expectPid)
      }`,
    );
  }
  return { uid, pid: expectPid };
}

/**
 * Throws `PermissionDenied` unless the server at the other end of `fd`
 * matches `expected`.
 */
function checkServer(fd: number, expected: ServerCheck, label: string): void {
  const { pid, uid } = peerCredentialsOf(fd);
  if (expected.uid !== undefined && uid !== expected.uid) {
    throw new Deno.errors.PermissionDenied(
      `Cannot connect to ${label}: the server runs as uid ${uid}, not the expected uid ${expected.uid}; nothing was sent`,
    );
  }
  if (expected.pid !== undefined && pid !== expected.pid) {
    throw new Deno.errors.PermissionDenied(
      `Cannot connect to ${label}: the server is process ${pid}, not the expected process ${expected.pid}; nothing was sent`,
    );
  }
}

function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function connectError(
  code: number,
  label: string,
  path: string | undefined,
): Error {
  const cause = { cause: systemError("connect", code) };
  if (code === ERRNO.ENOENT || code === ERRNO.ENOTDIR) {
    const broken = path === undefined ? undefined : missingDirectory(path);
    if (broken !== undefined) {
      return broken.kind === undefined
        ? new Deno.errors.NotFound(
          `Cannot connect to ${label}: directory ${broken.dir} does not exist`,
          cause,
        )
        : new Deno.errors.NotADirectory(
          `Cannot connect to ${label}: ${broken.dir} is ${broken.kind}, not a directory`,
          cause,
        );
    }
    return new Deno.errors.NotFound(
      `Cannot connect to ${label}: no socket exists there`,
      cause,
    );
  }
  if (code === ERRNO.ECONNREFUSED) {
    // A file that is not a socket refuses too: say what it is.
    const kind = path === undefined ? "a socket" : pathKind(path);
    if (kind !== undefined && kind !== "a socket") {
      return new Deno.errors.ConnectionRefused(
        `Cannot connect to ${label}: it is ${kind}, not a socket`,
        cause,
      );
    }
    return new Deno.errors.ConnectionRefused(
      path === undefined
        ? `Cannot connect to ${label}: no server of this socket type is listening (the kernel keeps abstract names per type: a server of another type is not found; pass its type)`
        : `Cannot connect to ${label}: no server is listening`,
      cause,
    );
  }
  if (code === ERRNO.EACCES || code === ERRNO.EPERM) {
    return new Deno.errors.PermissionDenied(
      `Cannot connect to ${label}: permission denied (connecting needs write permission on the socket file and search permission on its directories)`,
      cause,
    );
  }
  if (code === ERRNO.EPROTOTYPE) {
    return new TypeError(
      `Cannot connect to ${label}: the server's socket is of another type`,
      cause,
    );
  }
  return cause.cause;
}

/**
 * Connects to a named local socket. Waits (without blocking the thread)
 * while the server's queue of pending connections is full.
 *
 * The server is authenticated before the socket is returned: by default it
 * must run as this process's user (`SO_PEERCRED`), so a name taken over by
 * another user gets nothing; `expectUid` and `expectPid` say who else to
 * accept.
 *
 * @param options `{ path }` or `{ abstract }`, the type, who the server
 * must be, and an abort signal.
 * @returns The connected socket.
 * @throws {Deno.errors.NotCapable} When read and write access to `path`
 * are not granted (`--allow-read`, `--allow-write`); an abstract name needs
 * no permission.
 * @throws {Deno.errors.NotFound} When nothing is at the path.
 * @throws {Deno.errors.ConnectionRefused} When no server listens there.
 * @throws {Deno.errors.PermissionDenied} When the server is not the
 * expected user or process; the connection is closed unused.
 *
 * @example Connect by path
 * ```ts ignore
 * import { connect } from "@conduit/ipc/socketpair";
 *
 * using conn = await connect({ path: "/tmp/app.sock" });
 * await conn.write(new TextEncoder().encode("hello"));
 * ```
 *
 * @example Connect to a service that runs as root
 * ```ts ignore
 * import { connect } from "@conduit/ipc/socketpair";
 *
 * using conn = await connect({ path: "/run/app.sock", expectUid: 0 });
 * ```
 */
export async function connect(options: ConnectOptions): Promise<UnixSocket> {
  checkOptionsObject(options, "connect", "{ path } or { abstract }");
  const type = listenType(options.type, "connect");
  const address = encodeAddress(options, "connect to");
  const expected = serverCheck(options);
  const { signal } = options;
  checkSignal(signal, "Cannot connect");
  if (options.path !== undefined) {
    // Deno's permissions, honoured although the FFI could bypass them.
    requirePath(
      options.path,
      ["read", "write"],
      `Cannot connect to ${options.path}`,
    );
  }
  const lib = libc();
  // Nonblocking only while private to this call: cleared before anyone else
  // can hold the socket.
  const fd = check(
    "socket",
    lib.socket(
      SOCK.AF_UNIX,
      KERNEL_TYPES[type] | SOCK.CLOEXEC | SOCK.NONBLOCK,
      0,
    ),
  );
  try {
    let backoff = 1;
    for (;;) {
      if (lib.connect(fd, address.bytes, address.length) === 0) break;
      const code = errno();
      if (code === ERRNO.EINTR) continue;
      if (code !== ERRNO.EAGAIN) {
        throw connectError(code, address.label, options.path);
      }
      // The backlog is full; a unix socket gives no readiness for room.
      await pause(backoff, signal);
      backoff = Math.min(backoff * 2, 50);
    }
    checkServer(fd, expected, address.label);
    const flags = check("fcntl(F_GETFL)", lib.fcntl(fd, F.GETFL, 0));
    check("fcntl(F_SETFL)", lib.fcntl(fd, F.SETFL, flags & ~O.NONBLOCK));
    const socket = new UnixSocket(fd, type);
    socketNames.set(
      socket,
      options.path !== undefined
        ? { path: options.path }
        : { abstract: options.abstract },
    );
    return socket;
  } catch (error) {
    lib.close(fd);
    throw error;
  }
}
