import assert from "node:assert/strict";
import {
  channel,
  connectOneShot,
  fromFd,
  SharedMemory,
  shmQueue,
} from "../mod.ts";
import { test } from "./_util.ts";

/** Asserts that `fn` throws a TypeError (not a RangeError) with `message`. */
function typeError(fn: () => unknown, message: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.equal((e as Error).constructor, TypeError, `${e}`);
    assert.equal((e as Error).message, message);
    return true;
  });
}

// A size or count given as a string ("4096" from a config file or an
// environment variable) is a type error; reported as a RangeError that
// says "got 4096", it reads as if 4096 were out of range.
test(
  "sizes, counts and fds of the wrong type are TypeErrors naming the option, not RangeErrors",
  async () => {
    typeError(
      () => SharedMemory.create("4096" as unknown as number),
      "Cannot create SharedMemory: size must be a number, got string",
    );
    typeError(
      () => shmQueue({ bytes: "4096" as unknown as number }),
      "Cannot create shmQueue: bytes must be a number, got string",
    );
    typeError(
      () => channel({ capacity: "4" as unknown as number }),
      "Cannot create channel: capacity must be a number, got string",
    );
    typeError(
      () => channel({ limits: { maxDepth: "8" as unknown as number } }),
      "Cannot create channel: limits.maxDepth must be a number, got string",
    );
    typeError(
      () => fromFd("3" as unknown as number),
      "Cannot adopt fd: fd must be a number, got string",
    );
    await assert.rejects(
      connectOneShot("conduit-oneshot/0", {
        capacity: "4" as unknown as number,
      }),
      (e: unknown) => {
        assert.equal((e as Error).constructor, TypeError, `${e}`);
        assert.equal(
          (e as Error).message,
          "Cannot connect to server: capacity must be a number, got string",
        );
        return true;
      },
    );
  },
);
