/**
 * `cli.ts doctor`: what the module needs on this machine, as a table of
 * probes run in order by {@linkcode doctor}.
 *
 * @module
 */

import { libc, platformProblem, SYS } from "./ffi/libc.ts";
import { errno, errnoName } from "./ffi/errors.ts";
import { F, MMAP, O, RLIMIT, SIZEOF, SOCK, SOCKADDR_UN } from "./ffi/layout.ts";
import { cstr } from "./ffi/mem.ts";
import { wakePath } from "./ffi/poller.ts";
import { requirePath } from "./_permissions.ts";
import { randomName } from "./_unix_addr.ts";

/**
 * One check of {@linkcode doctor}.
 *
 * @example Print failed checks
 * ```ts
 * import { doctor, type DoctorCheck } from "@conduit/ipc/cli";
 *
 * const failed: DoctorCheck[] = (await doctor()).filter((c) => !c.ok);
 * for (const c of failed) console.log(c.name, c.fix);
 * ```
 */
export interface DoctorCheck {
  /** What was checked, such as `"memfd_create"`. */
  name: string;
  /** Whether the module cannot work without it (a failure is then fatal). */
  required: boolean;
  /** Whether it works. */
  ok: boolean;
  /** What was found, such as the version or the errno. */
  detail: string;
  /** What to do when it does not work. */
  fix?: string;
  /**
   * Set when the check could not run (no `--allow-ffi`, or no
   * `--allow-write` for `/dev/shm`); `ok` is then false.
   */
  skipped?: boolean;
}

/** One row of the table: what it checks and how. */
interface Probe {
  name: string;
  required: boolean;
  /** What to do when the probe fails. */
  fix: string;
  /** The name of an earlier probe that must pass for this one to run. */
  needs?: string;
  /** Returns what was found; throws with why it does not work. */
  run(): string | Promise<string>;
}

const MIN_FDS = 1024;

const FFI = "--allow-ffi";
const WAKE_ENV = "CONDUIT_IPC_WAKE";

const PROBES: readonly Probe[] = [
  {
    name: "Deno version",
    required: true,
    fix:
      "upgrade Deno to 2.0 or later (deno upgrade): FFI is stable from Deno 2",
    run: probeDenoVersion,
  },
  {
    name: "platform",
    required: true,
    fix:
      "use x86_64 or aarch64 Linux with glibc: the module's struct layouts and syscall numbers are for those platforms",
    run: probePlatform,
  },
  {
    name: FFI,
    required: true,
    fix:
      "run with --allow-ffi (granting it at a prompt is not enough: libc may then fail to load)",
    run: probeFfiPermission,
  },
  {
    name: "libc",
    required: true,
    needs: FFI,
    fix:
      "use a glibc-based Linux (Debian, Ubuntu, Fedora, ...): the module loads libc.so.6, which musl systems such as Alpine lack",
    run: probeLibc,
  },
  {
    name: "memfd_create",
    required: true,
    needs: FFI,
    fix:
      "needs Linux 3.17 or later; in a container, allow memfd_create in the seccomp profile",
    run: probeMemfd,
  },
  {
    name: "pidfd_open",
    required: true,
    needs: FFI,
    fix:
      "needs Linux 5.4 or later (pidfd_open and waitid(P_PIDFD)); in a container, allow pidfd_open in the seccomp profile",
    run: probePidfd,
  },
  {
    name: "SOCK_SEQPACKET",
    required: true,
    needs: FFI,
    fix:
      "needs AF_UNIX SOCK_SEQPACKET sockets; in a sandbox, allow socket(AF_UNIX, SOCK_SEQPACKET)",
    run: probeSeqpacket,
  },
  {
    name: "wake path",
    required: false,
    needs: FFI,
    fix:
      "the uring path needs Linux 5.5 or later with io_uring allowed (seccomp, kernel.io_uring_disabled) and Deno's pipe_wrap binding; without it the aio path needs Linux 4.18 or later with io_submit allowed and room in fs.aio-max-nr; without both the ffi fallback works, with two thread hand-offs per wake (shm queue doorbells then wait through the poller too)",
    run: probeWakePath,
  },
  {
    name: "abstract sockets",
    required: true,
    needs: FFI,
    fix:
      "abstract Unix socket names need a Linux network namespace that allows them (some sandboxes block them); listen({ path }) still works",
    run: probeAbstract,
  },
  {
    name: "/dev/shm",
    required: false,
    needs: FFI,
    fix:
      "mount a tmpfs on /dev/shm (Docker: --shm-size); only named shared memory (SharedMemory.create with a name) needs it",
    run: probeDevShm,
  },
  {
    name: "pipe capacity",
    required: false,
    needs: FFI,
    fix:
      "pipe({ bytes: 1 << 20 }) needs /proc/sys/fs/pipe-max-size of 1048576 or more (as root: sysctl fs.pipe-max-size=1048576)",
    run: probePipeCapacity,
  },
  {
    name: "fd limit",
    required: false,
    needs: FFI,
    fix:
      `raise the soft limit to ${MIN_FDS} or more before starting Deno: ulimit -n 4096`,
    run: probeFdLimit,
  },
];

/**
 * Checks what the module needs on this machine: Deno 2 or later, x86_64 or
 * aarch64 Linux with glibc, `--allow-ffi`, glibc's libc, `memfd_create`, `pidfd_open`,
 * `SOCK_SEQPACKET`, the abstract socket namespace, `/dev/shm`, a 1 MiB pipe
 * capacity and the fd limit. Never throws: each problem becomes a failed
 * check with what to do about it.
 *
 * @returns One entry per check, in order.
 *
 * @example Is this machine ready?
 * ```ts
 * import { doctor } from "@conduit/ipc/cli";
 *
 * const checks = await doctor();
 * const ready = checks.every((c) => c.ok || !c.required);
 * console.log(ready ? "ready" : "missing something");
 * ```
 */
export async function doctor(): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  const passed = new Set<string>();
  for (const probe of PROBES) {
    const result = probe.needs !== undefined && !passed.has(probe.needs)
      ? skipped(probe)
      : await runProbe(probe);
    if (result.ok) passed.add(probe.name);
    checks.push(result);
  }
  return checks;
}

async function runProbe(probe: Probe): Promise<DoctorCheck> {
  const { name, required, fix } = probe;
  try {
    return { name, required, ok: true, detail: await probe.run() };
  } catch (error) {
    const detail = error instanceof Error ? error.message : String(error);
    // A permission this run was not given: the check did not run.
    if (error instanceof Deno.errors.NotCapable) {
      return { name, required, ok: false, detail, skipped: true };
    }
    return { name, required, ok: false, detail, fix };
  }
}

function skipped({ name, required, needs }: Probe): DoctorCheck {
  const detail = `not checked: needs ${needs}`;
  return { name, required, ok: false, detail, skipped: true };
}

/** Throws with the errno name when a libc call returned -1. */
function ok(what: string, result: number): number {
  if (result === -1) throw new Error(`${what} failed: ${errnoName(errno())}`);
  return result;
}

function probeDenoVersion(): string {
  const version = Deno.version.deno;
  if (Number(version.split(".")[0]) < 2) {
    throw new Error(`Deno ${version} is older than 2.0`);
  }
  return version;
}

function probePlatform(): string {
  const problem = platformProblem(Deno.build);
  if (problem !== undefined) throw new Error(problem);
  const { os, arch, env } = Deno.build;
  return `${os} ${arch} ${env}`;
}

async function probeFfiPermission(): Promise<string> {
  const { state } = await Deno.permissions.query({ name: "ffi" });
  if (state !== "granted") throw new Error(`not granted (${state})`);
  return "granted";
}

function probeLibc(): string {
  libc();
  return "libc.so.6 loaded";
}

function probeMemfd(): string {
  const lib = libc();
  const name = cstr("conduit-doctor");
  lib.close(ok("memfd_create", lib.memfd_create(name, MMAP.MFD_CLOEXEC)));
  return "anonymous shared memory works";
}

function probePidfd(): string {
  const lib = libc();
  const pid = BigInt(lib.getpid());
  lib.close(ok("pidfd_open", lib.pidfd_open(BigInt(SYS.pidfd_open), pid, 0n)));
  return "children are waited for and signalled by pidfd";
}

function probeSeqpacket(): string {
  const lib = libc();
  const type = SOCK.SEQPACKET | SOCK.CLOEXEC;
  const what = "socket(AF_UNIX, SOCK_SEQPACKET)";
  lib.close(ok(what, lib.socket(SOCK.AF_UNIX, type, 0)));
  return "message sockets available";
}

function probeWakePath(): string {
  const { path, reason } = wakePath();
  // Without the permission the variable is never read: say so, or a user
  // who set it would take the path shown for the one it forces.
  const { state } = Deno.permissions.querySync({
    name: "env",
    variable: WAKE_ENV,
  });
  const unread = state === "granted"
    ? ""
    : ` (${WAKE_ENV} is read only with --allow-env)`;
  if (path === "ffi") {
    throw new Error(`ffi fallback in use: ${reason}${unread}`);
  }
  // The same binding reads shm queue doorbells in the main thread.
  return `${path}: ${reason}; shm queue doorbells are read by Deno's event loop${unread}`;
}

function probeAbstract(): string {
  const lib = libc();
  const fd = ok(
    "socket(AF_UNIX, SOCK_STREAM)",
    lib.socket(SOCK.AF_UNIX, SOCK.STREAM | SOCK.CLOEXEC, 0),
  );
  try {
    const name = new TextEncoder().encode(
      `conduit-doctor-${lib.getpid()}-${crypto.randomUUID()}`,
    );
    const addr = new Uint8Array(SOCKADDR_UN.size);
    new DataView(addr.buffer).setUint16(SOCKADDR_UN.family, SOCK.AF_UNIX, true);
    // A leading NUL byte puts the name in the abstract namespace.
    addr.set(name, SOCKADDR_UN.path + 1);
    ok("bind", lib.bind(fd, addr, SOCKADDR_UN.path + 1 + name.length));
    return "abstract names bind";
  } finally {
    lib.close(fd);
  }
}

function probeDevShm(): string {
  const lib = libc();
  // A name nobody can guess: another user who made ours first would make
  // the check fail with EEXIST.
  const name = `conduit-doctor-${randomName(32)}`;
  // As SharedMemory.create() would: the probe writes there too.
  requirePath("/dev/shm", ["write"], "Cannot check /dev/shm");
  const path = cstr(`/${name}`);
  const flags = O.CREAT | O.EXCL | O.RDWR | O.CLOEXEC;
  lib.close(ok("shm_open", lib.shm_open(path, flags, 0o600)));
  lib.shm_unlink(path);
  return "named shared memory works";
}

function probePipeCapacity(): string {
  const lib = libc();
  const fds = new Int32Array(2);
  ok("pipe2", lib.pipe2(fds, O.CLOEXEC));
  try {
    const size = ok(
      "fcntl(F_SETPIPE_SZ, 1 MiB)",
      lib.fcntl(fds[1], F.SETPIPE_SZ, 1 << 20),
    );
    return `${size >> 10} KiB pipes available`;
  } finally {
    lib.close(fds[0]);
    lib.close(fds[1]);
  }
}

function probeFdLimit(): string {
  const buf = new BigUint64Array(SIZEOF.rlimit / 8);
  ok("getrlimit", libc().getrlimit(RLIMIT.NOFILE, buf));
  const show = (v: bigint) =>
    v === 0xffffffffffffffffn ? "unlimited" : String(v);
  const [soft, hard] = buf;
  const text = `soft ${show(soft)}, hard ${show(hard)}`;
  if (soft < BigInt(MIN_FDS)) {
    throw new Error(
      `${text}: below ${MIN_FDS}, programs with many endpoints may hit EMFILE`,
    );
  }
  return text;
}
