#!/bin/bash
# Device call 2 of the TP=2 confirmation (carry .stage/p2; run from the repo root): stage vLLM part 2
# and unpack it in the background (confirm_tp2.sh waits for /root/site/.unpacked).
cp .stage/p2/* /root/stage/ || exit 1
setsid nohup bash -c 'cd /root/stage && cat vllm.tar.xz.part00 vllm.tar.xz.part01 > v.tar.xz && rm vllm.tar.xz.part0* &&
  mkdir -p /root/site /root/deps && tar -xJf v.tar.xz -C /root/site && rm v.tar.xz && touch /root/site/.unpacked' \
  > /root/unpack.log 2>&1 < /dev/null &
sleep 1; ls -la /root/stage
