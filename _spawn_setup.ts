/**
 * What `spawn()` sets up around `posix_spawnp`, and the call itself: the
 * child's fd table (stdio, handed-over fds, nothing else), its file actions
 * and attributes, the argument and environment arrays, the fd slot kept for
 * the pidfd, and the last-resort kill and reap of a child that cannot be
 * watched.
 *
 * @module
 */

import { libc, SYS } from "./ffi/libc.ts";
import {
  check,
  checkReturn,
  endpointFd,
  ERRNO,
  errno,
  systemError,
} from "./ffi/errors.ts";
import {
  EFD,
  F,
  O,
  POSIX_SPAWN,
  RLIMIT,
  SIGINFO,
  SIGNALS,
  SIZEOF,
  WAIT,
} from "./ffi/layout.ts";
import { cstr } from "./ffi/mem.ts";
import { dupCloexec } from "./ffi/fd.ts";
import { poller, type PollHandle } from "./ffi/poller.ts";
import { pipe, type PipeReader, type PipeWriter } from "./pipe.ts";
import { spawnError } from "./_spawn_command.ts";

/** Anything that owns an fd (spawn.ts's public `FdEndpoint`). */
interface HasFd {
  readonly rawFd: number;
}

/** One of stdin, stdout, stderr as spawn() accepts it. */
export type StdioChoice = "inherit" | "piped" | "null" | HasFd | undefined;

/** This process's ends of `"piped"` stdin, stdout and stderr. */
export type ParentEnds = [
  PipeWriter | null,
  PipeReader | null,
  PipeReader | null,
];

/** The child's fd table, and what this process keeps of it. */
export interface FdPlan {
  /** `[source, target]`: each source fd becomes the target fd in the child. */
  moves: [number, number][];
  /** `[target, flags]`: `/dev/null` opened as the target fd in the child. */
  opens: [number, number][];
  /** This process's ends of `"piped"` stdio. */
  parentEnds: ParentEnds;
  /** The lowest fd above every target: the child closes all from here. */
  floor: number;
}

const STDIO_NAMES = ["stdin", "stdout", "stderr"] as const;

/**
 * Plans the child's fd table: stdio, then `fds` as 3, 4, ... Every source
 * is copied above all targets (`setUp` closes the copies), so installing
 * one target can never overwrite a source that another still needs. The
 * parent's ends of new pipes go on `onFailure`.
 */
export function planFds(
  stdio: readonly StdioChoice[],
  fds: readonly (HasFd | number)[],
  setUp: DisposableStack,
  onFailure: DisposableStack,
): FdPlan {
  if (!Array.isArray(fds)) {
    throw new TypeError(
      `Cannot spawn: fds must be an array of endpoints or fds, got ${
        fds === null ? "null" : typeof fds
      }`,
    );
  }
  const room = fdLimit() - 3;
  if (fds.length > room) {
    throw new RangeError(
      `Cannot spawn: ${fds.length} fds given, more than the ${room} the child's fd table holds past 0, 1 and 2 (RLIMIT_NOFILE)`,
    );
  }
  const plan: FdPlan = {
    moves: [],
    opens: [],
    parentEnds: [null, null, null],
    floor: 3 + fds.length,
  };
  // The fds given are taken first, each checked open before any pipe or
  // copy is made: a new fd takes the lowest free number, which may be that
  // of a closed fd given here, and the child would get it in its place.
  stdio.forEach((choice, target) => {
    if (!isKeyword(choice)) {
      plan.moves.push([
        givenFd(STDIO_NAMES[target], choice, STDIO_CHOICES),
        target,
      ]);
    }
  });
  fds.forEach((value, i) =>
    plan.moves.push([givenFd(`fds[${i}]`, value), 3 + i])
  );
  stdio.forEach((choice, target) =>
    planStdio(plan, choice, target, setUp, onFailure)
  );
  const lib = libc();
  for (const move of plan.moves) {
    const copy = dupCloexec(move[0], plan.floor);
    setUp.defer(() => lib.close(copy));
    move[0] = copy;
  }
  return plan;
}

function isKeyword(
  choice: StdioChoice,
): choice is "inherit" | "piped" | "null" | undefined {
  return choice === undefined || choice === "inherit" || choice === "piped" ||
    choice === "null";
}

/** Plans a `"null"` or `"piped"` stdio; endpoints are planned already. */
function planStdio(
  plan: FdPlan,
  choice: StdioChoice,
  target: number,
  setUp: DisposableStack,
  onFailure: DisposableStack,
): void {
  if (choice === "null") {
    plan.opens.push([target, target === 0 ? O.RDONLY : O.WRONLY]);
  } else if (choice === "piped") {
    const { reader, writer } = pipe();
    if (target === 0) {
      plan.parentEnds[0] = onFailure.use(writer);
      plan.moves.push([setUp.use(reader).rawFd, 0]);
    } else {
      plan.parentEnds[target as 1 | 2] = onFailure.use(reader);
      plan.moves.push([setUp.use(writer).rawFd, target]);
    }
  }
}

/** The keywords a stdio option takes besides an endpoint or an fd. */
const STDIO_CHOICES = '"inherit", "piped", "null"';

/** The largest fd number there can be (an `int`). */
const MAX_FD = 2 ** 31 - 1;

/** This process's soft fd limit, which the child inherits. */
function fdLimit(): number {
  const limit = new BigUint64Array(SIZEOF.rlimit / 8);
  if (libc().getrlimit(RLIMIT.NOFILE, limit) !== 0) return MAX_FD;
  return limit[0] > BigInt(MAX_FD) ? MAX_FD : Number(limit[0]);
}

/**
 * The fd of an endpoint or fd number given to spawn(), checked open;
 * `keywords`, the strings the option also takes, for the message.
 */
function givenFd(
  what: string,
  value: HasFd | number,
  keywords?: string,
): number {
  const fd = typeof value === "number"
    ? value
    : typeof value === "object" && value !== null && "rawFd" in value
    ? endpointFd(value, "Cannot spawn", what)
    : undefined;
  if (fd === undefined || !Number.isInteger(fd) || fd < 0 || fd > MAX_FD) {
    // A misspelled keyword ("pipe") is named, with the ones there are.
    throw new TypeError(
      keywords !== undefined && typeof value === "string"
        ? `Cannot spawn: ${what} must be ${keywords}, an endpoint or an fd, got "${value}"`
        : `Cannot spawn: ${what} is not an endpoint or an fd`,
    );
  }
  if (libc().fcntl(fd, F.GETFD, 0) === -1) {
    throw new Deno.errors.BadResource(
      `Cannot spawn: ${what} is fd ${fd}, which is not open in this process`,
    );
  }
  return fd;
}

/**
 * The file actions that build the child's fd table from `plan` and enter
 * `cwd`; destroyed by `setUp`.
 */
export function fileActions(
  plan: FdPlan,
  cwd: string | undefined,
  setUp: DisposableStack,
): Uint8Array {
  const lib = libc();
  const fa = new Uint8Array(SIZEOF.posix_spawn_file_actions_t + 64);
  checkReturn(
    "posix_spawn_file_actions_init",
    lib.posix_spawn_file_actions_init(fa),
  );
  setUp.defer(() => lib.posix_spawn_file_actions_destroy(fa));
  const devNull = cstr("/dev/null");
  for (const [target, flags] of plan.opens) {
    checkReturn(
      "posix_spawn_file_actions_addopen",
      lib.posix_spawn_file_actions_addopen(fa, target, devNull, flags, 0),
    );
  }
  for (const [source, target] of plan.moves) {
    checkReturn(
      "posix_spawn_file_actions_adddup2",
      lib.posix_spawn_file_actions_adddup2(fa, source, target),
    );
  }
  // Close everything else in the child, including fds this process
  // inherited without CLOEXEC from its own parent.
  checkReturn(
    "posix_spawn_file_actions_addclosefrom_np",
    lib.posix_spawn_file_actions_addclosefrom_np(fa, plan.floor),
  );
  if (cwd !== undefined) {
    checkReturn(
      "posix_spawn_file_actions_addchdir_np",
      lib.posix_spawn_file_actions_addchdir_np(fa, cstr(cwd)),
    );
  }
  return fa;
}

/**
 * The spawn attributes: SIGPIPE back at its default (Deno ignores it) and
 * an empty signal mask; destroyed by `setUp`.
 */
export function spawnAttributes(setUp: DisposableStack): Uint8Array {
  const lib = libc();
  const attr = new Uint8Array(SIZEOF.posix_spawnattr_t + 64);
  const sigdefault = new Uint8Array(SIZEOF.sigset_t);
  const sigmask = new Uint8Array(SIZEOF.sigset_t);
  checkReturn("posix_spawnattr_init", lib.posix_spawnattr_init(attr));
  setUp.defer(() => lib.posix_spawnattr_destroy(attr));
  lib.sigemptyset(sigdefault);
  lib.sigaddset(sigdefault, SIGNALS.SIGPIPE);
  lib.sigemptyset(sigmask);
  checkReturn(
    "posix_spawnattr_setsigdefault",
    lib.posix_spawnattr_setsigdefault(attr, sigdefault),
  );
  checkReturn(
    "posix_spawnattr_setsigmask",
    lib.posix_spawnattr_setsigmask(attr, sigmask),
  );
  checkReturn(
    "posix_spawnattr_setflags",
    lib.posix_spawnattr_setflags(
      attr,
      POSIX_SPAWN.SETSIGDEF | POSIX_SPAWN.SETSIGMASK,
    ),
  );
  return attr;
}

/** Everything `posix_spawnp` needs, prepared by spawn(). */
export interface Launch {
  /** The command as given: the child's argv[0]. */
  file: string;
  /** What `file` resolved to: the program that runs. */
  path: string;
  args: readonly string[];
  cwd: string | undefined;
  /** `KEY=value` strings, or `null` for the live `environ`. */
  env: string[] | null;
  actions: Uint8Array;
  attr: Uint8Array;
}

/**
 * Starts the child and returns its pid. A file the kernel cannot execute
 * (a script without `#!`) runs with `/bin/sh`, as `execvp` and
 * `Deno.Command` run it.
 */
export function start(launch: Launch): number {
  const { file, path, args, cwd } = launch;
  const pid = new Int32Array(1);
  const code = posixSpawn(pid, path, [file, ...args], launch);
  if (code === 0) return pid[0];
  if (code !== ERRNO.ENOEXEC) throw spawnError(file, path, code, cwd);
  const shell = posixSpawn(pid, SHELL, [SHELL, path, ...args], launch);
  if (shell === 0) return pid[0];
  const cause = spawnError(SHELL, SHELL, shell, cwd);
  const Class = cause.constructor as ErrorConstructor;
  throw new Class(
    `Cannot spawn ${
      JSON.stringify(file)
    }: it is not in an executable format, and ${SHELL} could not run it: ${cause.message}`,
    { cause },
  );
}

const SHELL = "/bin/sh";

/**
 * One `posix_spawnp` call; returns its error number. Without `env`, the
 * child gets the live `environ`, so changes made with Deno.env.set are seen.
 */
function posixSpawn(
  pid: Int32Array,
  path: string,
  argv: readonly string[],
  { env, actions, attr }: Launch,
): number {
  const lib = libc();
  const args = stringArray(argv);
  const envArray = env === null ? null : stringArray(env);
  const envp = envArray === null
    ? Deno.UnsafePointer.create(
      new Deno.UnsafePointerView(lib.environ!).getBigUint64(0),
    )
    : Deno.UnsafePointer.of(envArray.array);
  const code = lib.posix_spawnp(
    pid,
    cstr(path),
    actions,
    attr,
    args.array,
    envp,
  );
  // The C strings must stay reachable until posix_spawnp has returned.
  void args.keep;
  void envArray?.keep;
  return code;
}

/**
 * C strings and the NULL-terminated pointer array over them; `keep` must
 * stay reachable until the array has been used.
 */
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

/**
 * What spawn() needs once the child runs, acquired before it starts: a free
 * fd slot for the pidfd (an eventfd held until then) and the poller held
 * open (its own fds) by a registration of that eventfd, so watching the
 * child needs no new fd. Near the fd limit spawn() then fails before any
 * child exists, instead of leaving one nobody waits for.
 */
export class Reserve implements Disposable {
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
export function killAndReap(pid: number): void {
  libc().kill(pid, SIGNALS.SIGKILL);
  reapBlocking(WAIT.P_PID, pid);
}

/** Waits (blocking) until a child that was sent SIGKILL is reaped. */
export function reapBlocking(idtype: number, id: number): void {
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
