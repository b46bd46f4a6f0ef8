/**
 * Known issue, kept out of the suite (it fails, and it is a race): in a
 * directory another user may write to that has no sticky bit (a
 * group-writable run directory, say), `listen({ path })` can be made to
 * bind its socket in a directory of that user's choosing. `PrivateDir`
 * makes `.ipc-<random>` and checks it through its fd, but the socket is
 * then bound by path (`<dir>/.ipc-<random>/<base>`): the other user renames
 * the private directory away and puts a symlink in its place, and the bind
 * follows it. `listen()` then fails (chmod ENOENT), leaving this user's
 * socket file `<base>` behind in the chosen directory, with the mode the
 * umask gives.
 *
 * Run alone, as root: `deno test -A tests/known_issues/listen_private_dir_race.ts`.
 *
 * @module
 */

import assert from "node:assert/strict";
import { listen } from "../../mod.ts";
import { otherUserSkip, spawnOtherUser } from "../_other_user.ts";
import { test, withTimeout } from "../_util.ts";

/** Swaps every private directory that appears in argv[1] for a symlink. */
const SWAPPER = `
import os, stat, sys, time
shared, target = sys.argv[1], sys.argv[2]
print("swapping", flush=True)
end = time.time() + 20
k = 0
while time.time() < end and not os.path.exists(os.path.join(shared, "stop")):
    for name in os.listdir(shared):
        if not (name.startswith(".ipc-") and len(name) == 17):
            continue
        path = os.path.join(shared, name)
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                k += 1
                os.rename(path, os.path.join(shared, "moved-%d" % k))
                os.symlink(target, path)
        except OSError:
            pass
`;

test(
  "listen({ path }) in a shared directory without the sticky bit never binds where another user points it",
  async () => {
    const root = Deno.makeTempDirSync();
    try {
      Deno.chmodSync(root, 0o755);
      const shared = `${root}/shared`;
      const target = `${root}/target`;
      Deno.mkdirSync(shared, { mode: 0o777 });
      Deno.chmodSync(shared, 0o777); // writable by all, no sticky bit
      Deno.mkdirSync(target, { mode: 0o755 });
      await using swapper = spawnOtherUser(SWAPPER, [shared, target]);
      const reader = swapper.stdout!.getReader();
      const first = await withTimeout(reader.read(), 20_000, "the swapper");
      assert.match(new TextDecoder().decode(first.value), /swapping/);
      reader.releaseLock();
      let strays: string[] = [];
      for (let i = 0; i < 20_000 && strays.length === 0; i++) {
        try {
          listen({ path: `${shared}/app.sock` }).close();
        } catch {
          // A failed listen() is fine; a socket file elsewhere is not.
        }
        if (i % 50 === 0) {
          strays = [...Deno.readDirSync(target)].map((entry) => entry.name);
        }
      }
      Deno.writeTextFileSync(`${shared}/stop`, "");
      await withTimeout(swapper.status, 30_000, "the swapper's exit");
      strays = [...Deno.readDirSync(target)].map((entry) => entry.name);
      assert.deepEqual(strays, [], `socket files bound in ${target}`);
    } finally {
      Deno.removeSync(root, { recursive: true });
    }
  },
  { read: true, write: true, run: true },
  { ignore: otherUserSkip !== undefined },
);
