/**
 * The protocol, loaded at run time from the `baton.proto` this package
 * ships (copied from the repository's `proto/` by every build), with the
 * generated types of `src/gen/` (made from the same file by the same build).
 *
 * `LOADER_OPTIONS` must match the options `scripts/gen.mjs` gives
 * `proto-loader-gen-types`: they decide the shape of the decoded objects
 * (camelCase fields, 64-bit numbers as `number`, enums as strings, defaults
 * filled in, oneof fields named), and the generated types describe that
 * shape. A test checks they agree.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { ProtoGrpcType } from "./gen/baton";

export type * as pb from "./gen/baton/v1/index";

/** Where the shipped proto tree is: `<package>/proto` (two levels above `dist/cjs/` and `build/src/`). */
export const PROTO_ROOT = join(__dirname, "..", "..", "proto");
export const PROTO_FILE = "baton/v1/baton.proto";

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

let loaded: { definition: protoLoader.PackageDefinition; grpcObject: ProtoGrpcType } | undefined;

/** The package definition and the service constructors, loaded once. */
export function protocol(): { definition: protoLoader.PackageDefinition; grpcObject: ProtoGrpcType } {
  if (loaded === undefined) {
    if (!existsSync(join(PROTO_ROOT, PROTO_FILE))) {
      throw new Error(`baton: ${join(PROTO_ROOT, PROTO_FILE)} is missing (run \`npm run build\`)`);
    }
    const definition = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
    const grpcObject = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
    loaded = { definition, grpcObject };
  }
  return loaded;
}
