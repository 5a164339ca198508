// `npm pack` runs this first, then `postpack.mjs`. A packed tarball carries its build and needs
// no script where it is installed, so this:
// 1. installs the build tools from the lockfile if this is a fresh clone (no `npm ci` needed);
// 2. builds `dist/`;
// 3. writes the manifest the tarball carries: this one without `scripts` and
//    `devDependencies` (nothing to run, nothing to resolve), keeping the original beside it
//    until `postpack.mjs` puts it back. A pack that died before that is repaired on the next
//    pack (or by `git checkout package.json`).
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ensureDevDependencies, root } from "./tooling.mjs";

const manifest = join(root, "package.json");
const kept = join(root, "package.json.orig");
if (existsSync(kept)) renameSync(kept, manifest);

ensureDevDependencies();
execFileSync(process.execPath, ["scripts/build.mjs"], { cwd: root, stdio: "inherit" });

const text = readFileSync(manifest, "utf8");
const { scripts: _scripts, devDependencies: _dev, ...packed } = JSON.parse(text);
writeFileSync(kept, text);
writeFileSync(manifest, `${JSON.stringify(packed, null, 2)}\n`);
