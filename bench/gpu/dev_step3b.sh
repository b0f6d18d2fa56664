#!/bin/bash
# Device call 3 for the cold-start batch (carry .stage/p3): install vLLM's missing deps, copy the
# repo to /root/qw, start bench/gpu/batch_coldstart.sh detached, then collect.
# usage: bash bench/gpu/dev_step3b.sh MAX_COLLECT_SECONDS "COLDSTART CASES" "MATRIX,NAMES"
set -e
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/deps .stage/p3/*.whl
cp .stage/p3/env.sh /root/env.sh
mkdir -p /root/qw /root/bench /root/results
tar --exclude=./.stage --exclude=./.git -cf - . | (cd /root/qw && tar xf -)
ln -sfn /root/qw/profiles /root/qw/qwdeploy/_profiles  # the installed package maps profiles/ there
cp bench/gpu/run_vllm.py bench/gpu/collect.sh /root/bench/
setsid nohup bash /root/qw/bench/gpu/batch_coldstart.sh "$2" "$3" > /root/results/batch.log 2>&1 < /dev/null &
echo "batch started after $(( $(date +%s) - T0 )) s"
set +e
bash /root/bench/collect.sh $(( $1 - ($(date +%s) - T0) ))
