#!/usr/bin/env bash
# Generates the Go package ./pb from the repository's proto/ (the contract).
#
#   bash tools/gen-proto.sh        (or: go generate ./...)
#
# Nothing generated is committed: pb/ is gitignored and made afresh by every
# build (run-tests.sh and CI run this first), so a proto change that the SDK
# does not follow fails to compile instead of going unnoticed.
#
# The plugins protoc-gen-go and protoc-gen-go-grpc are the versions pinned by
# the `tool` block of go.mod, built with `go install tool` from the Go module
# proxy into ./.bin. protoc itself is found, in order, at:
#   1. $PROTOC;
#   2. the binary the Rust build already vendors (crate protoc-bin-vendored,
#      under ~/.cargo/registry after any `cargo build` or `cargo fetch`);
#   3. `protoc` on PATH (Debian: apt-get install protobuf-compiler).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="$(cd "$here/../.." && pwd)"
module="$(cd "$here" && go list -m)"

find_protoc() {
    if [[ -n "${PROTOC:-}" ]]; then
        echo "$PROTOC"
        return
    fi
    local arch
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64) arch=linux-x86_64 ;;
        Linux-aarch64) arch=linux-aarch_64 ;;
        Darwin-arm64) arch=macos-aarch_64 ;;
        Darwin-x86_64) arch=macos-x86_64 ;;
        *) arch=unknown ;;
    esac
    local cargo_home="${CARGO_HOME:-$HOME/.cargo}" found=""
    for p in "$cargo_home"/registry/src/*/protoc-bin-vendored-"$arch"-*/bin/protoc; do
        [[ -x "$p" ]] && found="$p"   # the glob sorts; the last is the newest
    done
    if [[ -n "$found" ]]; then
        echo "$found"
        return
    fi
    if command -v protoc >/dev/null; then
        command -v protoc
        return
    fi
    echo "gen-proto.sh: no protoc found: set PROTOC, run \`cargo fetch\` in $repo (vendors one), or install protobuf-compiler" >&2
    exit 1
}

protoc="$(find_protoc)"
bin="$here/.bin"
mkdir -p "$bin"
(cd "$here" && GOBIN="$bin" go install tool)

rm -rf "$here/pb"
mkdir -p "$here/pb"
"$protoc" \
    --proto_path="$repo/proto" \
    --plugin=protoc-gen-go="$bin/protoc-gen-go" \
    --plugin=protoc-gen-go-grpc="$bin/protoc-gen-go-grpc" \
    --go_out="$here" --go_opt=module="$module" \
    --go_opt=Mbaton/v1/baton.proto="$module/pb;pb" \
    --go-grpc_out="$here" --go-grpc_opt=module="$module" \
    --go-grpc_opt=Mbaton/v1/baton.proto="$module/pb;pb" \
    baton/v1/baton.proto
echo "generated $module/pb from proto/baton/v1/baton.proto with $("$protoc" --version)"
