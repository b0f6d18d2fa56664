#!/bin/bash
# Detached device batch (after dev_step1-2 and the p3 install): issue-8 cold/restart series, the
# weight-load probe (case "probe"), then run_vllm.py matrix cases. Progress goes to
# /root/results/progress.log (collect.sh reads it); /root/results/DONE marks the end.
# usage: setsid nohup bash bench/gpu/batch_coldstart.sh "CASES" "MATRIX_NAMES" &
#   CASES: coldstart_gpu.py cases, space-separated; MATRIX_NAMES: comma-separated case names
source /root/env.sh
Q=/root/qw
R=/root/results
mkdir -p $R/raw $R/coldstart
note() { echo "$(date +%H:%M:%S) $*" >> $R/progress.log; }
cd $Q
note "batch start; cases: $1; matrix: $2"

# 1. import cost (the first import also writes the bytecode caches a pip install would have)
if [ -z "$SKIP_IMPORT" ]; then
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
t=$(date +%s%N); python3 -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1
note "first import of the api_server module $(ms $t) ms"
t=$(date +%s%N); python3 -X importtime -c "import vllm.entrypoints.openai.api_server" 2> $R/importtime.txt >/dev/null
note "second import $(ms $t) ms"
fi

# 2. cold start vs restart (qwdeploy's cache, plain vLLM)
for c in $1; do
  [ "$c" = probe ] && {
    m=/root/qwcache/models/Qwen--Qwen3-4B-Instruct-2507; mkdir -p $m
    cp qwdeploy/data/configs/Qwen--Qwen3-4B-Instruct-2507.json $m/config.json
    python3 bench/gpu/probe_weights.py /root/qwcache/models/Qwen--Qwen3-4B-Instruct-2507 \
      --max-model-len 32768 --out $R/probe_4b2507.json > $R/probe_4b2507.log 2>&1
    note "probe rc=$? $(head -c 600 $R/probe_4b2507.log | tail -c 300)"; continue; }
  timeout 600 python3 bench/gpu/coldstart_gpu.py --case $c \
    --cache-root /root/qwcache --out $R/coldstart/coldstart_gpu.json > $R/coldstart/$c.out 2>&1
  rc=$?
  note "coldstart $c rc=$rc $(tr '\n' ' ' < $R/coldstart/$c.out | grep -o '"ready_s": [0-9.]*' | head -1)"
done

# 3. matrix cases (plans as qwdeploy makes them); FP8 ones reuse the DeepGEMM JIT of step 2
dg=$(find /root/qwcache -maxdepth 4 -type d -name deep_gemm | head -1)
[ -n "$dg" ] && export DG_JIT_CACHE_DIR=$dg
if [ -n "$2" ]; then
  python3 /root/bench/run_vllm.py orchestrate --cases $Q/bench/gpu/cases_matrix.json \
    --configs $Q/qwdeploy/data/configs --out $R --only "$2" >> $R/orchestrator.log 2>&1
else
  touch $R/DONE
fi
note "batch end"
