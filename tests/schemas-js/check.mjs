// Compiles every schema under schemas/ the way a frontend team would: Ajv's 2020-12 build with
// its default options (strict mode: unknown keywords and formats throw) plus ajv-formats for the
// standard `date-time`. Then validates the seed's fixtures and rejects a broken frame, so a
// schema that compiles but accepts nothing (or everything) fails too.
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";
import { Validator } from "@seriousme/openapi-schema-validator";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const read = (path) => JSON.parse(readFileSync(path, "utf8"));
let failed = 0;
let passed = 0;
const check = (name, ok, detail = "") => {
  if (ok) passed++;
  else {
    failed++;
    console.error(`FAIL ${name} ${detail}`);
  }
};

const schemaFiles = ["server-message.schema.json", "client-message.schema.json"].concat(
  readdirSync(join(root, "schemas", "messages")).map((f) => join("messages", f)),
);
const compiled = {};
for (const file of schemaFiles) {
  const ajv = new Ajv2020();
  addFormats(ajv);
  try {
    compiled[file] = ajv.compile(read(join(root, "schemas", file)));
    check(`compile ${file}`, true);
  } catch (e) {
    check(`compile ${file}`, false, e.message);
  }
}

const fixtures = join(root, "tests", "fixtures");
for (const [dir, schema] of [["seed", "server-message.schema.json"], ["client", "client-message.schema.json"]]) {
  for (const file of readdirSync(join(fixtures, dir)).filter((f) => f.endsWith(".json"))) {
    const validate = compiled[schema];
    const frame = read(join(fixtures, dir, file));
    check(`${dir}/${file} is valid`, validate && validate(frame), JSON.stringify(validate?.errors));
    if (dir === "seed") {
      const own = compiled[join("messages", `${frame.type}.schema.json`)];
      check(`${dir}/${file} matches its type's file`, own && own(frame), JSON.stringify(own?.errors));
      const broken = { ...frame, data: { ...frame.data, timestamp: "yesterday" } };
      check(`${dir}/${file} with a bad timestamp is rejected`, validate && !validate(broken));
    }
  }
}
const late = { type: "system_stats", topic: "system_stats", seq: 3, late: "yes", data: {} };
check("a non-boolean `late` is rejected", !compiled["server-message.schema.json"]?.(late));

// The OpenAPI document (schemas/openapi.json) is valid OpenAPI 3.1, and the validator does
// reject a broken one.
const openapi = read(join(root, "schemas", "openapi.json"));
const result = await new Validator().validate(openapi);
check("openapi.json is valid OpenAPI 3.1", result.valid, JSON.stringify(result.errors));
const broken = await new Validator().validate({ ...openapi, info: undefined });
check("an OpenAPI document without info is rejected", !broken.valid);
check("openapi.json documents POST /api/publish", Boolean(openapi.paths?.["/api/publish"]?.post));

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
