// The package as users install it: packed, then installed into a fresh project (`npm init -y`
// makes a CommonJS one) and used by `require` and by `import`, and type-checked both ways
// (TypeScript's node16 resolution picks the `require` or the `import` declarations).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "modelcast-package-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

test("the packed package works from require and import, types included", () => {
  run("npm", ["pack", "--pack-destination", dir, "--loglevel=error"], root);
  const tarball = readdirSync(dir).find((f) => f.endsWith(".tgz"));
  assert.ok(tarball, "npm pack made a tarball");
  const app = join(dir, "app");
  run("mkdir", ["-p", app], dir);
  run("npm", ["init", "-y"], app);
  run("npm", ["install", join(dir, tarball), "--offline", "--no-audit", "--no-fund", "--loglevel=error"], app);

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
