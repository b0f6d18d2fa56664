#!/bin/bash
# Device helper: once the running matrix case named $1 is done, stop the orchestrator and run
# the cold-start cases $2 (space-separated) through batch_coldstart.sh without the import step.
R=/root/results
until grep -q "DONE $1 " $R/progress.log 2>/dev/null; do sleep 3; done
# the children run in their own sessions: stop them and vLLM's engine, then wait for an idle GPU
pkill -f "[r]un_vllm.py orchestrate"; sleep 2; pkill -9 -f "[r]un_vllm\.py"; pkill -9 -f "[E]ngineCore"
for _ in $(seq 60); do
  [ "$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)" -lt 1000 ] && break
  sleep 2
done
echo "$(date +%H:%M:%S) matrix stopped after $1 (the rest runs on the next machine)" >> $R/progress.log
rm -f $R/DONE
SKIP_IMPORT=1 bash /root/qw/bench/gpu/batch_coldstart.sh "$2" ""
