/**
 * @module
 * Inter-process communication for Deno on Linux, through libc.
 */

export * from "./pipe.ts";
