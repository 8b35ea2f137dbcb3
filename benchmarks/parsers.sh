#!/usr/bin/env bash
# The sidecar's hand-written upstream response parser against llhttp (NIO's HTTPResponseDecoder,
# in a ByteToMessageHandler as a NIO client pipeline runs it), on the same 780-byte response, in
# one run of a release build: ns per response, medians of the rounds, alternating the two.
#
#   benchmarks/parsers.sh
#   RESPONSES=500000 ROUNDS=7 benchmarks/parsers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

ensure_swift
ensure_packages "${LLMTAP_BUILD_PACKAGES[@]}"
echo "==> swift build -c release --product llmtap-sidecar" >&2
swift build -c release --product llmtap-sidecar >&2
"$(swift build -c release --show-bin-path)/llmtap-sidecar" bench-parsers \
    --responses "${RESPONSES:-100000}" --rounds "${ROUNDS:-5}"
