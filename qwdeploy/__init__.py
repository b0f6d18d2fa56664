"""qwdeploy: plan, download and serve Qwen3 models with vLLM.

The library entry point: `qwdeploy.plan(qwdeploy.PlanRequest("Qwen/Qwen3-8B", gpu="H100"))`.
"""

from qwdeploy.api import PlanRequest, plan

__version__ = "0.1.0"

__all__ = ["PlanRequest", "__version__", "plan"]
