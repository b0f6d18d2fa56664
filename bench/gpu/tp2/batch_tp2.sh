#!/bin/bash
# Detached device batch for the TP=2 measurements on 2 x H200 (issue 16). Started by dev_step3.sh
# after vLLM is staged; progress goes to /root/results/progress.log (collect.sh shows it) and
# /root/results/DONE marks the end.
#   1. run_vllm.py cases_tp2_part1.json  (32B bf16, 32B at the measured max gmu, 8B x3, 30B-A3B)
#   2. serve_tp2.sh cold, then warm      (qwdeploy serve, Qwen3-32B TP=2, dummy weights)
#   3. run_vllm.py cases_tp2_part2.json  (32B-AWQ, 32B YaRN 131072, 14B)
source /root/env.sh
# NVLink multicast stays off in every process (shared host; see KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
Q=/root/qw
R=/root/results
mkdir -p $R/raw $R/serve
note() { echo "$(date +%H:%M:%S) $*" >> $R/progress.log; }
cd $Q
note "batch start (TP=2); env NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE TORCH_SYMM_MEM_DISABLE_MULTICAST=$TORCH_SYMM_MEM_DISABLE_MULTICAST NVSHMEM_DISABLE_NVLS=$NVSHMEM_DISABLE_NVLS"
python3 bench/gpu/run_vllm.py orchestrate --cases bench/gpu/tp2/cases_tp2_part1.json \
  --configs qwdeploy/data/configs --out $R --done-file DONE_part1 --meta-name batch_meta_part1.json \
  >> $R/orchestrator.log 2>&1
note "part 1 end rc=$?"
bash bench/gpu/tp2/serve_tp2.sh cold
bash bench/gpu/tp2/serve_tp2.sh warm
python3 bench/gpu/run_vllm.py orchestrate --cases bench/gpu/tp2/cases_tp2_part2.json \
  --configs qwdeploy/data/configs --out $R --done-file DONE_part2 --meta-name batch_meta_part2.json \
  >> $R/orchestrator.log 2>&1
note "part 2 end rc=$?"
touch $R/DONE
note "batch end"
