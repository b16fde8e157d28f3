#!/usr/bin/env bash
# Fresh-machine setup used by `make setup` (and so by `make demo`, `make test`, CI):
# system packages (Debian/Ubuntu apt; skipped where they are already there), then a venv
# with the package and the extras the demo, the tests and training use.
# chromium only drives the `--serve` page test: where apt has no `chromium` package (Ubuntu
# ships it as a snap) setup goes on without it and that test skips.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
APT_PACKAGES="ffmpeg espeak-ng sox libportaudio2 libsndfile1 pulseaudio pulseaudio-utils libasound2-plugins qemu-user-static debootstrap chromium"

missing=""
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing system packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ${missing/ chromium/} >/dev/null
    case "$missing" in *" chromium"*)
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
        || echo "setup: no apt package chromium here; the --serve page test will skip" >&2 ;;
    esac
  else
    echo "setup: please install these system packages yourself:$missing" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
# torch 2.13.0 first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q -e ".[capture,ort,litert,distill,dev]"
touch "$VENV/.setup-done"
echo "setup: ready ($VENV)"
