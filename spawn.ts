/**
 * Spawning child processes that inherit extra fds: {@linkcode spawn}.
 *
 * Children start through `posix_spawnp` (never `fork`, which crashes every
 * child of a Deno process), with SIGPIPE back at its default and an empty
 * signal mask. Each endpoint given in `fds` becomes fd 3, 4, ... in the
 * child, and nothing else leaks in: every fd above those is closed in the
 * child, even one this process inherited without CLOEXEC. The child is watched and signalled through a pidfd, so a recycled
 * pid is never signalled and no other code's children are ever reaped.
 *
 * @example Hand a pipe's write end to a child as fd 3
 * ```ts
 * import { pipe } from "@conduit/ipc/pipe";
 * import { spawn } from "@conduit/ipc/spawn";
 *
 * const { reader, writer } = pipe();
 * const child = spawn("sh", { args: ["-c", "echo hi >&3"], fds: [writer] });
 * writer.close(); // the child holds its own copy
 * console.log(await new Response(reader.readable).text()); // "hi\n"
 * console.log(await child.status); // { success: true, code: 0, signal: null }
 * ```
 *
 * @module
 */

import { libc, SYS } from "./ffi/libc.ts";
import { check, checkReturn, ERRNO, errno, systemError } from "./ffi/errors.ts";
import {
  CLD,
  EFD,
  O,
  POSIX_SPAWN,
  SIGINFO,
  type SignalName,
  signalName,
  SIGNALS,
  SIZEOF,
  WAIT,
} from "./ffi/layout.ts";
import { cstr } from "./ffi/mem.ts";
import { dupCloexec, OwnedFd } from "./ffi/fd.ts";
import { poller, type PollHandle } from "./ffi/poller.ts";
import { pipe, type PipeReader, type PipeWriter } from "./pipe.ts";

export type { SignalName } from "./ffi/layout.ts";

/** Anything that owns an fd: every endpoint of this module. */
export interface FdEndpoint {
  /** The fd the endpoint owns. */
  readonly rawFd: number;
}

/**
 * What a child's stdin, stdout or stderr is connected to: this process's own
 * (`"inherit"`), a new pipe this process keeps the other end of
 * (`"piped"`), `/dev/null` (`"null"`), or an endpoint (its fd is given).
 */
export type Stdio = "inherit" | "piped" | "null" | FdEndpoint;

/** Options for {@linkcode spawn}. */
export interface SpawnOptions {
  /** Arguments after the command name. */
  args?: readonly string[];
  /** Endpoints (or raw fds) that become fd 3, 4, ... in the child. */
  fds?: readonly (FdEndpoint | number)[];
  /** The child's stdin. Default `"inherit"`. */
  stdin?: Stdio;
  /** The child's stdout. Default `"inherit"`. */
  stdout?: Stdio;
  /** The child's stderr. Default `"inherit"`. */
  stderr?: Stdio;
  /** Variables to set in the child, on top of this process's environment. */
  env?: Record<string, string>;
  /** Start from an empty environment (only `env`). Default `false`. */
  clearEnv?: boolean;
  /** The child's working directory. */
  cwd?: string | URL;
  /** Aborting sends SIGTERM to the child if it still runs. */
  signal?: AbortSignal;
}

/** How a child ended. */
export interface ChildStatus {
  /** Whether it exited with code 0. */
  success: boolean;
  /** Its exit code, or 128 plus the signal number when a signal ended it. */
  code: number;
  /** The signal that ended it, or `null` when it exited. */
  signal: SignalName | null;
}

/** What {@linkcode ChildProcess.output} collects. */
export interface ChildOutput extends ChildStatus {
  /** Everything the child wrote to stdout (empty unless `"piped"`). */
  stdout: Uint8Array;
  /** Everything the child wrote to stderr (empty unless `"piped"`). */
  stderr: Uint8Array;
}

const SPAWN_FLAGS = POSIX_SPAWN.SETSIGDEF | POSIX_SPAWN.SETSIGMASK;

function validateSignal(signal: SignalName | number): number {
  const signo = typeof signal === "number" ? signal : SIGNALS[signal];
  if (!Number.isInteger(signo) || signo < 0 || signo > 64) {
    throw new TypeError(`Cannot send signal: unknown signal ${String(signal)}`);
  }
  return signo;
}

/**
 * A running child process started by {@linkcode spawn}.
 */
export class ChildProcess implements AsyncDisposable {
  /** The child's process id. */
  readonly pid: number;
  /**
   * Resolves with how the child ended, once it has been reaped. Rejects
   * only when the child could not be watched (the poller failed, for
   * example at the fd limit); the child is then killed and reaped first.
   * An unobserved rejection is not reported as unhandled.
   */
  readonly status: Promise<ChildStatus>;
  #pidfd: OwnedFd;
  #exited = false;
  #stdin: PipeWriter | null;
  #stdout: PipeReader | null;
  #stderr: PipeReader | null;
  #signal: AbortSignal | undefined;
  #onAbort = () => {
    if (!this.#exited) this.#send(SIGNALS.SIGTERM);
  };

  /** @internal Use {@linkcode spawn}. */
  constructor(
    pid: number,
    pidfd: number,
    stdio: [PipeWriter | null, PipeReader | null, PipeReader | null],
    signal: AbortSignal | undefined,
  ) {
    this.pid = pid;
    this.#pidfd = new OwnedFd(pidfd, "ChildProcess");
    [this.#stdin, this.#stdout, this.#stderr] = stdio;
    this.#signal = signal;
    signal?.addEventListener("abort", this.#onAbort, { once: true });
    this.status = this.#reap();
    // A rejection must never end the process before anyone could attach a
    // handler; whoever awaits `status` still sees it.
    this.status.catch(() => {});
  }

  /** The child's stdin when `"piped"`; closing it gives the child EOF. */
  get stdin(): WritableStream<Uint8Array> {
    if (this.#stdin === null) {
      throw new TypeError('Cannot get stdin: it is not "piped"');
    }
    return this.#stdin.writable;
  }

  /** The child's stdout when `"piped"`. */
  get stdout(): ReadableStream<Uint8Array> {
    if (this.#stdout === null) {
      throw new TypeError('Cannot get stdout: it is not "piped"');
    }
    return this.#stdout.readable;
  }

  /** The child's stderr when `"piped"`. */
  get stderr(): ReadableStream<Uint8Array> {
    if (this.#stderr === null) {
      throw new TypeError('Cannot get stderr: it is not "piped"');
    }
    return this.#stderr.readable;
  }

  /** The pipe endpoints behind `"piped"` stdio, for endpoint-level I/O. */
  get pipes(): {
    stdin: PipeWriter | null;
    stdout: PipeReader | null;
    stderr: PipeReader | null;
  } {
    return { stdin: this.#stdin, stdout: this.#stdout, stderr: this.#stderr };
  }

  /** The pidfd, for interop; the child process object still owns it. */
  get rawFd(): number {
    return this.#pidfd.fd;
  }

  /**
   * Sends a signal through the pidfd.
   *
   * @param signal A signal name or number. Default `"SIGTERM"`.
   * @throws {TypeError} When the child has already been reaped.
   */
  kill(signal: SignalName | number = "SIGTERM"): void {
    const signo = validateSignal(signal);
    if (this.#exited) {
      throw new TypeError("Cannot kill child process: it has already exited");
    }
    this.#send(signo);
  }

  /** Waiting for the child keeps this process alive (the default). */
  ref(): void {
    if (!this.#exited) this.#pidfd.ref();
  }

  /** Lets this process exit while the child still runs. */
  unref(): void {
    if (!this.#exited) this.#pidfd.unref();
  }

  /**
   * Waits for the child and collects its piped stdout and stderr.
   *
   * @returns The status with everything read from the piped streams.
   */
  async output(): Promise<ChildOutput> {
    const collect = async (reader: PipeReader | null) =>
      reader === null
        ? new Uint8Array(0)
        : new Uint8Array(await new Response(reader.readable).arrayBuffer());
    this.#stdin?.close();
    try {
      const [stdout, stderr, status] = await Promise.all([
        collect(this.#stdout),
        collect(this.#stderr),
        this.status,
      ]);
      return { ...status, stdout, stderr };
    } finally {
      this.#stdout?.close();
      this.#stderr?.close();
    }
  }

  /** Kills the child if it still runs (SIGKILL), reaps it, closes its pipes. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#exited) this.#send(SIGNALS.SIGKILL);
    try {
      await this.status;
    } finally {
      this.#stdin?.close();
      this.#stdout?.close();
      this.#stderr?.close();
    }
  }

  #send(signo: number): void {
    const result = libc().pidfd_send_signal(
      BigInt(SYS.pidfd_send_signal),
      BigInt(this.#pidfd.fd),
      BigInt(signo),
      0n,
      0n,
    );
    // ESRCH: it exited and is not reaped yet; the status will tell.
    if (result === -1) {
      const code = errno();
      if (code !== ERRNO.ESRCH) throw systemError("pidfd_send_signal", code);
    }
  }

  async #reap(): Promise<ChildStatus> {
    const info = new Uint8Array(SIGINFO.size);
    const view = new DataView(info.buffer);
    const lib = libc();
    try {
      for (;;) {
        info.fill(0);
        const result = lib.waitid(
          BigInt(SYS.waitid),
          BigInt(WAIT.P_PIDFD),
          BigInt(this.#pidfd.fd),
          info,
          BigInt(WAIT.WEXITED | WAIT.WNOHANG),
          0n,
        );
        if (result === -1) {
          const code = errno();
          if (code === ERRNO.EINTR) continue;
          throw systemError("waitid", code, `pid ${this.pid}`);
        }
        if (view.getInt32(SIGINFO.pid, true) !== 0) break;
        try {
          await this.#pidfd.wait("read");
        } catch (error) {
          // Nothing else closes the pidfd, so the wait itself failed: end
          // the child rather than leave it running with nobody to reap it.
          try {
            this.#send(SIGNALS.SIGKILL);
          } catch {
            // It may be gone already; the reap below tells.
          }
          reapBlocking(WAIT.P_PIDFD, this.#pidfd.fd);
          throw error;
        }
      }
    } finally {
      this.#exited = true;
      this.#signal?.removeEventListener("abort", this.#onAbort);
      this.#pidfd.close();
    }
    const code = view.getInt32(SIGINFO.code, true);
    const value = view.getInt32(SIGINFO.status, true);
    if (code === CLD.EXITED) {
      return { success: value === 0, code: value, signal: null };
    }
    return {
      success: false,
      code: 128 + value,
      signal: signalName(value) ?? null,
    };
  }
}

/**
 * What spawn() needs once the child runs, acquired before it starts: a free
 * fd slot for the pidfd (an eventfd held until then) and the poller held
 * open (its own fds) by a registration of that eventfd, so watching the
 * child needs no new fd.
 */
class Reserve implements Disposable {
  #fd: number;
  #hold: PollHandle | undefined;

  constructor() {
    const lib = libc();
    this.#fd = check("eventfd", lib.eventfd(0, EFD.CLOEXEC));
    try {
      this.#hold = poller().register(this.#fd);
    } catch (error) {
      lib.close(this.#fd);
      throw error;
    }
  }

  /**
   * Opens a pidfd for `pid`. When the fd table is full, gives back what it
   * holds (the slot, and the poller's fds when nothing else keeps the poller
   * open, which it reopens with them) and tries once more; another thread
   * may still take them first.
   */
  pidfdOf(pid: number): number {
    const lib = libc();
    const open = () => lib.pidfd_open(BigInt(SYS.pidfd_open), BigInt(pid), 0n);
    let pidfd = open();
    if (pidfd === -1 && this.#fd !== -1) {
      const code = errno();
      if (code !== ERRNO.EMFILE && code !== ERRNO.ENFILE) {
        throw systemError("pidfd_open", code, `pid ${pid}`);
      }
      this[Symbol.dispose]();
      pidfd = open();
    }
    if (pidfd === -1) throw systemError("pidfd_open", errno(), `pid ${pid}`);
    return pidfd;
  }

  [Symbol.dispose](): void {
    // The eventfd was never armed, so the handle has nothing in epoll.
    this.#hold?.close();
    this.#hold = undefined;
    if (this.#fd !== -1) libc().close(this.#fd);
    this.#fd = -1;
  }
}

/**
 * Ends a child this process cannot watch: SIGKILL, then a blocking reap of
 * that pid only (a child not yet reaped keeps its pid, so nothing else is
 * signalled or reaped).
 */
function killAndReap(pid: number): void {
  libc().kill(pid, SIGNALS.SIGKILL);
  reapBlocking(WAIT.P_PID, pid);
}

/** Waits (blocking) until a child that was sent SIGKILL is reaped. */
function reapBlocking(idtype: number, id: number): void {
  const lib = libc();
  const info = new Uint8Array(SIGINFO.size);
  for (;;) {
    const result = lib.waitid(
      BigInt(SYS.waitid),
      BigInt(idtype),
      BigInt(id),
      info,
      BigInt(WAIT.WEXITED),
      0n,
    );
    if (result !== -1 || errno() !== ERRNO.EINTR) return;
  }
}

/** C strings packed into one buffer, with a NULL-terminated pointer array. */
function stringArray(values: readonly string[]): {
  keep: Uint8Array[];
  array: BigUint64Array<ArrayBuffer>;
} {
  const keep = values.map((value) => cstr(value));
  const array = new BigUint64Array(new ArrayBuffer((keep.length + 1) * 8 + 64));
  keep.forEach((bytes, i) => {
    array[i] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes)));
  });
  return { keep, array };
}

function environment(options: SpawnOptions): string[] | null {
  if (!options.clearEnv && options.env === undefined) return null;
  const merged: Record<string, string> = options.clearEnv
    ? {}
    : Deno.env.toObject();
  for (const [key, value] of Object.entries(options.env ?? {})) {
    if (key === "" || key.includes("=")) {
      throw new TypeError(
        `Cannot spawn: invalid environment variable name ${
          JSON.stringify(key)
        }`,
      );
    }
    merged[key] = String(value);
  }
  return Object.entries(merged).map(([key, value]) => `${key}=${value}`);
}

function fdOf(what: string, value: FdEndpoint | number): number {
  const fd = typeof value === "number" ? value : value?.rawFd;
  if (!Number.isInteger(fd) || fd < 0) {
    throw new TypeError(`Cannot spawn: ${what} is not an endpoint or an fd`);
  }
  return fd;
}

/**
 * Starts a child process.
 *
 * @param command The program, looked up in `PATH` when it has no slash.
 * @param options Arguments, fds to hand over, stdio, environment.
 * @returns The running child. Its `status` resolves when it has exited.
 * @throws {Deno.errors.NotFound} When the command does not exist.
 *
 * @example Run a Deno child with a socket and a pipe as fd 3 and 4
 * ```ts ignore
 * import { pipe, spawn } from "@conduit/ipc";
 *
 * const { reader, writer } = pipe();
 * await using child = spawn(Deno.execPath(), {
 *   args: ["run", "--allow-ffi", "child.ts"],
 *   fds: [writer],
 *   stdout: "piped",
 * });
 * writer.close();
 * ```
 */
export function spawn(
  command: string | URL,
  options: SpawnOptions = {},
): ChildProcess {
  const file = command instanceof URL
    ? decodeURIComponent(command.pathname)
    : command;
  if (typeof file !== "string" || file === "") {
    throw new TypeError("Cannot spawn: command must be a non-empty string");
  }
  const args = options.args ?? [];
  for (const arg of args) {
    if (typeof arg !== "string") {
      throw new TypeError("Cannot spawn: every argument must be a string");
    }
  }
  if (options.signal?.aborted) throw options.signal.reason;

  const lib = libc();
  // [source fd, target fd] pairs to install in the child.
  const moves: [number, number][] = [];
  const opens: [number, number][] = []; // [target, flags] for /dev/null
  const parentEnds: [PipeWriter | null, PipeReader | null, PipeReader | null] =
    [null, null, null];
  const fa = new Uint8Array(SIZEOF.posix_spawn_file_actions_t + 64);
  const attr = new Uint8Array(SIZEOF.posix_spawnattr_t + 64);
  const sigset = new Uint8Array(SIZEOF.sigset_t);
  const empty = new Uint8Array(SIZEOF.sigset_t);
  // Released whatever happens: the child's copies and the set-up.
  using setUp = new DisposableStack();
  // Released only when spawn() fails: this process's ends of "piped" stdio.
  using onFailure = new DisposableStack();

  const stdio = [options.stdin, options.stdout, options.stderr];
  stdio.forEach((choice = "inherit", target) => {
    if (choice === "inherit") return;
    if (choice === "null") {
      opens.push([target, target === 0 ? O.RDONLY : O.WRONLY]);
    } else if (choice === "piped") {
      const p = pipe();
      if (target === 0) {
        parentEnds[0] = onFailure.use(p.writer);
        setUp.use(p.reader);
        moves.push([p.reader.rawFd, 0]);
      } else {
        parentEnds[target as 1 | 2] = onFailure.use(p.reader);
        setUp.use(p.writer);
        moves.push([p.writer.rawFd, target]);
      }
    } else {
      moves.push([
        fdOf(["stdin", "stdout", "stderr"][target], choice),
        target,
      ]);
    }
  });
  (options.fds ?? []).forEach((value, i) => {
    moves.push([fdOf(`fds[${i}]`, value), 3 + i]);
  });

  // Copy every source above all targets first, so installing one target
  // can never overwrite a source that another target still needs.
  const floor = 3 + (options.fds?.length ?? 0);
  for (const move of moves) {
    const temp = dupCloexec(move[0], floor);
    setUp.defer(() => lib.close(temp));
    move[0] = temp;
  }

  // Everything the parent needs once the child runs is acquired now: an fd
  // kept free for the pidfd, and the poller held open (its own fds) so the
  // child can be watched. Near the fd limit spawn() then fails before any
  // child exists, instead of leaving one nobody waits for.
  const reserve = new Reserve();
  setUp.use(reserve);

  checkReturn(
    "posix_spawn_file_actions_init",
    lib.posix_spawn_file_actions_init(fa),
  );
  setUp.defer(() => lib.posix_spawn_file_actions_destroy(fa));
  const devNull = cstr("/dev/null");
  for (const [target, flags] of opens) {
    checkReturn(
      "posix_spawn_file_actions_addopen",
      lib.posix_spawn_file_actions_addopen(fa, target, devNull, flags, 0),
    );
  }
  for (const [source, target] of moves) {
    checkReturn(
      "posix_spawn_file_actions_adddup2",
      lib.posix_spawn_file_actions_adddup2(fa, source, target),
    );
  }
  // Close everything else in the child, including fds this process
  // inherited without CLOEXEC from its own parent.
  checkReturn(
    "posix_spawn_file_actions_addclosefrom_np",
    lib.posix_spawn_file_actions_addclosefrom_np(fa, floor),
  );
  if (options.cwd !== undefined) {
    const dir = options.cwd instanceof URL
      ? decodeURIComponent(options.cwd.pathname)
      : options.cwd;
    checkReturn(
      "posix_spawn_file_actions_addchdir_np",
      lib.posix_spawn_file_actions_addchdir_np(fa, cstr(dir)),
    );
  }

  checkReturn("posix_spawnattr_init", lib.posix_spawnattr_init(attr));
  setUp.defer(() => lib.posix_spawnattr_destroy(attr));
  lib.sigemptyset(sigset);
  lib.sigaddset(sigset, SIGNALS.SIGPIPE);
  lib.sigemptyset(empty);
  checkReturn(
    "posix_spawnattr_setsigdefault",
    lib.posix_spawnattr_setsigdefault(attr, sigset),
  );
  checkReturn(
    "posix_spawnattr_setsigmask",
    lib.posix_spawnattr_setsigmask(attr, empty),
  );
  checkReturn(
    "posix_spawnattr_setflags",
    lib.posix_spawnattr_setflags(attr, SPAWN_FLAGS),
  );

  const argv = stringArray([file, ...args]);
  const env = environment(options);
  // Without env options the child gets the live `environ`, so changes
  // made with Deno.env.set are seen and no --allow-env is needed.
  const envArray = env === null ? null : stringArray(env);
  const envp = envArray === null
    ? Deno.UnsafePointer.create(
      new Deno.UnsafePointerView(lib.environ!).getBigUint64(0),
    )
    : Deno.UnsafePointer.of(envArray.array);
  const pidBuf = new Int32Array(1);
  const code = lib.posix_spawnp(
    pidBuf,
    cstr(file),
    fa,
    attr,
    argv.array,
    envp,
  );
  if (code !== 0) {
    throw systemError(
      "posix_spawnp",
      code,
      `command ${JSON.stringify(file)}`,
    );
  }
  // The C strings must stay reachable until posix_spawnp has returned.
  void argv.keep;
  void envArray?.keep;
  const pid = pidBuf[0];
  let child: ChildProcess;
  try {
    const pidfd = reserve.pidfdOf(pid);
    try {
      child = new ChildProcess(pid, pidfd, parentEnds, options.signal);
    } catch (error) {
      lib.close(pidfd);
      throw error;
    }
  } catch (error) {
    // Nothing may be left running that this process cannot wait for.
    killAndReap(pid);
    throw error;
  }
  onFailure.move();
  return child;
}
