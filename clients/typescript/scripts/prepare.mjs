// `npm install <path to this folder>` (and `npm ci` here) run this: npm does not install a
// linked folder's devDependencies, so it installs them itself from the lockfile when they are
// missing, then builds `dist/` (what the package's `exports` point to).
import { execFileSync } from "node:child_process";
import { ensureDevDependencies, root } from "./tooling.mjs";

ensureDevDependencies();
execFileSync(process.execPath, ["scripts/build.mjs"], { cwd: root, stdio: "inherit" });
