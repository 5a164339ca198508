// The package as users install it: packed from a fresh clone (no `npm ci` run), then installed
// into a fresh project (`npm init -y` makes a CommonJS one) without a warning, and used by
// `require` and by `import`, and type-checked both ways (TypeScript's node16 resolution picks
// the `require` or the `import` declarations).
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "modelcast-package-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

test("the packed package works from require and import, types included", () => {
  // A fresh clone: the package's tracked files, no node_modules, no dist.
  const clone = join(dir, "clone/clients/typescript");
  mkdirSync(clone, { recursive: true });
  for (const entry of ["package.json", "package-lock.json", "README.md", "tsconfig.json", "src", "scripts", "dashboard"]) {
    cpSync(join(root, entry), join(clone, entry), { recursive: true });
  }
  const manifestBefore = readFileSync(join(clone, "package.json"), "utf8");
  run("npm", ["pack", "--pack-destination", dir, "--offline", "--loglevel=error"], clone);
  assert.equal(readFileSync(join(clone, "package.json"), "utf8"), manifestBefore, "postpack restores the manifest");
  const tarball = readdirSync(dir).find((f) => f.endsWith(".tgz"));
  assert.ok(tarball, "npm pack made a tarball");
  const packed = JSON.parse(run("tar", ["-xOzf", join(dir, tarball), "package/package.json"], dir));
  assert.equal(packed.scripts, undefined, "the tarball carries its build and runs no script");
  assert.equal(packed.devDependencies, undefined);

  const app = join(dir, "app");
  mkdirSync(app);
  run("npm", ["init", "-y"], app);
  const install = spawnSync("npm", ["install", join(dir, tarball), "--offline", "--no-audit", "--no-fund"], {
    cwd: app,
    encoding: "utf8",
  });
  assert.equal(install.status, 0, install.stderr);
  assert.doesNotMatch(install.stderr, /warn/i, "installing the tarball warns about nothing");

  writeFileSync(join(app, "use.cjs"), `const { connect } = require("@modelcast/client");\nconsole.log(typeof connect);\n`);
  writeFileSync(join(app, "use.mjs"), `import { connect } from "@modelcast/client";\nconsole.log(typeof connect);\n`);
  assert.equal(run(process.execPath, ["use.cjs"], app).trim(), "function", "require");
  assert.equal(run(process.execPath, ["use.mjs"], app).trim(), "function", "import");

  const code = `import { connect, type Subscription } from "@modelcast/client";
const client = connect("ws://127.0.0.1:8000/ws");
const sub: Subscription<"alerts"> = client.subscribe("alerts");
sub.on("message", (frame) => { const id: string = frame.data.alert_id; void id; });
`;
  writeFileSync(join(app, "check.cts"), code);
  writeFileSync(join(app, "check.mts"), code);
  writeFileSync(
    join(app, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: { module: "node16", moduleResolution: "node16", strict: true, noEmit: true, lib: ["ES2022", "DOM"], types: [] },
      files: ["check.cts", "check.mts"],
    }),
  );
  run(process.execPath, [join(root, "node_modules/typescript/bin/tsc"), "-p", app], app);
});
