/**
 * Struct layouts and constants for Linux with glibc on x86_64 and aarch64,
 * in one place. Each field is listed with its byte offset. Most are the same
 * on both; where they differ (open flags, `struct epoll_event`, `struct
 * stat`) each architecture has its own table and the exported one is chosen
 * by `Deno.build.arch`. tests/arch_test.ts checks every table against the C
 * headers of both (tests/fixtures/layout.c).
 *
 * On any other platform the x86_64 tables stand in, unused: the first libc
 * call refuses the platform (`libc()` in ./libc.ts).
 *
 * @module
 */

/** The architectures whose tables this module holds. */
export type Arch = "x86_64" | "aarch64";

/** This process's architecture (x86_64 standing in for unsupported ones). */
export const ARCH: Arch = Deno.build.arch === "aarch64" ? "aarch64" : "x86_64";

/** Open and fd flags. */
export type OpenFlags = {
  readonly RDONLY: number;
  readonly WRONLY: number;
  readonly RDWR: number;
  readonly ACCMODE: number;
  readonly CREAT: number;
  readonly EXCL: number;
  readonly NONBLOCK: number;
  readonly DIRECTORY: number;
  readonly NOFOLLOW: number;
  readonly CLOEXEC: number;
};

const O_COMMON = {
  RDONLY: 0,
  WRONLY: 1,
  RDWR: 2,
  ACCMODE: 3,
  CREAT: 0o100,
  EXCL: 0o200,
  NONBLOCK: 0o4000,
  CLOEXEC: 0o2000000,
} as const;

/** Open flags per architecture: `O_DIRECTORY` and `O_NOFOLLOW` differ. */
const O_BY_ARCH: Readonly<Record<Arch, OpenFlags>> = {
  x86_64: { ...O_COMMON, DIRECTORY: 0o200000, NOFOLLOW: 0o400000 },
  aarch64: { ...O_COMMON, DIRECTORY: 0o40000, NOFOLLOW: 0o100000 },
};

/** Open and fd flags of this architecture. */
export const O: OpenFlags = O_BY_ARCH[ARCH];

/** The `*at` calls: the current directory, and flags. */
export const AT = {
  FDCWD: -100,
  SYMLINK_NOFOLLOW: 0x100,
  REMOVEDIR: 0x200,
} as const;

/** `renameat2` flags. */
export const RENAME = { NOREPLACE: 1, EXCHANGE: 2 } as const;

/** fcntl commands. */
export const F = {
  DUPFD_CLOEXEC: 1030,
  GETFD: 1,
  SETFD: 2,
  GETFL: 3,
  SETFL: 4,
  SETPIPE_SZ: 1031,
  GETPIPE_SZ: 1032,
  ADD_SEALS: 1033,
  GET_SEALS: 1034,
  FD_CLOEXEC: 1,
} as const;

/** preadv2/pwritev2 flag: fail with EAGAIN instead of blocking. */
export const RWF_NOWAIT = 8;

/** epoll constants. */
export const EPOLL = {
  CLOEXEC: 0o2000000,
  CTL_ADD: 1,
  CTL_DEL: 2,
  CTL_MOD: 3,
  IN: 0x001,
  OUT: 0x004,
  ERR: 0x008,
  HUP: 0x010,
  RDHUP: 0x2000,
  ONESHOT: 1 << 30,
} as const;

/** `struct epoll_event`: its size and field offsets. */
export type EpollEventLayout = {
  readonly size: number;
  readonly events: number;
  readonly data: number;
};

/**
 * `struct epoll_event` per architecture: packed on x86_64 (12 bytes: 0
 * events u32, 4 data u64), naturally aligned on aarch64 (16 bytes: 0 events
 * u32, 8 data u64).
 */
const EPOLL_EVENT_BY_ARCH: Readonly<Record<Arch, EpollEventLayout>> = {
  x86_64: { size: 12, events: 0, data: 4 },
  aarch64: { size: 16, events: 0, data: 8 },
};

/** `struct epoll_event` of this architecture. */
export const EPOLL_EVENT: EpollEventLayout = EPOLL_EVENT_BY_ARCH[ARCH];

/**
 * Linux AIO: `struct iocb` (64 bytes) and `struct io_event` (32 bytes), the
 * same on every 64-bit little-endian architecture. `IOCB_CMD_POLL` keeps the
 * poll event mask in `aio_buf`; `IOCB_FLAG_RESFD` signals `aio_resfd` (an
 * eventfd) when the request completes.
 */
export const IOCB = {
  size: 64,
  data: 0,
  lioOpcode: 16,
  fildes: 20,
  buf: 24,
  flags: 56,
  resfd: 60,
  CMD_POLL: 5,
  FLAG_RESFD: 1,
} as const;

/**
 * `struct io_uring_params` (120 bytes) with the fields of its
 * `io_sqring_offsets` (at 40) and `io_cqring_offsets` (at 80) that the
 * `uring` wake path reads, and the `io_uring_setup`, `mmap` and
 * `io_uring_register` constants it uses; the same on every 64-bit Linux.
 */
export const URING_PARAMS = {
  size: 120,
  sqEntries: 0,
  cqEntries: 4,
  flags: 8,
  features: 20,
  sqHead: 40,
  sqTail: 44,
  sqMask: 48,
  sqArray: 64,
  cqHead: 80,
  cqTail: 84,
  cqMask: 88,
  cqes: 100,
  SETUP_CQSIZE: 8,
  FEAT_SINGLE_MMAP: 1,
  FEAT_NODROP: 2,
  OFF_SQ_RING: 0,
  OFF_CQ_RING: 0x8000000,
  OFF_SQES: 0x10000000,
  REGISTER_EVENTFD: 4,
} as const;

/**
 * `struct io_uring_sqe` (64 bytes), the fields of a poll request, and the
 * two poll opcodes; `pollEvents` is `poll32_events`.
 */
export const URING_SQE = {
  size: 64,
  opcode: 0,
  fd: 4,
  addr: 16,
  pollEvents: 28,
  userData: 32,
  OP_POLL_ADD: 6,
  OP_POLL_REMOVE: 7,
} as const;

/** `struct io_uring_cqe`: 0 user_data u64, 8 res i32, 12 flags u32. */
export const URING_CQE = { size: 16, userData: 0, res: 8 } as const;

/** `struct io_event`: 0 data u64, 8 obj u64, 16 res i64, 24 res2 i64. */
export const IO_EVENT = { size: 32, data: 0, res: 16 } as const;

/** `struct timespec`: 16 bytes. 0 sec i64, 8 nsec i64. */
export const TIMESPEC = { size: 16, sec: 0, nsec: 8 } as const;

/** eventfd flags. */
export const EFD = { CLOEXEC: 0o2000000, NONBLOCK: 0o4000 } as const;

/** Socket constants. */
export const SOCK = {
  AF_UNIX: 1,
  AF_INET: 2,
  AF_INET6: 10,
  STREAM: 1,
  DGRAM: 2,
  SEQPACKET: 5,
  NONBLOCK: 0o4000,
  CLOEXEC: 0o2000000,
  SOL_SOCKET: 1,
  SO_TYPE: 3,
  SO_SNDBUF: 7,
  SO_RCVBUF: 8,
  SO_PEERCRED: 17,
  SO_DOMAIN: 39,
  SO_ACCEPTCONN: 30,
  SCM_RIGHTS: 1,
  SCM_CREDENTIALS: 2,
  SCM_SECURITY: 3,
  SCM_PIDFD: 4,
  // Receive timestamps, with the socket options that ask for them: data
  // only, no fds. The _NEW kinds are the y2038-safe layouts.
  SCM_TIMESTAMP: 29,
  SCM_TIMESTAMPNS: 35,
  SCM_TIMESTAMPING: 37,
  SO_TIMESTAMP_NEW: 63,
  SO_TIMESTAMPNS_NEW: 64,
  SO_TIMESTAMPING_NEW: 65,
  // A stream socket's bytes still queued, with SO_INQ (Linux 6.16): data.
  SCM_INQ: 84,
  SHUT_RD: 0,
  SHUT_WR: 1,
  SHUT_RDWR: 2,
} as const;

/** send/recv flags. */
export const MSG = {
  PEEK: 0x02,
  CTRUNC: 0x08,
  TRUNC: 0x20,
  DONTWAIT: 0x40,
  NOSIGNAL: 0x4000,
  CMSG_CLOEXEC: 0x40000000,
} as const;

/** `struct iovec`: 16 bytes. 0 base pointer, 8 len u64. */
export const IOVEC = { size: 16, base: 0, len: 8 } as const;

/**
 * `struct msghdr`: 56 bytes. 0 name, 8 namelen u32, 16 iov, 24 iovlen u64,
 * 32 control, 40 controllen u64, 48 flags i32.
 */
export const MSGHDR = {
  size: 56,
  name: 0,
  namelen: 8,
  iov: 16,
  iovlen: 24,
  control: 32,
  controllen: 40,
  flags: 48,
} as const;

/**
 * `struct cmsghdr`: a 16-byte header, 0 len u64, 8 level i32, 12 type i32,
 * then the data (for SCM_RIGHTS, the int fds) at 16.
 */
export const CMSGHDR = {
  size: 16,
  len: 0,
  level: 8,
  type: 12,
  data: 16,
} as const;

/**
 * `struct mmsghdr` (for `sendmmsg`): 64 bytes. 0 msg_hdr (a msghdr),
 * 56 msg_len u32, then padding.
 */
export const MMSGHDR = { size: 64, hdr: 0 } as const;

/** CMSG_SPACE for `n` bytes of data: the header plus the data, 8-aligned. */
export function cmsgSpace(n: number): number {
  return CMSGHDR.size + ((n + 7) & ~7);
}

/** CMSG_LEN for `n` bytes of data: the header plus the data, unaligned. */
export function cmsgLen(n: number): number {
  return CMSGHDR.size + n;
}

/** `struct sockaddr_un`: 110 bytes. 0 family u16, 2 path (108 bytes). */
export const SOCKADDR_UN = {
  size: 110,
  family: 0,
  path: 2,
  pathMax: 108,
} as const;

/** `struct ucred`: 12 bytes. 0 pid i32, 4 uid u32, 8 gid u32. */
export const UCRED = { size: 12, pid: 0, uid: 4, gid: 8 } as const;

/**
 * `struct statfs`: 120 bytes on both architectures; `f_type` (the file
 * system's magic number) first, a word.
 */
export const STATFS = { size: 120, type: 0 } as const;

/** File system magic numbers (`f_type` of `statfs`). */
export const FS_MAGIC = {
  /** tmpfs and shmem, where memfds live (not those of `MFD_HUGETLB`). */
  TMPFS: 0x01021994,
} as const;

/** `poll` event bits. */
export const POLL = { IN: 0x001, RDHUP: 0x2000 } as const;

/** `struct pollfd`: 8 bytes. 0 fd i32, 4 events i16, 6 revents i16. */
export const POLLFD = { size: 8, fd: 0, events: 4, revents: 6 } as const;

/** `struct stat`: its size and the offsets of the fields read. */
export type StatLayout = {
  readonly size: number;
  readonly dev: number;
  readonly ino: number;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** `st_size`. */
  readonly fsize: number;
};

/**
 * `struct stat` per architecture. x86_64: 144 bytes, 0 dev u64, 8 ino u64,
 * 16 nlink u64, 24 mode u32, 28 uid u32, 32 gid u32, 48 size i64. aarch64
 * (the generic layout): 128 bytes, 0 dev u64, 8 ino u64, 16 mode u32,
 * 20 nlink u32, 24 uid u32, 28 gid u32, 48 size i64.
 */
const STAT_BY_ARCH: Readonly<Record<Arch, StatLayout>> = {
  x86_64: { size: 144, dev: 0, ino: 8, mode: 24, uid: 28, gid: 32, fsize: 48 },
  aarch64: { size: 128, dev: 0, ino: 8, mode: 16, uid: 24, gid: 28, fsize: 48 },
};

/** `struct stat` of this architecture. */
export const STAT: StatLayout = STAT_BY_ARCH[ARCH];

/** File type bits of `st_mode`. */
export const S = {
  IFMT: 0o170000,
  IFSOCK: 0o140000,
  IFLNK: 0o120000,
  IFREG: 0o100000,
  IFBLK: 0o060000,
  IFDIR: 0o040000,
  IFCHR: 0o020000,
  IFIFO: 0o010000,
} as const;

/**
 * `siginfo_t` as `waitid` fills it: 128 bytes. 0 signo i32, 4 errno i32,
 * 8 code i32, 16 pid i32, 20 uid u32, 24 status i32.
 */
export const SIGINFO = {
  size: 128,
  code: 8,
  pid: 16,
  status: 24,
} as const;

/** `si_code` values for SIGCHLD. */
export const CLD = { EXITED: 1 } as const;

/** waitid constants. */
export const WAIT = { P_PID: 1, P_PIDFD: 3, WEXITED: 4, WNOHANG: 1 } as const;

/** Opaque glibc sizes (the same on x86_64 and aarch64). */
export const SIZEOF = {
  posix_spawn_file_actions_t: 80,
  posix_spawnattr_t: 336,
  sigset_t: 128,
  rlimit: 16,
} as const;

/** posix_spawnattr flags. */
export const POSIX_SPAWN = { SETSIGDEF: 0x04, SETSIGMASK: 0x08 } as const;

/** mmap and memfd constants. */
export const MMAP = {
  PROT_READ: 1,
  PROT_WRITE: 2,
  MAP_SHARED: 1,
  MAP_PRIVATE: 2,
  MAP_FIXED: 0x10,
  MAP_ANONYMOUS: 0x20,
  MAP_NORESERVE: 0x4000,
  MFD_CLOEXEC: 1,
  MFD_ALLOW_SEALING: 2,
} as const;

/** memfd seals (`F_ADD_SEALS`): what the file's size may no longer do. */
export const SEAL = { SEAL: 1, SHRINK: 2, GROW: 4, WRITE: 8 } as const;
/** `lseek` whence values. */
export const SEEK = {
  /** The next hole at or after the offset (the end when there is none). */
  HOLE: 4,
} as const;

/** Futex operations (without FUTEX_PRIVATE_FLAG: they work across processes). */
export const FUTEX = { WAKE: 1, PRIVATE_FLAG: 128 } as const;

/**
 * `struct futex_waitv` (24 bytes: u64 val, u64 uaddr, u32 flags, u32
 * reserved) and its flags: `FUTEX2_SIZE_U32`, `FUTEX2_PRIVATE`, and the
 * most entries one `futex_waitv` call takes.
 */
export const FUTEX_WAITV = {
  size: 24,
  val: 0,
  uaddr: 8,
  flags: 16,
  reserved: 20,
  SIZE_U32: 0x02,
  PRIVATE: 128,
  MAX: 128,
} as const;

/** getrlimit resources. */
export const RLIMIT = { NOFILE: 7 } as const;

/** A signal name such as `"SIGTERM"`. */
export type SignalName =
  | "SIGHUP"
  | "SIGINT"
  | "SIGQUIT"
  | "SIGILL"
  | "SIGTRAP"
  | "SIGABRT"
  | "SIGBUS"
  | "SIGFPE"
  | "SIGKILL"
  | "SIGUSR1"
  | "SIGSEGV"
  | "SIGUSR2"
  | "SIGPIPE"
  | "SIGALRM"
  | "SIGTERM"
  | "SIGSTKFLT"
  | "SIGCHLD"
  | "SIGCONT"
  | "SIGSTOP"
  | "SIGTSTP"
  | "SIGTTIN"
  | "SIGTTOU"
  | "SIGURG"
  | "SIGXCPU"
  | "SIGXFSZ"
  | "SIGVTALRM"
  | "SIGPROF"
  | "SIGWINCH"
  | "SIGIO"
  | "SIGPWR"
  | "SIGSYS";

/** Signal numbers on Linux (the same on x86_64 and aarch64). */
export const SIGNALS: Readonly<Record<SignalName, number>> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGTRAP: 5,
  SIGABRT: 6,
  SIGBUS: 7,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGUSR2: 12,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  SIGSTKFLT: 16,
  SIGCHLD: 17,
  SIGCONT: 18,
  SIGSTOP: 19,
  SIGTSTP: 20,
  SIGTTIN: 21,
  SIGTTOU: 22,
  SIGURG: 23,
  SIGXCPU: 24,
  SIGXFSZ: 25,
  SIGVTALRM: 26,
  SIGPROF: 27,
  SIGWINCH: 28,
  SIGIO: 29,
  SIGPWR: 30,
  SIGSYS: 31,
};

/** The name of a signal number, or `undefined` when it has none. */
export function signalName(signo: number): SignalName | undefined {
  for (const [name, value] of Object.entries(SIGNALS)) {
    if (value === signo) return name as SignalName;
  }
  return undefined;
}

/** A table of named numbers: field offsets and sizes, or constants. */
export type Table = Readonly<Record<string, number>>;

/**
 * Every table of this module as it is on `arch`, by the name of its export
 * (`RWF_NOWAIT` as `RWF.NOWAIT`): what tests/arch_test.ts compares with the
 * C headers of each architecture.
 */
export function tablesFor(arch: Arch): Readonly<Record<string, Table>> {
  return {
    O: O_BY_ARCH[arch],
    AT,
    RENAME,
    F,
    RWF: { NOWAIT: RWF_NOWAIT },
    EPOLL,
    EPOLL_EVENT: EPOLL_EVENT_BY_ARCH[arch],
    IOCB,
    URING_PARAMS,
    URING_SQE,
    URING_CQE,
    IO_EVENT,
    TIMESPEC,
    EFD,
    POLL,
    POLLFD,
    SOCK,
    MSG,
    IOVEC,
    MSGHDR,
    CMSGHDR,
    MMSGHDR,
    SOCKADDR_UN,
    UCRED,
    STATFS,
    FS_MAGIC,
    STAT: STAT_BY_ARCH[arch],
    S,
    SIGINFO,
    CLD,
    WAIT,
    SIZEOF,
    POSIX_SPAWN,
    MMAP,
    SEAL,
    SEEK,
    FUTEX,
    FUTEX_WAITV,
    RLIMIT,
    SIGNALS,
  };
}
