#!/bin/bash
# Device call 3 of the TP=2 confirmation (issue 16; carry .stage/p3; run from the repo root).
#   1. the records of the first TP=2 serve (tests/data/serve_h200x2/calibration.jsonl) go into a fresh
#      qwdeploy cache; `qwdeploy plan` on these GPUs must then predict what the next serve gets;
#   2. `qwdeploy serve` Qwen3-32B, TP=2, dummy weights (serve_tp2.sh): plan vs actual;
#   3. if time is left ($1 s budget): vLLM itself at gpu_memory_utilization 0.984 (the value the old
#      plan offered; the plan now refuses it), to see where it runs out of memory and how serve says so.
# Everything lands in $OUT/confirm.tgz.
BUDGET=${1:-420}
T0=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=/root/results; C=/root/qwcache; M=/root/models/Qwen--Qwen3-32B
mkdir -p $R/serve $C /root/deps $M
for _ in $(seq 240); do [ -f /root/site/.unpacked ] && break; sleep 1; done
[ -f /root/site/.unpacked ] || { echo "vLLM not unpacked"; cat /root/unpack.log; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/deps .stage/p3/*.whl || exit 1
cp .stage/p3/env.sh /root/env.sh && source /root/env.sh
ln -sfn "$PWD/profiles" qwdeploy/_profiles
cp tests/data/serve_h200x2/calibration.jsonl $C/calibration.jsonl
cp qwdeploy/data/configs/Qwen--Qwen3-32B.json $M/config.json
export QWDEPLOY_CACHE_DIR=$C
echo "staged after $(( $(date +%s) - T0 )) s"
python3 -m qwdeploy plan $M --tensor-parallel-size 2 --json > $R/plan_calibrated.json 2> $R/plan_calibrated.err
python3 -m qwdeploy plan $M --tensor-parallel-size 2 --gpu-memory-utilization 0.984 --json > $R/plan_0984.json 2>&1
echo "plan at 0.984: exit $?"
python3 - <<'PY'
import json
p = json.load(open("/root/results/plan_calibrated.json"))
print("calibrated plan:", p["kv_cache_tokens"], "KV tokens; gmu", p["gpu_memory_utilization"], "max", p["gpu_memory_utilization_max"])
print([n for n in p["notes"] if "calibrated" in n.lower() or "Recalibration" in n])
PY
bash bench/gpu/tp2/serve_tp2.sh confirm
grep -A 12 "Plan vs actual" $R/serve/serve_confirm.out
if [ "$(left)" -gt 150 ]; then
  CMD=$(grep -m1 '^Command: ' $R/serve/serve_confirm.out | sed 's/^Command: //; s/--gpu-memory-utilization 0.9 /--gpu-memory-utilization 0.984 /')
  echo "0.984 start: $CMD" | cut -c1-400
  timeout $(( $(left) - 25 )) setsid bash -c "$CMD" > $R/vllm_0984.log 2>&1 < /dev/null
  echo "0.984 start exit $?"
  pkill -KILL -f 'vllm.entrypoints.openai.api_server' 2>/dev/null
  python3 -c "
from qwdeploy.vllm import log
r = log.parse(open('/root/results/vllm_0984.log').read().splitlines())
print('failure:', r.failure and (r.failure.kind, r.failure.message))"
fi
tar czf $OUT/confirm.tgz -C /root results
nvidia-smi --query-gpu=memory.used --format=csv,noheader
echo "done after $(( $(date +%s) - T0 )) s"
