#!/bin/bash
# Device helper: once the running matrix case named $1 is done, stop the orchestrator and run
# the cold-start cases $2 (space-separated) through batch_coldstart.sh without the import step.
R=/root/results
until grep -q "DONE $1 " $R/progress.log 2>/dev/null; do sleep 3; done
pkill -f "run_vllm.py orchestrate"; sleep 2; pkill -9 -f "run_vllm.py"; sleep 3
echo "$(date +%H:%M:%S) matrix stopped after $1 (the rest runs on the next machine)" >> $R/progress.log
rm -f $R/DONE
SKIP_IMPORT=1 bash /root/qw/bench/gpu/batch_coldstart.sh "$2" ""
