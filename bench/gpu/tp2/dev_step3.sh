#!/bin/bash
# Device call 3 (carry .stage/p3 and .devsnap; run from .devsnap): install vLLM's missing deps,
# copy the repo to /root/qw, start batch_tp2.sh detached, then collect for up to $1 seconds.
T0=$(date +%s)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p /root/qw /root/results /root/deps
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/deps ../.stage/p3/*.whl || exit 1
cp ../.stage/p3/env.sh /root/env.sh
tar --exclude=./.git -cf - . | (cd /root/qw && tar xf -)
ln -sfn /root/qw/profiles /root/qw/qwdeploy/_profiles  # the installed package maps profiles/ there
for _ in $(seq 180); do [ -f /root/site/.unpacked ] && break; sleep 1; done
[ -f /root/site/.unpacked ] || { echo "unpack not finished"; cat /root/unpack.log; }
echo "staged after $(( $(date +%s) - T0 )) s"
cd /root/qw && setsid nohup bash bench/gpu/tp2/batch_tp2.sh > /root/results/batch.log 2>&1 < /dev/null &
echo "batch started after $(( $(date +%s) - T0 )) s"
bash /root/qw/bench/gpu/collect.sh $(( $1 - ($(date +%s) - T0) ))
