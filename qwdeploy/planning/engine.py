"""The settings of one vLLM engine that its memory depends on (vLLM's own names). Pure data."""

from __future__ import annotations

from dataclasses import dataclass

from qwdeploy.planning.versions import BASELINE, VllmRules


@dataclass(frozen=True)
class Engine:
    """What vLLM is started with, as far as one GPU's memory is concerned."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int = 32768
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    enforce_eager: bool = False
    kv_cache_dtype: str = "auto"
    max_position: int | None = None  # rotary cache length: YaRN's original × factor, else config's
    compile_cache_warm: bool = False  # a restart that finds torch.compile's cache (no compile peak)
    compute_capability: tuple[int, int] = (9, 0)
    vllm: VllmRules = BASELINE  # the vLLM release's rules (qwdeploy.planning.versions)


@dataclass(frozen=True)
class Span:
    """The decoder layers one GPU holds: all of them, or one pipeline stage's."""

    layers: int | None = None  # None: every layer of the model
    start_layer: int = 0  # the first of them
    first_stage: bool = True  # holds embed_tokens
    last_stage: bool = True  # holds the final norm and lm_head
    samples: bool = True  # runs the sampler (the last stage)


WHOLE_MODEL = Span()
