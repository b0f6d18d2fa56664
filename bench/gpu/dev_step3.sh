#!/bin/bash
# Device call 3 (carry .stage/p3): install vLLM's missing deps, start the detached batch, then collect.
# usage: bash bench/gpu/dev_step3.sh MAX_COLLECT_SECONDS [--only a,b]
set -e
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/deps .stage/p3/*.whl
cp .stage/p3/env.sh /root/env.sh
source /root/env.sh
mkdir -p /root/bench /root/results
cp bench/gpu/run_vllm.py bench/gpu/cases.json bench/gpu/collect.sh /root/bench/
cp -r qwdeploy/data/configs /root/bench/configs
shift_only=""
if [ "$2" = "--only" ]; then shift_only="--only $3"; fi
setsid nohup python3 /root/bench/run_vllm.py orchestrate --cases /root/bench/cases.json \
  --configs /root/bench/configs --out /root/results $shift_only > /root/results/orchestrator.log 2>&1 < /dev/null &
echo "batch started after $(( $(date +%s) - T0 )) s"
set +e
bash /root/bench/collect.sh $(( $1 - ($(date +%s) - T0) ))
