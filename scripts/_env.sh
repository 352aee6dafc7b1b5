# Shared set-up for scripts/demo and scripts/test: a virtual environment with the project installed,
# and the Debian packages the real parts need. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

say() { printf '%s\n' "$*" >&2; }

# ensure_packages BINARY:PACKAGE ... installs the packages whose binary (or file, or shared
# library such as libportaudio.so.2) is missing.
ensure_packages() {
    local missing=() spec bin pkg
    for spec in "$@"; do
        bin="${spec%%:*}"; pkg="${spec##*:}"
        if [[ "$bin" == /* ]]; then [[ -e "$bin" ]] && continue
        elif [[ "$bin" == lib*.so* ]]; then
             { ldconfig -p || /sbin/ldconfig -p; } 2>/dev/null | grep -qF "$bin " && continue
        else command -v "$bin" >/dev/null 2>&1 && continue
             [[ -x "/usr/sbin/$bin" ]] && continue
        fi
        missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        say "missing Debian packages: ${missing[*]}"
        say "install them with:  sudo apt-get install -y ${missing[*]}   then run this command again"
        exit 1
    fi
}

ensure_venv() {
    if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        say "commune-edge needs Python 3.11 or newer; $PY is $("$PY" --version 2>&1)"
        exit 1
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        if ! "$PY" -m venv "$VENV" 2>/dev/null; then
            ensure_packages "/usr/share/doc/python3-venv:python3-venv"
            "$PY" -m venv "$VENV"
        fi
    fi
    # Reinstall only when the package metadata changed since the last install.
    local stamp="$VENV/.commune-edge-installed" want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
        say "installing commune-edge and its test tools into $VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
        echo "$want" > "$stamp"
    fi
}

ensure_base() {
    # mosquitto: the tests' private broker; espeak-ng: the spoken thank-you; libportaudio2: what
    # sounddevice plays through (the tests measure what was played with numpy, no sox needed).
    ensure_packages mosquitto:mosquitto espeak-ng:espeak-ng libportaudio.so.2:libportaudio2
    ensure_venv
}
