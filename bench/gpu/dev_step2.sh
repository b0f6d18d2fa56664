#!/bin/bash
# Device call 2 (carry .stage/p2): stage vLLM part 2 and unpack vLLM into /root/site.
set -e
cp .stage/p2/* /root/stage/
cd /root/stage && cat vllm.tar.xz.part00 vllm.tar.xz.part01 > v.tar.xz && rm vllm.tar.xz.part0*
mkdir -p /root/site /root/deps && tar -xJf v.tar.xz -C /root/site && rm v.tar.xz
ls /root/site; du -sh /root/site
