// Compile `personad schema` with Ajv in strict mode and validate instances.
//
// Usage: node ajv_check.mjs INPUT.json
// INPUT: {"schema": <the document>, "cases": [{"ref": "#" | "#/$defs/<name>", "instance": <any>}]}
// Prints {"defs": <number of $defs compiled>, "results": [{"valid": bool, "errors": [...]}]}.
// Exits 2 (with Ajv's message on stderr) when the document does not compile.
import { readFileSync } from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const input = JSON.parse(readFileSync(process.argv[2], "utf8"));
const schema = input.schema;
// strict: true turns on every strict option (strictSchema, strictNumbers,
// strictTypes, strictTuples, strictRequired): unknown keywords, untyped
// type-specific keywords, union types, required members without properties
// all fail compilation instead of being ignored.
const ajv = new Ajv2020({ strict: true, allErrors: true });
addFormats(ajv);
let root;
const validators = new Map();
try {
  ajv.addSchema(schema);
  root = ajv.getSchema(schema.$id);
  // Compile every $defs entry, reachable from the root or not.
  for (const name of Object.keys(schema.$defs ?? {})) {
    const ref = `#/$defs/${name}`;
    validators.set(ref, ajv.getSchema(`${schema.$id}${ref}`));
  }
} catch (err) {
  process.stderr.write(`schema does not compile in Ajv strict mode: ${err.message}\n`);
  process.exit(2);
}
const results = (input.cases ?? []).map(({ ref, instance }) => {
  const validate = ref === "#" ? root : validators.get(ref);
  if (!validate) throw new Error(`no such definition: ${ref}`);
  const valid = validate(instance);
  return { valid, errors: valid ? [] : validate.errors.map((e) => `${e.instancePath || "/"} ${e.message}`) };
});
process.stdout.write(JSON.stringify({ defs: validators.size, results }));
