// Puts back the manifest `prepack.mjs` set aside (with its scripts and devDependencies).
import { existsSync, renameSync } from "node:fs";
import { join } from "node:path";
import { root } from "./tooling.mjs";

const kept = join(root, "package.json.orig");
if (existsSync(kept)) renameSync(kept, join(root, "package.json"));
