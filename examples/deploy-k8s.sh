#!/usr/bin/env bash
# Export MODEL's plan as Kubernetes manifests and hand them to kubectl.
# A model that does not fit (exit 3), or fits but misses its profile (exit 4), stops here and
# nothing reaches the cluster.
#
# Usage: examples/deploy-k8s.sh MODEL [qwdeploy export flags...]
#   examples/deploy-k8s.sh Qwen/Qwen3-8B --gpu H100 --hpa
#   examples/deploy-k8s.sh Qwen/Qwen3-235B-A22B --gpu H100 --nodes 2 --num-gpus-per-node 8
#
# Environment:
#   DRY_RUN    client (default), server (the API server validates, nothing is stored), or none (apply)
#   OUT        where the manifests are written (default: a temporary file)
#   NAMESPACE  kubectl --namespace
#   QWDEPLOY   the command to run (default: qwdeploy)
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
read -ra QW <<< "${QWDEPLOY:-qwdeploy}"
out=${OUT:-$(mktemp "${TMPDIR:-/tmp}/qwdeploy-k8s.XXXXXX.yaml")}

"${QW[@]}" export k8s "$@" -o "$out"   # exit 3 / 4: does not fit / misses the profile; set -e stops

# Offline schema check when kubernetes-validate is installed (pip install kubernetes-validate).
# The LeaderWorkerSet of a multi-node plan is a CRD it has no schema for: warned, not failed.
if command -v kubernetes-validate > /dev/null; then
  kubernetes-validate --strict --quiet "$out" || echo "kubernetes-validate reported the above" >&2
fi

args=(apply -f "$out")
[[ -n "${NAMESPACE:-}" ]] && args+=(--namespace "$NAMESPACE")
case ${DRY_RUN:-client} in
  client|server) args+=("--dry-run=${DRY_RUN:-client}") ;;
  none) ;;
  *) echo "DRY_RUN must be client, server or none" >&2; exit 2 ;;
esac
kubectl "${args[@]}"
