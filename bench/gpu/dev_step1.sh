#!/bin/bash
# Device call 1 (carry .stage/p1): stage vLLM part 1, record machine facts and the two NVML captures.
mkdir -p /root/stage /root/nvml
cp .stage/p1/* /root/stage/ &
CP=$!
{ date -u; uname -a; nvidia-smi; nvidia-smi -L; nproc; free -g; df -h /root /tmp;
  python3 -c "import torch,sys;print('python',sys.version);print('torch',torch.__version__,torch.version.cuda)";
  python3 -m pip show nvidia-ml-py 2>/dev/null | head -3; which nvcc; nvcc --version | tail -2; } > /root/nvml/machine.txt 2>&1
python3 tests/data/nvml/capture_nvml.py --out /root/nvml/h100_idle.json
python3 tests/data/nvml/capture_nvml.py --out /root/nvml/h100_30pct_held.json --hold-fraction 0.30
nvidia-smi --query-gpu=memory.used,memory.total --format=csv
wait $CP
ls -la /root/stage
tar czf $OUT/nvml.tgz -C /root/nvml .
cat /root/nvml/machine.txt | head -40
