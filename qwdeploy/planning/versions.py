"""The vLLM release the memory model reproduces."""

VLLM_VERSION = "0.26.0"
