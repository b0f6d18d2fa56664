#!/bin/bash
# Wait up to $1 seconds for the detached batch, snapshotting /root/results into $OUT/results.tgz
# every 20 s (what is under $OUT comes back even if the call is cut off).
MAX=${1:-540}
T0=$(date +%s)
snap() { tar czf $OUT/results.tgz.part -C /root results 2>/dev/null && mv -f $OUT/results.tgz.part $OUT/results.tgz; }
seen=0
while true; do
  n=$(wc -l < /root/results/progress.log 2>/dev/null || echo 0)
  if [ "$n" -gt "$seen" ]; then sed -n "$((seen+1)),${n}p" /root/results/progress.log | cut -c1-700; seen=$n; fi
  snap
  [ -f /root/results/DONE ] && { echo "batch DONE"; break; }
  [ $(( $(date +%s) - T0 + 20 )) -ge "$MAX" ] && break
  sleep 20
done
snap
cur=$(ls -t /root/results/raw/*.rawlog 2>/dev/null | head -1)
[ -n "$cur" ] && { echo "--- running: $cur"; tr '\r' '\n' < "$cur" | grep -v '%|' | tail -4 | cut -c1-300; }
nvidia-smi --query-gpu=memory.used --format=csv,noheader
tail -3 /root/results/orchestrator.log | cut -c1-300
echo "collect waited $(( $(date +%s) - T0 )) s"
