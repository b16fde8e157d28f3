#!/usr/bin/env bash
# arm_check.sh: run the edge runtime on aarch64 under qemu user-mode emulation and diff it
# against this machine (x86-64).
#
#   tools/arm_check.sh [--audio-model BUNDLE] [--face-model BUNDLE] [--atol P]
#
# Stages (everything heavy is cached OUTSIDE the repo in $AVEMO_ARM_CACHE, default
# ~/.cache/avemo-arm, and built once):
#   1. apt: qemu-user-static, debootstrap (installed when missing; needs root or sudo).
#   2. root/: Debian bookworm arm64, `debootstrap --foreign --variant=minbase --include=python3`
#      from the mirror named in this machine's apt sources (override: AVEMO_DEBIAN_MIRROR);
#      the downloaded .debs are unpacked with `dpkg -x` (no binfmt here, so the second stage,
#      which runs maintainer scripts, cannot run: none is needed to run python3.11).
#   3. site/: the aarch64 manylinux wheels of numpy, onnxruntime (+ its deps), opencv (the
#      [capture] extra, for face images in `eval`) and ai-edge-litert, at the versions the x86
#      venv has, unzipped into one directory.
#   4. tools/arm_compare.py writes fixed inputs (WAV, PNG) once, then runs on both interpreters
#      (x86: the repo venv; arm: qemu-aarch64-static -L root root/usr/bin/python3.11 with
#      PYTHONPATH=site:repo) and emits JSON; `arm_compare.py diff` exits non-zero on mismatch.
# Timings under emulation mean nothing and are not reported.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${AVEMO_ARM_CACHE:-$HOME/.cache/avemo-arm}
ROOT=$CACHE/root
SITE=$CACHE/site
PY=${PYTHON:-$REPO/.venv/bin/python}
SUITE=bookworm
ARM_PY=python3.11
ARM_CPU=cortex-a72  # the Raspberry Pi 4's core; qemu's default "max" has SVE, which breaks numpy's OpenBLAS under qemu 7.2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/avemo-arm.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log() { echo "arm-check: $*" >&2; }
die() { log "error: $*"; exit 2; }

need_tools() {
    command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null && return
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    log "installing qemu-user-static debootstrap with apt-get"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        qemu-user-static debootstrap >/dev/null \
        || die "could not install qemu-user-static debootstrap: install them with apt-get and rerun"
}

# The Debian mirror this machine's apt sources name (one-line .list or deb822 .sources).
debian_mirror() {
    if [ -n "${AVEMO_DEBIAN_MIRROR:-}" ]; then echo "$AVEMO_DEBIAN_MIRROR"; return; fi
    local f uri=""
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk -v s="$SUITE" '$1 == "deb" && $0 !~ /security/ {
                 for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { if ($(i + 1) == s) { print $i; exit } } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk -v RS= -v s="$SUITE" '$0 ~ "Suites:[^\n]*[ ]" s "([ \n]|$)" && $0 !~ /security/ {
                 if (match($0, /URIs:[ ]*[^ \n]+/)) { split(substr($0, RSTART, RLENGTH), a, /[ ]+/); print a[2]; exit } }' "$f")
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    die "no Debian $SUITE mirror in /etc/apt/sources.list{,.d/*}: set AVEMO_DEBIAN_MIRROR=http://deb.debian.org/debian"
}

build_root() {
    [ -f "$ROOT/.avemo-done" ] && return
    local mirror; mirror=$(debian_mirror)
    log "building Debian $SUITE arm64 root in $ROOT from $mirror (once; a few minutes)"
    rm -rf "$ROOT"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 "$SUITE" "$ROOT" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    local deb
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg -x "$deb" "$ROOT"; done
    [ -x "$ROOT/usr/bin/$ARM_PY" ] || die "$ROOT/usr/bin/$ARM_PY missing after unpacking"
    touch "$ROOT/.avemo-done"
}

# qemu-user reads /proc/cpuinfo from the -L root when the file exists there: without one,
# programs see the host's x86 cpuinfo and onnxruntime's cpuinfo library crashes at import.
# This one describes the emulated core (Cortex-A72, the Raspberry Pi 4's).
write_cpuinfo() {
    mkdir -p "$ROOT/proc"
    printf 'processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' \
        >"$ROOT/proc/cpuinfo"
}

# "name==version" for each runtime wheel, pinned to the x86 venv's version when it has one.
requirements() {
    "$PY" - <<'PY'
from importlib import metadata
for name in ("numpy", "onnxruntime", "opencv-python-headless", "ai-edge-litert"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(name)
PY
}

fetch_wheels() {
    local reqs; reqs=$(requirements | tr '\n' ' ')
    [ -f "$SITE/.avemo-reqs" ] && [ "$(cat "$SITE/.avemo-reqs")" = "$reqs" ] && return
    log "downloading aarch64 wheels: $reqs"
    local platforms=(--platform manylinux2014_aarch64) v whl
    for v in $(seq 17 36); do platforms+=(--platform "manylinux_2_${v}_aarch64"); done  # bookworm: glibc 2.36
    rm -rf "$SITE" "$CACHE/wheels"
    # shellcheck disable=SC2086
    "$PY" -m pip download -q -d "$CACHE/wheels" --only-binary=:all: --python-version 3.11 \
        --implementation cp "${platforms[@]}" $reqs || die "pip download of the aarch64 wheels failed"
    mkdir -p "$SITE"
    for whl in "$CACHE"/wheels/*.whl; do "$PY" -m zipfile -e "$whl" "$SITE"; done
    rm -rf "$CACHE/wheels"
    echo "$reqs" >"$SITE/.avemo-reqs"
}

# The emulated interpreter: a clean environment, the wheels and the repo on its path.
arm_python() {
    env -i PATH=/usr/bin:/bin HOME="$HOME" LANG=C.UTF-8 PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
        PYTHONPATH="$SITE:$REPO" AVEMO_DATA="${AVEMO_DATA:-}" \
        qemu-aarch64-static -cpu "$ARM_CPU" -L "$ROOT" "$ROOT/usr/bin/$ARM_PY" "$@"
}

main() {
    local models=() atol=()
    while [ $# -gt 0 ]; do
        case $1 in
            --audio-model|--face-model)  # a bundle folder, or a shipped name (audio, face)
                if [ -e "$2" ]; then models+=("$1" "$(realpath "$2")"); else models+=("$1" "$2"); fi
                shift 2 ;;
            --atol) atol=(--atol "$2"); shift 2 ;;
            *) die "unknown option $1 (use --audio-model BUNDLE, --face-model BUNDLE, --atol P)" ;;
        esac
    done
    [ -x "$PY" ] || die "$PY missing: run \`make setup\` first (or set PYTHON=...)"
    need_tools
    build_root
    write_cpuinfo
    fetch_wheels
    local out=${AVEMO_ARM_OUT:-$WORK}
    mkdir -p "$out/x86" "$out/arm"
    "$PY" "$REPO/tools/arm_compare.py" inputs "$out/inputs" >/dev/null
    log "x86-64: measuring"
    "$PY" "$REPO/tools/arm_compare.py" measure --inputs "$out/inputs" "${models[@]}" \
        --json "$out/x86/result.json" 2>"$out/x86/stderr" || { tail -20 "$out/x86/stderr" >&2; die "x86-64 run failed"; }
    log "aarch64 (qemu, $ARM_CPU): measuring; timings under emulation mean nothing and are not reported"
    arm_python "$REPO/tools/arm_compare.py" measure --inputs "$out/inputs" "${models[@]}" \
        --json "$out/arm/result.json" 2>"$out/arm/stderr" || { tail -20 "$out/arm/stderr" >&2; die "aarch64 run failed"; }
    if "$PY" "$REPO/tools/arm_compare.py" diff "$out/x86/result.json" "$out/arm/result.json" "${atol[@]}"; then
        log "OK: aarch64 agrees with x86-64 (labels identical, probabilities within tolerance)"
    else
        log "MISMATCH between aarch64 and x86-64: see \"problems\" above"; return 1
    fi
}

main "$@"
