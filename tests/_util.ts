/**
 * Helpers shared by the test files: fd and zombie accounting, bounded waits,
 * and the poller's idle state.
 *
 * Importing this module loads libc and creates the poller, so that the
 * dynamic library is not counted against the first test that uses it (the
 * poller opens its epoll fd and eventfd only while some fd is registered).
 * It needs `--allow-ffi` on the command line.
 *
 * @module
 */

import { libc } from "../ffi/libc.ts";
import { poller } from "../ffi/poller.ts";
import { waitPoolBusy } from "../shm/wait.ts";
import { F, O } from "../ffi/layout.ts";
import { cstr } from "../ffi/mem.ts";

libc();
poller();

/** The Deno binary running the tests, for child processes. */
export const DENO: string = Deno.execPath();

/** Read permission that covers `/proc`, for tests that check fds or zombies. */
export const PROC_READ: string[] = ["/proc"];

// /proc/self is only readable with --allow-all in Deno 2, which a test with
// its own narrow permissions cannot have; these helpers read it through libc
// (the tests already hold --allow-ffi).
const lib = libc();
const linkBuf = new Uint8Array(4096);
const textDecoder = new TextDecoder();

/** Lists the open fds of this process. */
export function openFds(): number[] {
  const fds: number[] = [];
  for (let fd = 0; fd < 4096; fd++) {
    if (lib.fcntl(fd, F.GETFD, 0) !== -1) fds.push(fd);
  }
  return fds;
}

/** What an fd points to (`/proc/self/fd/<fd>`), or `undefined` if closed. */
export function fdTarget(fd: number): string | undefined {
  const n = Number(
    lib.readlink(cstr(`/proc/self/fd/${fd}`), linkBuf, BigInt(linkBuf.length)),
  );
  return n < 0 ? undefined : textDecoder.decode(linkBuf.subarray(0, n));
}

/** The open fds of another process of this user, from `/proc/<pid>/fd`. */
export function procFds(pid: number, below = 256): number[] {
  const fds: number[] = [];
  for (let fd = 0; fd < below; fd++) {
    const n = Number(
      lib.readlink(
        cstr(`/proc/${pid}/fd/${fd}`),
        linkBuf,
        BigInt(linkBuf.length),
      ),
    );
    if (n >= 0) fds.push(fd);
  }
  return fds;
}

/** What another process's fd points to, or `undefined`. */
export function procFdTarget(pid: number, fd: number): string | undefined {
  const n = Number(
    lib.readlink(
      cstr(`/proc/${pid}/fd/${fd}`),
      linkBuf,
      BigInt(linkBuf.length),
    ),
  );
  return n < 0 ? undefined : textDecoder.decode(linkBuf.subarray(0, n));
}

/** Reads a small text file through libc (for /proc), or `undefined`. */
export function readProcText(path: string): string | undefined {
  const fd = lib.open(cstr(path), O.RDONLY | O.CLOEXEC, 0);
  if (fd === -1) return undefined;
  try {
    const chunks: string[] = [];
    const buf = new Uint8Array(4096);
    for (;;) {
      const n = Number(lib.read(fd, buf, BigInt(buf.length)));
      if (n <= 0) break;
      chunks.push(textDecoder.decode(buf.subarray(0, n)));
    }
    return chunks.join("");
  } finally {
    lib.close(fd);
  }
}

/** A snapshot of the fd table, as fd number to link target. */
export type FdSnapshot = Map<number, string>;

/** Records every open fd and what it points to. */
export function fdSnapshot(): FdSnapshot {
  const snapshot: FdSnapshot = new Map();
  for (const fd of openFds()) {
    const target = fdTarget(fd);
    if (target !== undefined) snapshot.set(fd, target);
  }
  return snapshot;
}

/**
 * Throws if the fd table differs from `before`: names each fd that appeared
 * or disappeared, with its link target (such as `pipe:[1234]`).
 */
export function assertFdsUnchanged(before: FdSnapshot, what = "test"): void {
  const after = fdSnapshot();
  const appeared: string[] = [];
  const vanished: string[] = [];
  for (const [fd, target] of after) {
    if (before.get(fd) !== target) appeared.push(`${fd} -> ${target}`);
  }
  for (const [fd, target] of before) {
    if (after.get(fd) !== target) vanished.push(`${fd} -> ${target}`);
  }
  if (appeared.length > 0 || vanished.length > 0) {
    throw new Error(
      `The fd table changed during ${what}: ` +
        `opened [${appeared.join(", ")}], closed [${vanished.join(", ")}]`,
    );
  }
}

/**
 * Runs `fn`, then waits for the poller to go idle and checks that the fd
 * table is exactly as before. A failure in `fn` wins over a leak report.
 */
export async function assertNoFdLeak(
  fn: () => void | Promise<void>,
  what = "test",
): Promise<void> {
  const before = fdSnapshot();
  await fn();
  await pollerIdle();
  assertFdsUnchanged(before, what);
}

/**
 * Resolves with `promise`'s value, or rejects once `ms` have passed with an
 * error that names `what`. The timer is always cleared.
 */
export async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Timed out after ${ms} ms: ${what}`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** `n` as an unsigned LEB128 varint, as the channel codec writes counts. */
export function varint(n: number): number[] {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n % 0x80) | 0x80);
    n = Math.floor(n / 0x80);
  }
  out.push(n);
  return out;
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Whether `promise` is still pending after `ms` milliseconds. The promise
 * keeps running; attach handlers to it separately if it may reject.
 */
export async function stillPending(
  promise: Promise<unknown>,
  ms = 0,
): Promise<boolean> {
  const pending = Symbol("pending");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const marker = new Promise<symbol>((resolve) => {
    timer = setTimeout(() => resolve(pending), ms);
  });
  try {
    const winner = await Promise.race([
      promise.then(() => undefined, () => undefined),
      marker,
    ]);
    return winner === pending;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Waits until the poller has no call in flight (after the last ref'd waiter
 * left it cancels its wait through its eventfd; the call returns a moment
 * later). Needed before a test ends so the op sanitizer sees no pending op.
 * Throws after `ms` milliseconds.
 */
export async function pollerIdle(ms = 2000): Promise<void> {
  const deadline = performance.now() + ms;
  // A shared-memory wait's futex_waitv call, cancelled when its last waiter
  // left (a lock taken over from a dead holder), also returns a moment later.
  while (poller().busy || waitPoolBusy()) {
    if (performance.now() > deadline) {
      throw new Error(
        `The poller was still waiting ${ms} ms after its last ref'd waiter ` +
          `left (size ${poller().size})`,
      );
    }
    await delay(1);
  }
}

/**
 * Waits until `condition()` holds, polling every millisecond; throws after
 * `ms` milliseconds with `what` in the message.
 */
export async function until(
  condition: () => boolean,
  ms: number,
  what: string,
): Promise<void> {
  const deadline = performance.now() + ms;
  while (!condition()) {
    if (performance.now() > deadline) {
      throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    }
    await delay(1);
  }
}

/**
 * The pids of this process's children, running or not yet reaped, from
 * `/proc/self/task/<tid>/children` of every thread: the kernel lists a child
 * under the thread that started it, and `deno test` runs the tests on a
 * thread other than the process's first.
 */
export function childPids(): number[] {
  const pids: number[] = [];
  for (const tid of listDir("/proc/self/task")) {
    const text = readProcText(`/proc/self/task/${tid}/children`) ?? "";
    for (const word of text.split(/\s+/)) {
      if (word !== "") pids.push(Number(word));
    }
  }
  return pids;
}

/** The pids of this process's children that have exited but not been reaped. */
export function zombieChildren(): number[] {
  return childPids().filter((pid) => {
    const stat = readProcText(`/proc/${pid}/stat`);
    // The state follows the parenthesised command name.
    return stat !== undefined &&
      stat.slice(stat.lastIndexOf(")") + 2)[0] === "Z";
  });
}

/** Bytes `start ..< start + length` of a fixed pseudo-random sequence. */
export function pattern(length: number, start = 0): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = patternByte(start + i);
  return out;
}

/** Byte `i` of the sequence used by {@linkcode pattern}. */
export function patternByte(i: number): number {
  // Mixes the high bits in, so a repeated or swapped chunk is detected.
  return (i ^ (i >>> 8) ^ (i >>> 16) ^ (i >>> 24) ^ 0x5a) & 0xff;
}

/**
 * Checks `chunk` against the sequence of {@linkcode pattern} from `offset`;
 * throws naming the first wrong position.
 */
export function assertPattern(chunk: Uint8Array, offset: number): void {
  for (let i = 0; i < chunk.length; i++) {
    if (chunk[i] !== patternByte(offset + i)) {
      throw new Error(
        `Wrong byte at offset ${offset + i}: got ${chunk[i]}, expected ${
          patternByte(offset + i)
        }`,
      );
    }
  }
}

/** What {@linkcode runDeno} reports about a finished child. */
export interface DenoRun {
  /** The exit code. */
  code: number;
  /** The signal that ended it, if any. */
  signal: Deno.Signal | null;
  /** Everything it printed on stdout. */
  stdout: string;
  /** Everything it printed on stderr. */
  stderr: string;
  /** Wall time from start to exit, in milliseconds. */
  ms: number;
}

/**
 * Runs the Deno binary with `args` through `Deno.Command` (not the module's
 * own spawn, so it also serves tests of code that spawn depends on) and waits
 * for it to exit. After `ms` milliseconds the child is killed with SIGKILL,
 * reaped, and an error naming `what`, with the child's output, is thrown.
 * `via` is a launcher and its arguments that run the Deno binary.
 */
export async function runDeno(
  args: string[],
  ms: number,
  what: string,
  env?: Record<string, string>,
  via: readonly string[] = [],
): Promise<DenoRun> {
  const started = performance.now();
  const command = [...via, DENO, ...args];
  const child = new Deno.Command(command[0], {
    args: command.slice(1),
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output();
  const decoder = new TextDecoder();
  try {
    const result = await withTimeout(output, ms, what);
    return {
      code: result.code,
      signal: result.signal,
      stdout: decoder.decode(result.stdout),
      stderr: decoder.decode(result.stderr),
      ms: performance.now() - started,
    };
  } catch (error) {
    try {
      child.kill("SIGKILL");
    } catch {
      // It exited meanwhile.
    }
    const late = await output;
    throw new Error(
      `${(error as Error).message}; stdout: ${
        JSON.stringify(decoder.decode(late.stdout))
      }, stderr: ${JSON.stringify(decoder.decode(late.stderr))}`,
      { cause: error },
    );
  }
}

/** The path of a script under `tests/fixtures/`. */
export function fixture(name: string): string {
  return new URL(`./fixtures/${name}`, import.meta.url).pathname;
}

/**
 * Deno 2.9 runs tests with the op, resource and exit sanitizers off unless
 * `--sanitize-ops`/`--sanitize-resources` are given; spread this into a
 * `Deno.test` definition to turn them on for that test.
 */
export const SANITIZE = {
  sanitizeOps: true,
  sanitizeResources: true,
  sanitizeExit: true,
} as const;

// Directory listing through libc, for /proc/self/task (see above). A test
// helper only, so it has its own small symbol table.
const dirLib = Deno.dlopen(
  "libc.so.6",
  {
    // DIR *opendir(const char *name);
    opendir: { parameters: ["buffer"], result: "pointer" },
    // struct dirent *readdir(DIR *dirp);
    readdir: { parameters: ["pointer"], result: "pointer" },
    // int closedir(DIR *dirp);
    closedir: { parameters: ["pointer"], result: "i32" },
  } as const,
).symbols;

/** `struct dirent` (x86_64 and aarch64): the name starts at byte 19. */
const DIRENT_NAME = 19;

/** The names in a directory (without `.` and `..`), read through libc. */
export function listDir(path: string): string[] {
  const dir = dirLib.opendir(cstr(path));
  if (dir === null) throw new Error(`Cannot list ${path}`);
  const names: string[] = [];
  try {
    for (;;) {
      const entry = dirLib.readdir(dir);
      if (entry === null) break;
      const name = new Deno.UnsafePointerView(entry).getCString(DIRENT_NAME);
      if (name !== "." && name !== "..") names.push(name);
    }
  } finally {
    dirLib.closedir(dir);
  }
  return names;
}

/**
 * The system call numbers an `epoll_wait` shows in
 * `/proc/<pid>/task/<tid>/syscall`: `epoll_wait` and `epoll_pwait` on x86_64;
 * aarch64 has only `epoll_pwait`, which glibc's `epoll_wait` calls.
 */
export const EPOLL_WAIT_SYSCALLS: readonly number[] =
  Deno.build.arch === "aarch64" ? [22] : [232, 281];

/** One fd in an epoll set, from `/proc/self/fdinfo/<epfd>`. */
export interface EpollEntry {
  /** The fd number it was added under. */
  fd: number;
  /** The armed event mask (0 once a one-shot event fired). */
  events: number;
  /** `epoll_data` (for the poller: its token). */
  data: bigint;
  /** The inode of the open file behind it (`pipe:[<ino>]`). */
  ino: number;
}

/** The fds in the epoll set of `epfd`, as the kernel reports them. */
export function epollEntries(epfd: number): EpollEntry[] {
  const text = readProcText(`/proc/self/fdinfo/${epfd}`) ?? "";
  const entries: EpollEntry[] = [];
  for (const line of text.split("\n")) {
    const match = line.match(
      /^tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+).*\bino:\s*([0-9a-f]+)/,
    );
    if (match === null) continue;
    entries.push({
      fd: Number(match[1]),
      events: parseInt(match[2], 16),
      data: BigInt(`0x${match[3]}`),
      ino: parseInt(match[4], 16),
    });
  }
  return entries;
}

function isPollerEventfd(entry: EpollEntry): boolean {
  // The ffi wake path keeps an eventfd of its own in the set under token 0.
  return entry.data === 0n;
}

/**
 * The poller's epoll fd, or `undefined` while it has none (it holds one only
 * while some fd is registered).
 */
export function pollerEpfd(): number | undefined {
  const epfd = poller().epollFd;
  return epfd === -1 ? undefined : epfd;
}

/**
 * The fds in the poller's epoll set other than its own eventfd. An fd closed
 * without being removed stays listed while its open file lives on elsewhere
 * (a dup, a child).
 */
export function pollerInterest(): EpollEntry[] {
  const epfd = pollerEpfd();
  if (epfd === undefined) return [];
  const inSet = epollEntries(epfd).filter((entry) => !isPollerEventfd(entry));
  // On the aio path most fds are polled directly, outside the set.
  const direct = poller().directPolls.map(({ fd, token, kinds }) => ({
    fd,
    events: ((kinds & 1) ? EPOLLIN : 0) | ((kinds & 2) ? EPOLLOUT : 0),
    data: BigInt(token),
    ino: fdInode(fd) ?? -1,
  }));
  return [...inSet, ...direct].sort((a, b) => a.fd - b.fd);
}

const EPOLLIN = 0x1;
const EPOLLOUT = 0x4;

/**
 * How many waits of the poller are in flight right now; the design allows at
 * most one. On the `ffi` wake path: threads of this process blocked in
 * `epoll_wait` on the poller's epoll fd, from `/proc/self/task/<tid>/syscall`
 * (a call on its way into or out of the kernel is not counted, so a sample
 * can undercount but never overcount). On the `aio` path no thread waits: the
 * one AIO poll counts while it is armed and ref'd.
 */
export function pollerWaits(): number {
  const epfd = pollerEpfd();
  if (epfd === undefined) return 0;
  if (poller().wakePath.path !== "ffi") return poller().busy ? 1 : 0;
  let count = 0;
  for (const tid of listDir("/proc/self/task")) {
    const fields = readProcText(`/proc/self/task/${tid}/syscall`)?.split(" ");
    if (fields === undefined || fields.length < 2) continue;
    const nr = Number(fields[0]);
    if (
      EPOLL_WAIT_SYSCALLS.includes(nr) &&
      Number(fields[1]) === epfd
    ) {
      count++;
    }
  }
  return count;
}

/**
 * Whether the poller's wait has returned with events the JS thread has not
 * dispatched yet: on the `ffi` path, no thread is left in `epoll_wait`; on
 * the `aio` path, the poll has signalled its eventfd.
 */
export function pollerWaitReturned(): boolean {
  if (poller().wakePath.path === "ffi") return pollerWaits() === 0;
  // The eventfd's count is nonzero from the poll's completion until Deno's
  // event loop reads it on the JS thread.
  const info = readProcText(`/proc/self/fdinfo/${poller().eventFd}`) ?? "";
  return /^eventfd-count:\s*0*[1-9a-f]/m.test(info);
}

/** The inode number of a pipe or socket fd (`pipe:[<ino>]`), or `undefined`. */
export function fdInode(fd: number): number | undefined {
  const match = fdTarget(fd)?.match(/\[(\d+)\]$/);
  return match ? Number(match[1]) : undefined;
}

/**
 * Registers a test: with FFI (plus `permissions`), run under
 * {@linkcode assertNoFdLeak} with Deno's sanitizers on (Deno 2.9 turns them
 * off by default). Every test is registered this way; `Deno.test` is left
 * for a test whose fd table changes by the runtime's own doing, which says
 * why.
 *
 * @param options `ignore`: skip the test (say why where it is decided).
 */
export function test(
  name: string,
  fn: () => Promise<void> | void,
  permissions: Deno.PermissionOptionsObject = {},
  options: { ignore?: boolean } = {},
): void {
  Deno.test({
    name,
    ignore: options.ignore,
    permissions: { ffi: true, ...permissions },
    ...SANITIZE,
    fn: () => assertNoFdLeak(fn, name),
  });
}

/** Sets the calling thread's errno, as a failing libc call would. */
export function setErrno(code: number): void {
  const location = libc().__errno_location();
  if (location === null) throw new Error("no errno location");
  new Int32Array(Deno.UnsafePointerView.getArrayBuffer(location, 4))[0] = code;
}

/**
 * Makes libc's `name` return -1 with errno `code` for its next `times`
 * calls (ENOENT, which no socket call sets, stands for an errno overwritten
 * before it was read), then calls the real one again; returns how to undo
 * it.
 */
export function failLibcCall(
  name: string,
  times: number,
  code: number,
): () => void {
  const lib = libc() as unknown as Record<
    string,
    (...args: never[]) => unknown
  >;
  const real = lib[name];
  let left = times;
  lib[name] = (...args: never[]) => {
    if (left > 0) {
      left--;
      setErrno(code);
      return -1;
    }
    return real(...args);
  };
  return () => {
    lib[name] = real;
  };
}
