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

import { checkOptionsObject } from "./_socket_options.ts";
import { libc, SYS } from "./ffi/libc.ts";
import { ERRNO, errno, systemError } from "./ffi/errors.ts";
import {
  CLD,
  SIGINFO,
  type SignalName,
  signalName,
  SIGNALS,
  WAIT,
} from "./ffi/layout.ts";
import { OwnedFd } from "./ffi/fd.ts";
import { type Inspect, inspectEndpoint } from "./_inspect.ts";
import type { PipeReader, PipeWriter } from "./pipe.ts";
import { streamInUse } from "./_keys.ts";
import { checkSignal } from "./_byte_io.ts";
import {
  fileActions,
  killAndReap,
  type ParentEnds,
  planFds,
  reapBlocking,
  Reserve,
  spawnAttributes,
  start,
} from "./_spawn_setup.ts";
import {
  childEnvironment,
  requireRunPermission,
  resolveCommand,
} from "./_spawn_command.ts";

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
  /**
   * Variables to set in the child, on top of this process's environment
   * (read through libc: no `--allow-env` needed, as with `Deno.Command`).
   * An `LD_*` or `DYLD_*` variable needs `--allow-run` for every command.
   */
  env?: Record<string, string>;
  /** Start from an empty environment (only `env`). Default `false`. */
  clearEnv?: boolean;
  /**
   * The child's working directory; a relative command path is resolved
   * against it.
   */
  cwd?: string | URL;
  /**
   * Aborting sends SIGTERM to the child if it still runs (then SIGKILL
   * after `killGrace`, when set).
   */
  signal?: AbortSignal;
  /**
   * Milliseconds a child may take to exit after the SIGTERM of `await using`
   * or of an aborted `signal`, before SIGKILL follows. Default: no SIGKILL,
   * the wait lasts as long as the child runs, as with `Deno.ChildProcess`.
   */
  killGrace?: number;
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
  /**
   * Everything the child wrote to stdout.
   *
   * @throws {TypeError} When stdout was not `"piped"` (as
   * `Deno.CommandOutput` does).
   */
  readonly stdout: Uint8Array;
  /**
   * Everything the child wrote to stderr.
   *
   * @throws {TypeError} When stderr was not `"piped"`.
   */
  readonly stderr: Uint8Array;
}

/** What reading an output that was not piped does, as in Deno. */
function notPiped(name: "stdout" | "stderr"): never {
  throw new TypeError(`Cannot get '${name}': '${name}' is not piped`);
}

function validateSignal(signal: SignalName | number): number {
  const signo = typeof signal === "number" ? signal : SIGNALS[signal];
  if (!Number.isInteger(signo) || signo < 0 || signo > 64) {
    throw new TypeError(`Cannot send signal: unknown signal ${String(signal)}`);
  }
  return signo;
}

/**
 * A running child process started by {@linkcode spawn}.
 *
 * It prints with its pid and state, as
 * `ChildProcess { pid: 4242, fd: 9, state: "running" }` and, once reaped,
 * `ChildProcess { pid: 4242, state: "exited", code: 0, signal: null }`.
 *
 * @example Read a child's output, then make sure it has ended
 * ```ts
 * import { spawn } from "@conduit/ipc/spawn";
 *
 * await using child = spawn("sh", {
 *   args: ["-c", "echo hello"],
 *   stdout: "piped",
 * });
 * const text = await new Response(child.stdout).text(); // "hello\n"
 * const { success } = await child.status;
 * console.log(text.trim(), success); // hello true
 * ```
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
  #ended: ChildStatus | undefined;
  #stdin: PipeWriter | null;
  #stdout: PipeReader | null;
  #stderr: PipeReader | null;
  #signal: AbortSignal | undefined;
  #killGrace: number | undefined;
  #graceTimer: ReturnType<typeof setTimeout> | undefined;
  #refed = true;
  #onAbort = () => this.#terminate();

  /** @ignore Use {@linkcode spawn}. */
  constructor(
    pid: number,
    pidfd: number,
    stdio: ParentEnds,
    options: Pick<SpawnOptions, "signal" | "killGrace"> = {},
  ) {
    this.pid = pid;
    this.#pidfd = new OwnedFd(pidfd, "ChildProcess");
    [this.#stdin, this.#stdout, this.#stderr] = stdio;
    const { signal, killGrace } = options;
    this.#signal = signal;
    this.#killGrace = killGrace;
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
   * Sends a signal through the pidfd, so a recycled pid is never signalled.
   *
   * @param signal A signal name or number. Default `"SIGTERM"`.
   * @throws {TypeError} When the child has already been reaped.
   *
   * @example Stop a child that runs too long
   * ```ts
   * import { spawn } from "@conduit/ipc/spawn";
   *
   * const child = spawn("sleep", { args: ["60"] });
   * child.kill(); // SIGTERM
   * console.log((await child.status).signal); // "SIGTERM"
   * ```
   */
  kill(signal: SignalName | number = "SIGTERM"): void {
    const signo = validateSignal(signal);
    if (this.#exited) {
      throw new TypeError("Cannot kill child process: it has already exited");
    }
    this.#send(signo);
  }

  /**
   * Waiting for the child, and reading its piped stdout and stderr, keep
   * this process alive (the default).
   */
  ref(): void {
    this.#refed = true;
    if (this.#graceTimer !== undefined) Deno.refTimer(this.#graceTimer);
    if (!this.#exited) this.#pidfd.ref();
    this.#stdout?.ref();
    this.#stderr?.ref();
  }

  /**
   * Lets this process exit while the child still runs, and while its piped
   * stdout or stderr is being read, as `Deno.ChildProcess.unref()` does. A
   * write to its piped stdin still keeps the process alive until it is
   * done (as in Deno); `child.pipes.stdin.unref()` lets go of that too.
   *
   * @example Start a child and leave it running
   * ```ts
   * import { spawn } from "@conduit/ipc/spawn";
   *
   * const child = spawn("sleep", { args: ["1"], stdout: "null" });
   * child.unref(); // this process may exit before the child does
   * ```
   */
  unref(): void {
    this.#refed = false;
    if (this.#graceTimer !== undefined) Deno.unrefTimer(this.#graceTimer);
    if (!this.#exited) this.#pidfd.unref();
    this.#stdout?.unref();
    this.#stderr?.unref();
  }

  /**
   * Waits for the child and collects its piped stdout and stderr. Closes a
   * piped stdin first, so a child that reads it to the end can finish.
   *
   * @returns The status with everything read from the piped streams;
   * reading `stdout` or `stderr` of one that was not piped throws a
   * `TypeError`, as `Deno.ChildProcess`'s `output()` does. Streams are
   * inherited unless `spawn()` was told `stdout: "piped"` (and `stderr`):
   * unlike `Deno.Command`'s own `output()`, which pipes both by default.
   * @throws {TypeError} When a piped stdout or stderr was read already (by
   * an earlier `output()`, or through {@linkcode stdout}) or is being read.
   *
   * @example Run a command and collect what it printed
   * ```ts
   * import { spawn } from "@conduit/ipc/spawn";
   *
   * const { code, stdout, stderr } = await spawn("sh", {
   *   args: ["-c", "echo out; echo err >&2; exit 3"],
   *   stdout: "piped",
   *   stderr: "piped",
   * }).output();
   * console.log(code, new TextDecoder().decode(stdout)); // 3 "out\n"
   * console.log(new TextDecoder().decode(stderr)); // "err\n"
   * ```
   */
  async output(): Promise<ChildOutput> {
    for (
      const [name, reader] of [["stdout", this.#stdout], [
        "stderr",
        this.#stderr,
      ]] as const
    ) {
      // Read to its end (which closes it), or being read: what output()
      // would return is gone, as Deno.ChildProcess says too.
      if (reader !== null && (reader.closed || reader.readable.locked)) {
        throw new TypeError(
          `Cannot collect output: '${name}' was read already or is being read`,
        );
      }
    }
    const collect = async (reader: PipeReader | null) =>
      reader === null
        ? undefined
        : new Uint8Array(await new Response(reader.readable).arrayBuffer());
    this.#stdin?.close();
    try {
      const [stdout, stderr, status] = await Promise.all([
        collect(this.#stdout),
        collect(this.#stderr),
        this.status,
      ]);
      return {
        ...status,
        get stdout() {
          return stdout ?? notPiped("stdout");
        },
        get stderr() {
          return stderr ?? notPiped("stderr");
        },
      };
    } finally {
      this.#stdout?.close();
      this.#stderr?.close();
    }
  }

  /**
   * Sends SIGTERM if the child still runs (SIGKILL follows after
   * `killGrace`, when set), waits until it has exited and is reaped, and
   * closes its pipes, except an output whose stream is being read: that
   * read goes on to the end of the output (as with `Deno.ChildProcess`),
   * and the stream closes its pipe there.
   *
   * @example Give a child a second to clean up on SIGTERM
   * ```ts
   * import { spawn } from "@conduit/ipc/spawn";
   *
   * {
   *   await using child = spawn("sleep", { args: ["60"], killGrace: 1000 });
   *   console.log(child.pid);
   * } // SIGTERM here; SIGKILL too if the child were still running after 1 s
   * ```
   */
  async [Symbol.asyncDispose](): Promise<void> {
    this.#terminate();
    try {
      await this.status;
    } finally {
      this.#stdin?.close();
      for (const output of [this.#stdout, this.#stderr]) {
        if (output !== null && !output[streamInUse]()) output.close();
      }
    }
  }

  /**
   * Shows the pid and the state: the pidfd and whether the wait is ref'd
   * while the child runs, how it ended once reaped.
   */
  [Symbol.for("Deno.customInspect")](
    inspect: Inspect,
    options: unknown,
  ): string {
    const { pid } = this;
    const fields = !this.#exited
      ? {
        pid,
        fd: this.#pidfd.fd,
        state: "running",
        ...(this.#refed ? {} : { ref: false }),
      }
      : this.#ended === undefined
      ? { pid, state: "exited" }
      : {
        pid,
        state: "exited",
        code: this.#ended.code,
        signal: this.#ended.signal,
      };
    return inspectEndpoint("ChildProcess", fields, inspect, options);
  }

  /** SIGTERM, and SIGKILL once `killGrace` has passed; errors are ignored. */
  #terminate(): void {
    if (this.#exited) return;
    try {
      this.#send(SIGNALS.SIGTERM);
    } catch {
      // The status tells how the child ended.
    }
    if (this.#killGrace === undefined || this.#graceTimer !== undefined) {
      return;
    }
    this.#graceTimer = setTimeout(() => {
      this.#graceTimer = undefined;
      try {
        if (!this.#exited) this.#send(SIGNALS.SIGKILL);
      } catch {
        // As above.
      }
    }, this.#killGrace);
    if (!this.#refed) Deno.unrefTimer(this.#graceTimer);
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
      clearTimeout(this.#graceTimer);
      this.#graceTimer = undefined;
      this.#signal?.removeEventListener("abort", this.#onAbort);
      this.#pidfd.close();
    }
    this.#ended = statusOf(view);
    return this.#ended;
  }
}

/** How a child ended, from the `siginfo_t` that `waitid` filled. */
function statusOf(info: DataView): ChildStatus {
  const code = info.getInt32(SIGINFO.code, true);
  const value = info.getInt32(SIGINFO.status, true);
  if (code === CLD.EXITED) {
    return { success: value === 0, code: value, signal: null };
  }
  return {
    success: false,
    code: 128 + value,
    signal: signalName(value) ?? null,
  };
}

/**
 * Starts a child process.
 *
 * The FFI could bypass Deno's permissions, but spawn() requires run access
 * for the command as `Deno.Command` does: the command is resolved first (a
 * name through the `PATH` of the child's environment, a path relative to
 * the child's cwd), and run access must be granted for that path, so
 * `--allow-run=git` lets it start `git` and nothing else.
 *
 * @param command The program, looked up in `PATH` when it has no slash.
 * @param options Arguments, fds to hand over, stdio, environment.
 * @returns The running child. Its `status` resolves when it has exited.
 * @throws {Deno.errors.NotCapable} When run access is not granted for the
 * command, or `env` sets an `LD_*` or `DYLD_*` variable without
 * `--allow-run` for every command.
 * @throws {Deno.errors.NotFound} When the command or the cwd does not
 * exist, or the interpreter a script names on its `#!` line; the message
 * says which.
 * @throws {Deno.errors.NotADirectory} When the cwd is not a directory.
 * @throws {Deno.errors.PermissionDenied} When the command is not
 * executable or is a directory.
 * @throws {Deno.errors.BadResource} When an endpoint in `fds` or stdio is
 * closed, or a raw fd there is not open.
 * @throws {TypeError} When an option has the wrong type: `args` not an
 * array of strings, an `env` value not a string, an fd that is neither an
 * endpoint nor an fd number.
 *
 * @example Run a Deno child with a pipe's write end as fd 3
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
  checkOptionsObject(options, "spawn");
  const file = commandPath(command);
  const args = checkedArgs(options.args);
  checkGrace(options.killGrace);
  // Checked before anything starts (an aborted one throws its reason).
  checkSignal(options.signal, "Cannot spawn");
  const cwd = pathOf(options.cwd, "cwd");
  const env = childEnvironment(options.env, options.clearEnv);
  const path = resolveCommand(file, cwd, env);
  requireRunPermission(file, path, env);
  // Released whatever happens: the child's copies and the set-up.
  using setUp = new DisposableStack();
  // Released only when spawn() fails: this process's ends of "piped" stdio.
  using onFailure = new DisposableStack();
  const stdio = [options.stdin, options.stdout, options.stderr];
  const plan = planFds(
    stdio,
    options.fds === undefined ? [] : options.fds,
    setUp,
    onFailure,
  );
  const reserve = setUp.use(new Reserve());
  const actions = fileActions(plan, cwd, setUp);
  const attr = spawnAttributes(setUp);
  const pid = start({ file, path, args, cwd, env, actions, attr });
  const child = watch(pid, reserve, plan.parentEnds, options);
  onFailure.move();
  return child;
}

function pathOf(value: string | URL, what: string): string;
function pathOf(
  value: string | URL | undefined,
  what: string,
): string | undefined;
function pathOf(
  value: string | URL | undefined,
  what: string,
): string | undefined {
  if (!(value instanceof URL)) return value;
  // Any other scheme's path would be taken for a local one.
  if (value.protocol !== "file:") {
    throw new TypeError(
      `Cannot spawn: ${what} must be a path or a file: URL, got a URL with scheme ${value.protocol}`,
    );
  }
  return decodeURIComponent(value.pathname);
}

function commandPath(command: string | URL): string {
  const file = pathOf(command, "the command");
  if (typeof file !== "string" || file === "") {
    throw new TypeError("Cannot spawn: command must be a non-empty string");
  }
  if (file.includes("\0")) {
    throw new TypeError("Cannot spawn: the command contains a NUL byte");
  }
  return file;
}

function checkGrace(killGrace: number | undefined): void {
  if (killGrace === undefined) return;
  if (typeof killGrace !== "number") {
    throw new TypeError(
      `Cannot spawn: killGrace must be a number of milliseconds, got ${typeof killGrace}`,
    );
  }
  if (!(killGrace >= 0 && killGrace <= 2 ** 31 - 1)) {
    throw new RangeError(
      `Cannot spawn: killGrace must be from 0 to 2147483647 ms, got ${killGrace}`,
    );
  }
}

function checkedArgs(args: readonly string[] = []): readonly string[] {
  // A string is iterable too, and would run `echo h i`.
  if (!Array.isArray(args)) {
    throw new TypeError(
      `Cannot spawn: args must be an array of strings, got ${
        args === null ? "null" : typeof args
      }`,
    );
  }
  for (const [i, arg] of args.entries()) {
    if (typeof arg !== "string") {
      throw new TypeError("Cannot spawn: every argument must be a string");
    }
    // C strings end at the first NUL: the child would get part of it.
    if (arg.includes("\0")) {
      throw new TypeError(`Cannot spawn: argument ${i} contains a NUL byte`);
    }
  }
  return args;
}

/**
 * Wraps the running child. Nothing may be left running that this process
 * cannot wait for: if the pidfd cannot be opened or watched, the child is
 * killed and reaped before the error is thrown.
 */
function watch(
  pid: number,
  reserve: Reserve,
  parentEnds: ParentEnds,
  options: SpawnOptions,
): ChildProcess {
  try {
    const pidfd = reserve.pidfdOf(pid);
    try {
      return new ChildProcess(pid, pidfd, parentEnds, options);
    } catch (error) {
      libc().close(pidfd);
      throw error;
    }
  } catch (error) {
    killAndReap(pid);
    throw error;
  }
}
