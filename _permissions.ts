/**
 * Deno's permissions, honoured although the FFI could bypass them: an
 * operation that Deno's own APIs would guard asks the same question first
 * and refuses with the same error and advice.
 *
 * @module
 */

/** Filesystem access a path needs. */
export type PathAccess = "read" | "write";

/**
 * Throws `Deno.errors.NotCapable` unless each access in `needs` is granted
 * for `path`, with the message Deno gives for its own file APIs.
 *
 * @param path The filesystem path (absolute, or relative to the cwd).
 * @param needs The kinds of access, checked in order.
 * @param doing What was refused, e.g. `"Cannot listen"`.
 */
export function requirePath(
  path: string,
  needs: readonly PathAccess[],
  doing: string,
): void {
  for (const name of needs) {
    if (Deno.permissions.querySync({ name, path }).state !== "granted") {
      throw new Deno.errors.NotCapable(
        `${doing}: requires ${name} access to "${path}", run again with the --allow-${name} flag`,
      );
    }
  }
}
