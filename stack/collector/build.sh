#!/usr/bin/env bash
# Builds otelcol-proveai from this module once and prints the binary's path on stdout.
#
# The binary is kept outside the clone, under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/proveai/collector/<key>/otelcol-proveai
# where <key> is the sha256 of go.sum, go.mod and the Go sources, so a second call (or a
# second clone of the same revision) returns at once without building.
#
# Exit status: 0 with the path printed; 3 when no Go toolchain is found; 4 when the modules
# cannot be downloaded; 1 when the build itself fails. Messages go to stderr.
#
# Environment: GO (the go command, default "go"), XDG_CACHE_HOME.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
go_cmd="${GO:-go}"

key="$(cd "$here" && cat go.sum go.mod main.go components.go | sha256sum | cut -d' ' -f1)"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/proveai/collector/$key"
binary="$dir/otelcol-proveai"

if [[ -x "$binary" ]]; then
    echo "$binary"
    exit 0
fi

if ! command -v "$go_cmd" >/dev/null 2>&1; then
    echo "build.sh: no Go toolchain ('$go_cmd' not on PATH); install Go 1.26 or later," \
        "or set GO to the go command, to build the collector" >&2
    exit 3
fi

cd "$here"
export CGO_ENABLED=0 GOFLAGS="-mod=readonly"

echo "build.sh: downloading the collector's modules" >&2
if ! "$go_cmd" list -deps . >/dev/null; then
    echo "build.sh: the modules in go.sum could not be downloaded (see above)" >&2
    exit 4
fi

echo "build.sh: building otelcol-proveai (a few minutes the first time)" >&2
mkdir -p "$dir"
partial="$(mktemp "$dir/otelcol-proveai.XXXXXX")"
trap 'rm -f "$partial"' EXIT
if ! "$go_cmd" build -trimpath -buildvcs=false -ldflags="-s -w" -o "$partial" .; then
    echo "build.sh: go build failed (see above)" >&2
    exit 1
fi
chmod 0755 "$partial"
mv -f "$partial" "$binary"
trap - EXIT

echo "$binary"
