#!/usr/bin/env bash
# Builds llmtap-collector, llmtap-sidecar and llmtap-mock-upstream into OUT/bin, ready to copy onto
# a machine that has only libzmq5, libsqlite3-0 and CA certificates: the Swift runtime and
# Foundation are linked in statically, and the collector's price table (its resource bundle)
# sits next to it, where it is looked for.
#
# The Dockerfile runs this; so can anyone, on Debian with a Swift 6 toolchain and the -dev
# packages (pkg-config libzmq3-dev libsqlite3-dev):
#
#   deploy/build.sh /opt/llmtap                          # release
#   LLMTAP_BUILD_CONFIGURATION=debug deploy/build.sh out  # faster to build, slower to run
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: deploy/build.sh OUT_DIR}"
configuration="${LLMTAP_BUILD_CONFIGURATION:-release}"
products=(llmtap-collector llmtap-sidecar llmtap-mock-upstream)

if ! command -v swift >/dev/null && [ -x /opt/swift/usr/bin/swift ]; then export PATH="/opt/swift/usr/bin:$PATH"; fi
# With the Swift runtime and Foundation linked in statically, the order of their archives on the
# link line matters, and SwiftPM's autolinking gets it wrong for some products (undefined ICU, shim
# and Synchronization symbols): naming them again as a group at the end lets the linker resolve
# them in any order.
# A build folder of its own: objects compiled for static linking must not mix with a checkout's
# ordinary .build (they would make its next link look for the static archives).
static=(--scratch-path "${LLMTAP_BUILD_SCRATCH:-.build-static}" --static-swift-stdlib -Xlinker --start-group)
for library in Foundation FoundationEssentials FoundationInternationalization CoreFoundation _FoundationICU \
    _FoundationCShims _FoundationCollections swiftSynchronization swiftDispatch dispatch BlocksRuntime; do
    static+=(-Xlinker "-l$library")
done
static+=(-Xlinker --end-group)
for product in "${products[@]}"; do
    echo "==> swift build -c $configuration --product $product --static-swift-stdlib" >&2
    swift build -c "$configuration" --product "$product" "${static[@]}" >&2
done
bin="$(swift build -c "$configuration" "${static[@]}" --show-bin-path)"

mkdir -p "$out/bin"
for product in "${products[@]}"; do install -m 0755 "$bin/$product" "$out/bin/$product"; done
rm -rf "$out/bin/LLMTap_Collector.resources"
cp -R "$bin/LLMTap_Collector.resources" "$out/bin/"
# What the binaries need from the system: nothing of Swift's.
if ldd "$out/bin/llmtap-collector" "$out/bin/llmtap-sidecar" | grep -q 'libswift\|libFoundation'; then
    echo "the binaries link a shared Swift runtime; the slim image would not run them" >&2
    exit 1
fi
echo "==> $out/bin: ${products[*]} and the collector's price table" >&2
