// Writes the ESM entry point: a thin wrapper over the CommonJS build, so
// `import` and `require` share one copy of the SDK (no dual-package hazard:
// one `Baton` class, one task registry). Its export list is read from the
// built module, so it cannot drift from src/index.ts.
import { mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(dirname(fileURLToPath(import.meta.url)));
const require = createRequire(import.meta.url);
const names = Object.keys(require(join(here, "dist", "cjs", "index.js")))
  .filter((n) => n !== "__esModule")
  .sort();
const out = join(here, "dist", "esm");
mkdirSync(out, { recursive: true });
writeFileSync(
  join(out, "index.mjs"),
  `import sdk from "../cjs/index.js";\n\nexport const { ${names.join(", ")} } = sdk;\n`,
);
writeFileSync(join(out, "index.d.mts"), `export * from "../cjs/index.js";\n`);
