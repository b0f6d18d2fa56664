"""qwdeploy: plan, download and serve Qwen3 models with vLLM."""

__version__ = "0.1.0"
