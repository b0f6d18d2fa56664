"""`qwdeploy plan` stays light: none of the heavy libraries is imported on its path."""

import json
import os
import subprocess
import sys

HEAVY = ["torch", "vllm", "modelscope", "huggingface_hub", "transformers", "pynvml"]

CODE = """
import sys, json
from typer.testing import CliRunner
from qwdeploy.cli import app
result = CliRunner().invoke(app, ["plan", "Qwen/Qwen3-32B", "--gpu", "H100", "--num-gpus", "2", "--json"])
assert result.exit_code == 0, result.output
print(json.dumps([m for m in %r if m in sys.modules]))
"""


def test_plan_imports_none_of_torch_vllm_modelscope_huggingface_hub():
    env = {k: v for k, v in os.environ.items() if k != "QWDEPLOY_VLLM_VERSION"}  # the installed vLLM's metadata too
    out = subprocess.run([sys.executable, "-c", CODE % HEAVY], capture_output=True, text=True, check=True, env=env)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
