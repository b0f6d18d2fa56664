#!/bin/bash
# One `qwdeploy serve` start of Qwen3-32B at TP=2 with dummy weights (run from the repo copy):
# wait for the plan-vs-actual table, ask one completion, stop it with SIGINT (Ctrl-C), check that
# nothing is left on the GPUs, and keep qwdeploy's output, vLLM's log and calibration.jsonl.
# usage: bash bench/gpu/tp2/serve_tp2.sh TAG   (TAG: cold = first start, warm = the restart)
TAG=${1:-cold}
R=/root/results
S=$R/serve
C=/root/qwcache                      # QWDEPLOY_CACHE_DIR (compile caches: not collected)
M=/root/models/Qwen--Qwen3-32B
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export QWDEPLOY_CACHE_DIR=$C
mkdir -p $S $M
note() { echo "$(date +%H:%M:%S) $*" >> $R/progress.log; }
cp qwdeploy/data/configs/Qwen--Qwen3-32B.json $M/config.json
echo '{"bos_token_id": 151643, "eos_token_id": 151645}' > $M/generation_config.json
smi() { nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv,noheader,nounits | tr '\n' ';'; }
for _ in $(seq 60); do   # both GPUs idle first
  [ "$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | sort -n | tail -1)" -lt 1024 ] && break
  sleep 1
done
note "serve $TAG: GPUs before: $(smi)"
T0=$(date +%s.%N)
setsid python3 -m qwdeploy serve $M --tensor-parallel-size 2 --ready-timeout 560 \
  -- --load-format dummy --skip-tokenizer-init > $S/serve_$TAG.out 2>&1 < /dev/null &
PID=$!
echo "$PID" > $S/serve_$TAG.pid
st=timeout
for _ in $(seq 600); do
  grep -q "Ctrl-C stops vLLM" $S/serve_$TAG.out 2>/dev/null && { st=ready; break; }
  kill -0 $PID 2>/dev/null || { st=exited; break; }
  sleep 1
done
T1=$(date +%s.%N)
note "serve $TAG: $st after $(python3 -c "print(round($T1-$T0,1))") s; GPUs: $(smi)"
nvidia-smi > $S/serve_${TAG}_ready.nvidia-smi.txt 2>&1
nvidia-smi --query-compute-apps=pid,process_name,used_memory,gpu_bus_id --format=csv >> $S/serve_${TAG}_ready.nvidia-smi.txt 2>&1
if [ $st = ready ]; then
  python3 - "$S/serve_${TAG}_answer.json" <<'PY' >> $R/progress.log 2>&1
import json, sys, time, urllib.request
out = {}
base = "http://127.0.0.1:8000/v1"
try:
    models = json.load(urllib.request.urlopen(base + "/models", timeout=30))
    out["models"] = models
    name = models["data"][0]["id"]
    body = {"model": name, "prompt": list(range(1000, 1032)), "max_tokens": 16, "temperature": 0}
    req = urllib.request.Request(base + "/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.time()
    out["completion"] = json.load(urllib.request.urlopen(req, timeout=60))
    out["completion_s"] = round(time.time() - t, 3)
except Exception as e:  # noqa: BLE001
    out["error"] = repr(e)
json.dump(out, open(sys.argv[1], "w"), indent=1)
c = out.get("completion") or {}
print(time.strftime("%H:%M:%S"), "serve answer:", json.dumps(c.get("usage")), out.get("completion_s"), out.get("error", ""))
PY
fi
kill -INT $PID 2>/dev/null
for _ in $(seq 90); do kill -0 $PID 2>/dev/null || break; sleep 1; done
wait $PID; RC=$?
sleep 2
{
  echo "serve exit code: $RC"
  nvidia-smi --query-gpu=index,memory.used --format=csv
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
  echo "--- processes of the serve's session (sid $PID) still alive:"
  ps -eo pid,sid,comm,args --no-headers | awk -v s=$PID '$2==s' | cut -c1-200
} > $S/serve_${TAG}_after_stop.txt 2>&1
note "serve $TAG: stopped rc=$RC; GPUs after: $(smi); left in its session: $(ps -eo sid --no-headers | awk -v s=$PID '$1==s' | wc -l)"
# leave nothing behind for the next start (only this serve's own session)
pkill -KILL -s $PID 2>/dev/null
cp $C/calibration.jsonl $S/calibration.jsonl 2>/dev/null
mkdir -p $S/logs && cp $C/logs/*.log $S/logs/ 2>/dev/null
ls -la $C $C/logs >> $S/serve_${TAG}_after_stop.txt 2>&1
