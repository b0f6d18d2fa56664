#!/bin/bash
# Device call 1 on nvidia-h200-x2 (carry .stage/p1 and .devsnap; run from .devsnap): stage vLLM
# part 1, record the machine, the link matrix and the NVML captures (idle, and GPU 0 30 % held).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p /root/stage /root/nvml
cp ../.stage/p1/* /root/stage/ &
CP=$!
{ date -u; uname -a; nvidia-smi; nvidia-smi -L; nproc; free -g; df -h /root /tmp;
  python3 -c "import torch,sys;print('python',sys.version);print('torch',torch.__version__,torch.version.cuda, torch.cuda.nccl.version())";
  python3 -m pip show nvidia-ml-py 2>/dev/null | head -3; which nvcc; nvcc --version | tail -2;
  echo '--- nvidia-smi topo -m'; nvidia-smi topo -m;
  echo '--- nvidia-smi topo -p2p r'; nvidia-smi topo -p2p r;
  echo '--- nvidia-smi topo -p2p n'; nvidia-smi topo -p2p n;
  echo '--- nvidia-smi nvlink --status'; nvidia-smi nvlink --status;
  echo '--- nvidia-smi -q -d MEMORY'; nvidia-smi -q -d MEMORY;
  env | grep -E '^(NCCL|TORCH_SYMM|NVSHMEM|CUDA)' ; } > /root/nvml/h200x2_machine.txt 2>&1
python3 tests/data/nvml/capture_nvml.py --out /root/nvml/h200x2_idle.json
python3 tests/data/nvml/capture_nvml.py --out /root/nvml/h200x2_30pct_held.json --hold-fraction 0.30
wait $CP
ls -la /root/stage
tar czf $OUT/nvml.tgz -C /root/nvml .
grep -A12 -- '--- nvidia-smi topo -m' /root/nvml/h200x2_machine.txt
python3 -c "import json;d=json.load(open('/root/nvml/h200x2_idle.json'));print(json.dumps(d['torch_mem_get_info'])[:900])"
