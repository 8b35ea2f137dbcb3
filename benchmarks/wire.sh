#!/usr/bin/env bash
# The analysis wire against raw libzmq, on tcp loopback, in a release build:
# records/s and MB/s for 1 KiB StreamChunks and 4 KiB Requests, publisher to receiver, beside raw
# libzmq PUSH/PULL for the same payload sizes, measured in the same run (raw and wire alternate).
#
#   benchmarks/wire.sh                       # 5 paired runs, medians
#   benchmarks/wire.sh --runs 9 --output wire.json
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

ensure_swift
ensure_packages "${LLMTAP_BUILD_PACKAGES[@]}"
swift build -c release --product llmtap-wire-bench >&2
"$(swift build -c release --show-bin-path)/llmtap-wire-bench" "$@"
