// Generates what the SDK derives from the protocol, from the repository's
// proto/ on every build: nothing generated is committed.
//
//   proto/baton/v1/baton.proto   a copy of ../../proto (the package ships it;
//                                 @grpc/proto-loader reads it at run time)
//   src/gen/                      TypeScript types of every message and
//                                 service (proto-loader-gen-types), so a
//                                 field the SDK uses that the proto renames
//                                 or drops fails the type check.
//
// Outside the repository (an unpacked tarball) the copy it ships is used.
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(dirname(fileURLToPath(import.meta.url)));
const source = join(here, "..", "..", "proto", "baton", "v1", "baton.proto");
const copy = join(here, "proto", "baton", "v1", "baton.proto");
if (existsSync(source)) {
  mkdirSync(dirname(copy), { recursive: true });
  copyFileSync(source, copy);
} else if (!existsSync(copy)) {
  throw new Error(`no proto: neither ${source} nor ${copy} exists`);
}
const out = join(here, "src", "gen");
rmSync(out, { recursive: true, force: true });
const bin = join(
  here,
  "node_modules",
  ".bin",
  process.platform === "win32" ? "proto-loader-gen-types.cmd" : "proto-loader-gen-types",
);
// These options must match LOADER_OPTIONS in src/proto.ts (test/proto.test.ts checks it).
execFileSync(
  bin,
  [
    "--longs=Number",
    "--enums=String",
    "--defaults",
    "--oneofs",
    "--includeComments",
    "--grpcLib=@grpc/grpc-js",
    `--includeDirs=${join(here, "proto")}`,
    `--outDir=${out}`,
    "baton/v1/baton.proto",
  ],
  { stdio: "inherit" },
);

// One module re-exporting every message, enum and service type of baton.v1.
const v1 = join(out, "baton", "v1");
const names = readdirSync(v1)
  .filter((f) => f.endsWith(".ts"))
  .map((f) => f.slice(0, -3))
  .sort();
writeFileSync(join(v1, "index.ts"), names.map((n) => `export * from "./${n}";\n`).join(""));
