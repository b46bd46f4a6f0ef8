/**
 * @module
 * Inter-process communication for Deno on Linux, through libc.
 */

export * from "./pipe.ts";
export * from "./spawn.ts";
export * from "./from_fd.ts";
export * from "./socketpair.ts";
export * from "./shm/mod.ts";
