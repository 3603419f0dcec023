#!/usr/bin/env bash
# The Go SDK's one test command, from a fresh machine with Go (1.26+; an older go command fetches it itself):
#
#   worker-sdk/go/run-tests.sh [go test arguments...]
#
# 1. generates ./pb from proto/ (tools/gen-proto.sh: the protoc plugins
#    pinned in go.mod are installed from the Go module proxy; protoc is
#    $PROTOC, else the one the Rust build vendors, else protoc on PATH);
# 2. checks formatting (gofmt), go vet and staticcheck (the version pinned
#    below, from the module proxy), of the SDK and of tests/conformance/go;
# 3. runs the tests (with the race detector when cgo is available): unit
#    tests, and tests against the real broker (the
#    conformance worker and client of tests/conformance/go among them),
#    $BATON_BIN or target/debug/baton of the repository (build it with
#    `cargo build -p baton-server`). With $CI or $BATON_REQUIRE_BROKER set,
#    a missing broker fails the tests instead of skipping them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"
export BATON_BIN="${BATON_BIN:-$repo/target/debug/baton}"
export BATON_REQUIRE_BROKER="${BATON_REQUIRE_BROKER:-1}"
STATICCHECK_VERSION=v0.8.2

echo "--- generate pb/ from proto/"
bash tools/gen-proto.sh

conformance="$repo/tests/conformance/go"

echo "--- gofmt"
unformatted="$(gofmt -l $(find . "$conformance" -name '*.go' -not -path './pb/*'))"
if [[ -n "$unformatted" ]]; then
    echo "not gofmt-formatted:"
    echo "$unformatted"
    exit 1
fi

echo "--- go vet"
go vet ./...
(cd "$conformance" && go vet ./...)

echo "--- staticcheck $STATICCHECK_VERSION"
GOBIN="$here/.bin" go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
"$here/.bin/staticcheck" ./...
(cd "$conformance" && "$here/.bin/staticcheck" ./...)

# The race detector needs cgo (a C compiler) on Linux; without one, test without it.
race=()
if [[ "$(go env CGO_ENABLED)" == 1 ]] && command -v "$(go env CC)" >/dev/null; then
    race=(-race)
fi
echo "--- go test ${race[*]} (broker: $BATON_BIN)"
go test "${race[@]}" -count=1 -timeout 600s "$@" ./...
