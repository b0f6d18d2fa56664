#!/usr/bin/env bash
# Gate a deployment on qwdeploy's plan: the pipeline stops when the model does not fit.
#
# Usage: examples/ci-gate.sh MODEL [qwdeploy plan flags...]
#   examples/ci-gate.sh Qwen/Qwen3-8B --gpu H100
#   examples/ci-gate.sh Qwen/Qwen3-32B --profile long-context --gpu L40S --nodes 2 --num-gpus-per-node 1
#
# Environment:
#   PLAN_JSON        where the plan is kept for later steps (default: plan.json)
#   MIN_CONTEXT      tokens one request must be able to use (default: 0, the profile decides)
#   MIN_CONCURRENCY  full-length sequences the KV cache must hold (default: 0)
#   ALLOW_BELOW_PROFILE  1: deploy a plan that fits but misses its profile's context or concurrency
#   QWDEPLOY         the command to run (default: qwdeploy)
#   GITHUB_OUTPUT    set by GitHub Actions: the plan's key figures are appended as step outputs
#
# Exit codes: 0 deploy; 3 the model does not fit (qwdeploy's own code, or below MIN_*); 4 it fits
# but misses its profile (qwdeploy's code; ALLOW_BELOW_PROFILE=1 deploys it);
# anything else: qwdeploy's error code (1 error you can fix, 2 usage, ...).
set -uo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,18p' "$0" >&2
  exit 2
fi
read -ra QW <<< "${QWDEPLOY:-qwdeploy}"
plan_json=${PLAN_JSON:-plan.json}

"${QW[@]}" plan "$@" --json > "$plan_json"
status=$?

# One reader for the plan's keys: jq when installed, else python3.
field() {
  if command -v jq > /dev/null; then
    jq -r "$1" "$plan_json"
  else
    python3 - "$plan_json" "$1" <<'PY'
import json, sys
items = [json.load(open(sys.argv[1]))]
for part in sys.argv[2].lstrip(".").split("."):  # .key, .key[] and .key[].sub, like jq -r
    items = [item[part.removesuffix("[]")] for item in items]
    if part.endswith("[]"):
        items = [x for item in items for x in item]
for item in items:
    print(json.dumps(item) if isinstance(item, (dict, list, bool)) or item is None else item)
PY
  fi
}

case $status in
  0) ;;
  3)
    echo "qwdeploy: $(field .model) does not fit; not deploying." >&2
    field '.notes[]' | sed 's/^/  /' >&2
    echo "Alternatives (see $plan_json):" >&2
    field '.alternatives[].summary' | sed 's/^/  /' >&2
    exit 3
    ;;
  4)
    echo "qwdeploy: $(field .model) fits but misses its profile:" >&2
    field '.profile_misses[]' | sed 's/^/  /' >&2
    if [[ "${ALLOW_BELOW_PROFILE:-0}" != 1 ]]; then
      echo "Not deploying (ALLOW_BELOW_PROFILE=1 deploys it; alternatives in $plan_json)." >&2
      exit 4
    fi
    ;;
  *)
    echo "qwdeploy plan failed with exit code $status (see the error above)." >&2
    exit "$status"
    ;;
esac

max_model_len=$(field .max_model_len)
concurrency=$(field .max_concurrency)
if (( max_model_len < ${MIN_CONTEXT:-0} )); then
  echo "qwdeploy: max_model_len $max_model_len is below MIN_CONTEXT ${MIN_CONTEXT}; not deploying." >&2
  exit 3
fi
if ! python3 -c "import sys; sys.exit(float(sys.argv[1]) < float(sys.argv[2]))" \
    "$concurrency" "${MIN_CONCURRENCY:-0}"; then
  echo "qwdeploy: the KV cache holds $concurrency sequences, below MIN_CONCURRENCY ${MIN_CONCURRENCY}; not deploying." >&2
  exit 3
fi

summary="model=$(field .model)
tensor_parallel_size=$(field .tensor_parallel_size)
pipeline_parallel_size=$(field .pipeline_parallel_size)
max_model_len=$max_model_len
max_concurrency=$concurrency
kv_cache_tokens=$(field .kv_cache_tokens)"
echo "$summary"
if [[ -n "${GITHUB_OUTPUT:-}" ]]; then
  echo "$summary" >> "$GITHUB_OUTPUT"
fi
