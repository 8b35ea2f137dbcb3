# Shared by the scripts in scripts/ and benchmarks/: installs what is missing, checks the toolchain.

# The Debian packages LLMTap builds and tests with.
LLMTAP_BUILD_PACKAGES=(pkg-config libzmq3-dev libsqlite3-dev libssl-dev)
LLMTAP_TEST_PACKAGES=(protobuf-compiler protobuf-c-compiler libprotobuf-c-dev make gcc curl openssl prometheus systemd git)

# ensure_packages NAME...: installs the Debian packages that are not installed yet.
ensure_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return 0
    echo "==> installing ${missing[*]}" >&2
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; return 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_swift: a Swift 6 toolchain must be on PATH (Debian does not package one).
ensure_swift() {
    if ! command -v swift >/dev/null && [ -x /opt/swift/usr/bin/swift ]; then
        export PATH="/opt/swift/usr/bin:$PATH"
    fi
    command -v swift >/dev/null || {
        echo "swift is not on PATH: install a Swift 6 toolchain from swift.org (or the swift:6 image)" >&2
        return 1
    }
}

# ensure_python_env: a virtualenv in .build/python with Tests/requirements.txt installed, for tests
# that use real Python clients. Exports LLMTAP_PYTHON, which those tests run.
ensure_python_env() {
    ensure_packages python3 python3-venv
    local venv=.build/python
    local stamp="$venv/.requirements"
    if [ ! -x "$venv/bin/python" ]; then
        echo "==> creating $venv" >&2
        python3 -m venv "$venv"
    fi
    if ! cmp -s Tests/requirements.txt "$stamp" 2>/dev/null; then
        echo "==> pip install -r Tests/requirements.txt" >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -r Tests/requirements.txt
        cp Tests/requirements.txt "$stamp"
    fi
    LLMTAP_PYTHON="$(pwd)/$venv/bin/python"
    export LLMTAP_PYTHON
}
