"""The plan: what the planner chose, the memory it expects, the vLLM arguments. Pure data.

`Plan.to_json()` is the one object both `--json` and the Rich table render.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

from qwdeploy.gpus.specs import Gpu
from qwdeploy.planning.catalog import Variant
from qwdeploy.planning.context import derived_context
from qwdeploy.planning.kv import BLOCK_SIZE, KvCapacity, kv_bytes_per_token
from qwdeploy.planning.memory import MemoryBreakdown, cudagraph_capture_sizes
from qwdeploy.planning.profiles import Profile
from qwdeploy.planning.stages import Stage, tightest
from qwdeploy.planning.versions import DEFAULT_TARGET, VllmTarget

THINKING_SAMPLING = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
NON_THINKING_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}


@dataclass(frozen=True)
class Pins:
    """Values the user fixed on the command line; the planner fills the rest."""

    tensor_parallel_size: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    kv_cache_dtype: str | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool | None = None
    # vLLM's profile run peaks higher while torch.compile compiles (a cold cache); a restart
    # with a warm cache gets that memory back as KV cache. Plans assume a first start.
    compile_cache_warm: bool = False


@dataclass(frozen=True)
class Choice:
    """One planned setting and the one-line reason for it."""

    key: str
    value: object
    reason: str


@dataclass(frozen=True)
class Alternative:
    """Another configuration worth knowing about: when the plan misses its profile, leaves GPUs
    idle, or spans more nodes than it needs. It keeps the user's pins unless its summary says."""

    summary: str
    model: str
    tensor_parallel_size: int
    kv_cache_dtype: str
    max_model_len: int
    kv_cache_tokens: int
    max_concurrency: float
    fits: bool
    meets_profile: bool = False
    pipeline_parallel_size: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "model": self.model,
            "tensor_parallel_size": self.tensor_parallel_size,
            "kv_cache_dtype": self.kv_cache_dtype,
            "max_model_len": self.max_model_len,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_concurrency": round(self.max_concurrency, 2),
            "fits": self.fits,
            "meets_profile": self.meets_profile,
            "pipeline_parallel_size": self.pipeline_parallel_size,
        }


@dataclass(frozen=True)
class Plan:
    variant: Variant
    profile: Profile
    gpus: tuple[Gpu, ...]  # the GPUs the plan uses (every node's TP group)
    tensor_parallel_size: int
    max_model_len: int
    gpu_memory_utilization: float
    kv_cache_dtype: str
    max_num_seqs: int
    max_num_batched_tokens: int
    enforce_eager: bool
    enable_prefix_caching: bool
    rope_scaling: dict[str, Any] | None  # Qwen's YaRN setting when max_model_len exceeds the native window
    memory: MemoryBreakdown  # one GPU of the stage that sets the KV cache
    capacity: KvCapacity
    fits: bool
    local: bool  # planned against probed GPUs (CUDA_VISIBLE_DEVICES applies)
    pipeline_parallel_size: int = 1
    choices: tuple[Choice, ...] = ()
    notes: tuple[str, ...] = ()
    alternatives: tuple[Alternative, ...] = ()
    meets_profile: bool = True
    profile_misses: tuple[str, ...] = ()  # the profile targets missed (empty when it meets the profile)
    performance: dict[str, Any] = field(default_factory=dict[str, Any])
    stages: tuple[Stage, ...] = ()  # one per pipeline stage (node)
    # the largest gpu_memory_utilization these GPUs keep through vLLM's whole start
    gpu_memory_utilization_max: float | None = None
    vllm: VllmTarget = DEFAULT_TARGET  # the vLLM release the plan is for, and its rules

    # ---- derived facts -------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.variant.name

    @property
    def quantization(self) -> str | None:
        q = self.variant.spec.quantization
        return q.method if q else None

    @property
    def dtype(self) -> str:
        if self.variant.weights == "fp16" or self.variant.spec.torch_dtype in ("float16", "fp16"):
            return "float16"
        return "bfloat16"

    @property
    def hf_overrides(self) -> dict[str, Any] | None:
        """Qwen's YaRN setting, with the context it reaches as max_position_embeddings: vLLM 0.30+
        derives max_model_len from that alone (0.26-0.29 from original × factor, the same value)."""
        if not self.rope_scaling:
            return None
        rope_theta = self.variant.spec.rope_theta or (5000000 if self.variant.is_2507 else 1000000)
        return {
            "rope_parameters": {"rope_theta": rope_theta, **self.rope_scaling},
            "max_position_embeddings": derived_context(self.variant, self.rope_scaling),
        }

    @property
    def thinking(self) -> bool:
        """Whether the model thinks under this plan: 2507 models are what they are."""
        return {"always": True, "never": False}.get(self.variant.thinking, self.profile.thinking)

    @property
    def sampling(self) -> dict[str, Any]:
        """Qwen's recommended sampling defaults for the model and mode."""
        return dict(THINKING_SAMPLING if self.thinking else NON_THINKING_SAMPLING)

    @property
    def reasoning_parser(self) -> str | None:
        if self.variant.thinking == "never":
            return None  # Instruct-2507 never thinks
        if self.variant.thinking == "always" and self.profile.reasoning_parser:
            return "deepseek_r1"  # Thinking-2507 templates open <think> themselves (Qwen's README)
        return self.profile.reasoning_parser

    @property
    def cuda_visible_devices(self) -> str | None:
        if not self.local:
            return None
        return ",".join(g.uuid or str(g.index) for g in self.gpus)

    @property
    def env(self) -> dict[str, str]:
        env = {}
        if self.cuda_visible_devices:
            env["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
        return env

    @property
    def vllm_args(self) -> list[str]:
        """Arguments of `vllm serve`: the model, then every setting explicitly."""
        args = [self.model, *_flags(self._settings())]
        off = self.vllm.rules.prefix_caching_off_flag
        args.append("--enable-prefix-caching" if self.enable_prefix_caching else off)
        if self.enforce_eager:
            args.append("--enforce-eager")
        if self.pipeline_parallel_size > 1:
            args += ["--distributed-executor-backend", "ray"]  # vLLM's multi-node path
        if self.hf_overrides:
            args += ["--hf-overrides", _compact(self.hf_overrides)]
        q = self.variant.spec.quantization
        if q is not None and q.vllm_flag:  # the quant config is in a file of its own
            args += ["--quantization", q.vllm_flag]
        if self.reasoning_parser:
            args += ["--reasoning-parser", self.reasoning_parser]
        if self.profile.tool_call_parser:
            args += ["--enable-auto-tool-choice", "--tool-call-parser", self.profile.tool_call_parser]
        args += ["--override-generation-config", _compact(self.sampling)]
        return args

    def _settings(self) -> dict[str, object]:
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": f"{self.gpu_memory_utilization:g}",
            "kv_cache_dtype": self.kv_cache_dtype,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "block_size": BLOCK_SIZE,
            "dtype": self.dtype,
        }

    @property
    def cudagraph_capture_sizes(self) -> list[int]:
        """The CUDA-graph sizes vLLM captures under this plan (none when eager)."""
        if self.enforce_eager:
            return []
        cc = self.gpu.spec.compute_capability
        return cudagraph_capture_sizes(self.max_num_seqs, self.max_num_batched_tokens, self.vllm.rules, cc)

    @property
    def gpu(self) -> Gpu:
        """The GPU the plan is sized against: the smallest of the group."""
        return min(self.gpus, key=lambda g: (g.total_bytes, g.free_bytes))

    @property
    def tight_stage(self) -> Stage | None:
        """The pipeline stage whose KV cache sizes every worker's (None for a bare plan)."""
        return tightest(self.stages) if self.stages else None

    @property
    def layers_per_gpu(self) -> int:
        """Decoder layers on the GPU that sets the KV cache (the tightest pipeline stage)."""
        tight = self.tight_stage
        return tight.layers if tight else self.variant.spec.num_hidden_layers

    def to_json(self) -> dict[str, Any]:
        return {**self._settings_json(), **self._capacity_json(), **self._explained_json()}

    def _settings_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "profile": self.profile.name,
            "quantization": self.quantization,
            "weights": self.variant.weight_dtype,
            "dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "gpu_memory_utilization_max": self.gpu_memory_utilization_max,
            "kv_cache_dtype": self.kv_cache_dtype,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "enforce_eager": self.enforce_eager,
            "enable_prefix_caching": self.enable_prefix_caching,
            "block_size": BLOCK_SIZE,
            "hf_overrides": self.hf_overrides,
            "reasoning_parser": self.reasoning_parser,
            "tool_call_parser": self.profile.tool_call_parser,
            "sampling": self.sampling,
            "gpu": {
                "name": self.gpu.name,
                "total_bytes": self.gpu.total_bytes,
                "total_source": self.gpu.spec.total_source,
                "free_bytes": min(g.free_bytes for g in self.gpus),
                "count": len(self.gpus),
            },
            "cuda_visible_devices": self.cuda_visible_devices,
        }

    def _capacity_json(self) -> dict[str, Any]:
        m = self.memory
        return {
            "memory_per_gpu": {
                "total_bytes": m.total_bytes,
                "requested_bytes": m.requested_bytes,
                "weights_bytes": m.weights_bytes,
                "activation_bytes": m.activation_bytes,
                "cudagraph_bytes": m.cudagraph_bytes,
                "cudagraph_in_budget_bytes": m.cudagraph_in_budget_bytes,
                "non_torch_bytes": m.non_torch_bytes,
                "kv_cache_bytes": max(0, m.kv_cache_bytes),
                "cuda_context_bytes": m.cuda_context_bytes,
                "distributed_init_bytes": m.distributed_init_bytes,
                "footprint_bytes": m.footprint_bytes,
            },
            "kv_cache_bytes_per_token": kv_bytes_per_token(
                self.variant.spec, self.kv_cache_dtype, self.tensor_parallel_size, self.layers_per_gpu
            ),
            "num_gpu_blocks": self.capacity.num_blocks,
            "kv_cache_tokens": self.capacity.tokens,
            "max_concurrency": round(self.capacity.max_concurrency, 2),
            "max_model_len_limit": self.capacity.max_model_len_limit,
            "fits": self.fits,
            "meets_profile": self.meets_profile,
            "profile_misses": list(self.profile_misses),
        }

    def _explained_json(self) -> dict[str, Any]:
        return {
            "vllm_version": self.vllm.version,
            "vllm_validated": self.vllm.validated,
            "vllm_rules": self.vllm.rules.release,
            "vllm_args": self.vllm_args,
            "vllm_command": "vllm serve " + shlex.join(self.vllm_args),
            "env": self.env,
            "choices": [{"key": c.key, "value": c.value, "reason": c.reason} for c in self.choices],
            "notes": list(self.notes),
            "alternatives": [a.to_json() for a in self.alternatives],
            "performance": self.performance,
            "stages": [s.to_json() for s in self.stages] if self.pipeline_parallel_size > 1 else [],
        }


def _flags(settings: dict[str, object]) -> list[str]:
    """`--name value` for each setting, vLLM's flag spelling of its own field names."""
    out: list[str] = []
    for key, value in settings.items():
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


def _compact(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))
