/**
 * errno handling: one checker that every libc call returns through.
 *
 * errno is read right after a synchronous call on the JS thread returned -1
 * (reliable there); results of nonblocking calls never go through here.
 *
 * @module
 */

import { libc } from "./libc.ts";

/** errno numbers on Linux (the same on x86_64 and aarch64) and their names. */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  ENOEXEC: 8,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ETXTBSY: 26,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EPIPE: 32,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOSYS: 38,
  ELOOP: 40,
  ENOTSOCK: 88,
  EDESTADDRREQ: 89,
  EMSGSIZE: 90,
  EPROTOTYPE: 91,
  ENOPROTOOPT: 92,
  EPROTONOSUPPORT: 93,
  ESOCKTNOSUPPORT: 94,
  EOPNOTSUPP: 95,
  EAFNOSUPPORT: 97,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOBUFS: 105,
  EISCONN: 106,
  ENOTCONN: 107,
  ETOOMANYREFS: 109,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
} as const;

/** The name of an errno value, such as `"EPIPE"`, or `"E<n>"` when unknown. */
export type ErrnoName = keyof typeof ERRNO;

const NAMES = new Map<number, string>(
  Object.entries(ERRNO).map(([name, value]) => [value, name]),
);

const DESCRIPTIONS: Partial<Record<ErrnoName, string>> = {
  EPERM: "operation not permitted",
  ENOENT: "no such file or directory",
  ESRCH: "no such process",
  EBADF: "bad file descriptor",
  EAGAIN: "resource temporarily unavailable",
  ENOMEM: "out of memory",
  EACCES: "permission denied",
  EEXIST: "file exists",
  EINVAL: "invalid argument",
  ENFILE: "too many open files in system",
  EMFILE: "too many open files",
  ENOSPC: "no space left on device",
  EPIPE: "broken pipe",
  ENOSYS: "function not implemented",
  ENOTSOCK: "not a socket",
  EMSGSIZE: "message too long",
  EOPNOTSUPP: "operation not supported",
  EADDRINUSE: "address already in use",
  ECONNRESET: "connection reset by peer",
  ENOTCONN: "socket is not connected",
  ETOOMANYREFS: "too many fds in flight",
  ECONNREFUSED: "connection refused",
  ETIMEDOUT: "timed out",
};

type ErrorClass = new (message: string) => Error;

const CLASSES: Partial<Record<ErrnoName, ErrorClass>> = {
  EPIPE: Deno.errors.BrokenPipe,
  EBADF: Deno.errors.BadResource,
  EAGAIN: Deno.errors.WouldBlock,
  ENOENT: Deno.errors.NotFound,
  EACCES: Deno.errors.PermissionDenied,
  EPERM: Deno.errors.PermissionDenied,
  ECONNREFUSED: Deno.errors.ConnectionRefused,
  ECONNRESET: Deno.errors.ConnectionReset,
  ECONNABORTED: Deno.errors.ConnectionAborted,
  ENOTCONN: Deno.errors.NotConnected,
  EADDRINUSE: Deno.errors.AddrInUse,
  EADDRNOTAVAIL: Deno.errors.AddrNotAvailable,
  EEXIST: Deno.errors.AlreadyExists,
  ETIMEDOUT: Deno.errors.TimedOut,
  EINTR: Deno.errors.Interrupted,
  EBUSY: Deno.errors.Busy,
  ENOTDIR: Deno.errors.NotADirectory,
  EISDIR: Deno.errors.IsADirectory,
  ELOOP: Deno.errors.FilesystemLoop,
  ENOSYS: Deno.errors.NotSupported,
  EOPNOTSUPP: Deno.errors.NotSupported,
};

/** An error raised by a libc call, with the errno it failed with. */
export interface SystemError extends Error {
  /** The errno name, such as `"EPIPE"`. */
  code: string;
  /** The errno number. */
  errno: number;
  /** The libc function that failed. */
  syscall: string;
}

/** The calling thread's errno, as memory (this module is per thread). */
let errnoCell: Int32Array | undefined;

function errnoCellOf(): Int32Array {
  const ptr = libc().__errno_location();
  if (ptr === null) throw new Error("Cannot read errno: no errno location");
  return new Int32Array(Deno.UnsafePointerView.getArrayBuffer(ptr, 4));
}

/**
 * Reads the calling thread's errno. Only valid right after a sync call. A
 * plain read of its memory: nothing runs between the call and the read but
 * this function's own entry.
 */
export function errno(): number {
  return (errnoCell ??= errnoCellOf())[0];
}

/**
 * What a socket, pipe or eventfd read or write (`recvmsg`, `sendmsg`,
 * `sendmmsg`, `recv`, `send`, `read`, `write`, `accept4`) can fail with.
 */
const IO_ERRORS: ReadonlySet<number> = new Set([
  ERRNO.EAGAIN,
  ERRNO.EINTR,
  ERRNO.EBADF,
  ERRNO.EFAULT,
  ERRNO.EINVAL,
  ERRNO.ENOMEM,
  ERRNO.ENOBUFS,
  ERRNO.EIO,
  ERRNO.EPIPE,
  ERRNO.ECONNRESET,
  ERRNO.ECONNREFUSED,
  ERRNO.ECONNABORTED,
  ERRNO.ENOTCONN,
  ERRNO.ENOTSOCK,
  ERRNO.EISCONN,
  ERRNO.EDESTADDRREQ,
  ERRNO.EMSGSIZE,
  ERRNO.EOPNOTSUPP,
  ERRNO.ETOOMANYREFS,
  ERRNO.EMFILE,
  ERRNO.ENFILE,
  ERRNO.EPERM,
  ERRNO.EACCES,
  ERRNO.ENOSPC,
  ERRNO.EFBIG,
  ERRNO.ESPIPE,
  ERRNO.EISDIR,
  ERRNO.ETIMEDOUT,
]);
/**
 * The errno of a socket, pipe or eventfd read or write that returned -1,
 * for a loop that retries on EINTR: a value no such call sets comes back as
 * EINTR while `failed` (the calls of this loop that failed before) is below
 * 2, so the call is made again; after that it is returned as it is.
 *
 * A nonblocking `recvmsg` in a benchmark child was once seen to report
 * ENOENT, which it never sets (what set it was not found: between a libc
 * call's return and the read of errno the engine may run code of its own
 * on this thread, at a function's entry); taken as the call's error, a
 * routine EAGAIN became a `NotFound` thrown from a receive. Making the call
 * again is safe: one that failed moved no data.
 */
export function ioErrno(failed: number): number {
  const code = errno();
  return IO_ERRORS.has(code) || failed >= 2 ? code : ERRNO.EINTR;
}

/** The errno name for a number, such as `"EPIPE"` for 32. */
export function errnoName(code: number): string {
  return NAMES.get(code) ?? `E${code}`;
}

/**
 * Builds the error for an errno value: the `Deno.errors` class that fits it,
 * or a plain `Error`, with the syscall and errno name in the message.
 */
export function systemError(
  syscall: string,
  code: number,
  detail?: string,
): SystemError {
  const name = errnoName(code);
  const description = DESCRIPTIONS[name as ErrnoName] ?? `errno ${code}`;
  const message = `${syscall} failed: ${name}: ${description}${
    detail ? ` (${detail})` : ""
  }`;
  const Class = CLASSES[name as ErrnoName] ?? Error;
  const error = new Class(message) as SystemError;
  error.code = name;
  error.errno = code;
  error.syscall = syscall;
  return error;
}

/**
 * Checks a libc result: returns it when it is not -1, and otherwise throws
 * the error for the current errno. Callers that retry on EINTR use
 * {@linkcode retry}.
 */
export function check(syscall: string, result: number | bigint): number {
  const value = typeof result === "bigint" ? Number(result) : result;
  if (value === -1) throw systemError(syscall, errno());
  return value;
}

/** Calls `fn` until it does not fail with EINTR, then checks its result. */
export function retry(syscall: string, fn: () => number | bigint): number {
  for (;;) {
    const result = fn();
    const value = typeof result === "bigint" ? Number(result) : result;
    if (value !== -1) return value;
    const code = errno();
    if (code !== ERRNO.EINTR) throw systemError(syscall, code);
  }
}

/**
 * Calls a nonblocking-per-call I/O function: returns the byte count, or -1
 * when the call would block (EAGAIN), retrying on EINTR and throwing on any
 * other error.
 */
export function tryIo(syscall: string, fn: () => number | bigint): number {
  let failed = 0;
  for (;;) {
    const result = fn();
    const value = typeof result === "bigint" ? Number(result) : result;
    if (value >= 0) return value;
    const code = ioErrno(failed++);
    if (code === ERRNO.EAGAIN) return -1;
    if (code !== ERRNO.EINTR) throw systemError(syscall, code);
  }
}

/**
 * Checks a function that returns an error number instead of setting errno
 * (the posix_spawn family).
 */
export function checkReturn(syscall: string, code: number): void {
  if (code !== 0) throw systemError(syscall, code);
}

/** The error every endpoint throws when used after `close()`. */
export function closedError(what: string): Deno.errors.BadResource {
  return new Deno.errors.BadResource(`Cannot use ${what}: it is closed`);
}

/**
 * `endpoint.rawFd`, where a closed endpoint is said as the call's refusal
 * of that argument: "Cannot spawn: fds[0] (a PipeReader) is closed".
 *
 * @param call What was refused, e.g. "Cannot spawn".
 * @param what Which argument, e.g. "fds[0]".
 */
export function endpointFd(
  endpoint: { readonly rawFd: number },
  call: string,
  what: string,
): number {
  try {
    return endpoint.rawFd;
  } catch (error) {
    if (!(error instanceof Deno.errors.BadResource)) throw error;
    const name = (endpoint as { constructor?: { name?: string } }).constructor
      ?.name ?? "endpoint";
    throw new Deno.errors.BadResource(`${call}: ${what} (${name}) is closed`, {
      cause: error,
    });
  }
}
