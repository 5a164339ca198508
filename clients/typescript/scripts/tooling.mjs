// What the lifecycle scripts share: this package's folder, and its build tools installed from
// the lockfile when a fresh clone has not run `npm ci` yet.
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The package's folder (clients/typescript). */
export const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/** Installs the devDependencies (esbuild, TypeScript, …) from the lockfile if any is missing. */
export function ensureDevDependencies() {
  if (existsSync(join(root, "node_modules/esbuild")) && existsSync(join(root, "node_modules/typescript"))) return;
  const npm = process.platform === "win32" ? "npm.cmd" : "npm";
  execFileSync(npm, ["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], {
    cwd: root,
    stdio: "inherit",
  });
}
