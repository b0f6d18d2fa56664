"""Every listed GPU plans, an unlisted one plans from --gpu-memory and --compute-capability, and each
plan follows what vLLM 0.26 does on that compute capability (qwdeploy.planning.platform)."""

import json

import pytest

from qwdeploy import PlanRequest, plan
from qwdeploy.cli import app
from qwdeploy.gpus.specs import specs
from qwdeploy.planning import catalog, platform
from qwdeploy.planning.engine import Engine
from qwdeploy.planning.memory import attention_workspace_bytes
from qwdeploy.units import GiB, MiB

SMALL = "Qwen/Qwen3-0.6B"
RUNNABLE = [s.name for s in specs() if s.compute_capability >= platform.WHEEL_MIN]
TOO_OLD = [s.name for s in specs() if s.compute_capability < platform.WHEEL_MIN]
T4_LIKE = ["--gpu-memory", "24GiB", "--compute-capability", "7.5"]
QWEN3_8B = catalog.get("Qwen/Qwen3-8B")


def _json(runner, *args) -> tuple[int, dict]:
    result = runner.invoke(app, ["plan", *args, "--json"])
    return result.exit_code, json.loads(result.stdout)


@pytest.mark.parametrize("gpu", RUNNABLE)
def test_every_listed_gpu_that_vllm_runs_fits_a_small_model(gpu):
    assert plan(PlanRequest(SMALL, gpu=gpu)).fits


@pytest.mark.parametrize("gpu", TOO_OLD)
def test_a_listed_gpu_vllm_026_cannot_run_is_a_plan_that_says_why_and_what_works(gpu):
    result = plan(PlanRequest(SMALL, gpu=gpu))
    assert not result.fits
    assert "none for sm_70" in result.notes[0] and "7.5 or newer" in result.notes[0]


def test_the_v100_is_listed_and_refused():
    assert "V100-SXM2-32GB" in TOO_OLD


@pytest.mark.parametrize(
    ("nvidia_smi_name", "entry"),
    [
        ("Tesla T4", "T4-16GB"),
        ("Tesla V100-SXM2-16GB", "V100-SXM2-16GB"),
        ("NVIDIA RTX A6000", "RTX-A6000-48GB"),
        ("NVIDIA A40", "A40-48GB"),
        ("NVIDIA L40", "L40-48GB"),
        ("NVIDIA L20", "L20-48GB"),
        ("NVIDIA H800", "H800-SXM-80GB"),
        ("NVIDIA A800-SXM4-80GB", "A800-SXM-80GB"),
        ("NVIDIA A800-SXM4-40GB", "A800-40GB"),
        ("NVIDIA GeForce RTX 4090 D", "RTX-4090D-24GB"),
        ("NVIDIA GeForce RTX 4080", "RTX-4080-16GB"),
        ("NVIDIA H20", "H20-96GB"),
        ("NVIDIA H20-3e", "H20-3e-141GB"),
        ("NVIDIA A100 80GB PCIe", "A100-PCIe-80GB"),
    ],
)
def test_the_nvidia_smi_product_name_finds_its_entry(nvidia_smi_name, entry):
    assert plan(PlanRequest(SMALL, gpu=nvidia_smi_name)).gpu.name == entry


def test_a_datasheet_total_is_marked_as_an_estimate_in_the_plan():
    result = plan(PlanRequest(SMALL, gpu="T4"))
    assert result.gpu.total_bytes == (15360 - 480) * MiB  # NVML total minus the driver's reserve
    assert any("estimated from the datasheet" in n for n in result.notes)


# ---- a GPU that is not listed ---------------------------------------------------------------


def test_an_unlisted_turing_gpu_plans_fp16_without_flash_attention_and_without_fp8(runner):
    _, p = _json(runner, "Qwen/Qwen3-4B", *T4_LIKE)
    args = p["vllm_args"]
    assert p["fits"] and p["gpu"]["total_bytes"] == 24 * GiB
    assert (p["dtype"], args[args.index("--dtype") + 1]) == ("float16", "float16")
    assert p["attention_backend"] == "TRITON_ATTN"
    assert p["kv_cache_dtype"] == "auto" and p["quantization"] is None


def test_the_cost_profile_on_an_unlisted_turing_gpu_keeps_the_kv_cache_out_of_fp8(runner):
    _, p = _json(runner, "Qwen/Qwen3-4B", "--profile", "cost", *T4_LIKE)
    assert p["kv_cache_dtype"] == "auto"


def test_an_unlisted_gpu_total_is_marked_as_given(runner):
    _, p = _json(runner, SMALL, "--gpu-memory", "80GB", "--compute-capability", "9.0")
    assert p["gpu"]["total_bytes"] == 80 * 10**9
    assert any("as given (--gpu-memory" in n for n in p["notes"])


def test_gpu_memory_without_a_compute_capability_is_a_usage_error(runner):
    result = runner.invoke(app, ["plan", SMALL, "--gpu-memory", "24GiB"])
    assert result.exit_code == 2 and "--compute-capability is missing" in result.stderr


def test_gpu_memory_beside_a_named_gpu_is_a_usage_error(runner):
    result = runner.invoke(app, ["plan", SMALL, "--gpu", "H100", *T4_LIKE])
    assert result.exit_code == 2 and "--gpu NAME has its own" in result.stderr


@pytest.mark.parametrize("size", ["24 GX", "0GB", "lots"])
def test_a_size_that_is_not_one_is_a_usage_error(runner, size):
    result = runner.invoke(app, ["plan", SMALL, "--gpu-memory", size, "--compute-capability", "7.5"])
    assert result.exit_code == 2 and "--gpu-memory" in result.stderr


def test_a_compute_capability_that_is_not_major_dot_minor_is_a_usage_error(runner):
    result = runner.invoke(app, ["plan", SMALL, "--gpu-memory", "24GiB", "--compute-capability", "sm75"])
    assert result.exit_code == 2 and "7.5, 8.6, 9.0" in result.stderr


# ---- vLLM 0.26's rules per compute capability -----------------------------------------------


@pytest.mark.parametrize(
    ("cc", "auto_kv", "fp8_kv"),
    [
        ((7, 5), "TRITON_ATTN", "TRITON_ATTN"),  # FA needs 8.0, FlashInfer is held at 8.0+
        ((8, 0), "FLASH_ATTN", "FLASHINFER"),  # FA2 has no fp8 KV
        ((8, 6), "FLASH_ATTN", "FLASHINFER"),
        ((8, 9), "FLASH_ATTN", "FLASHINFER"),
        ((9, 0), "FLASH_ATTN", "FLASH_ATTN"),  # FA3 takes fp8 KV (the H100 runs' logs)
        ((10, 0), "FLASHINFER", "FLASHINFER"),  # FlashInfer first on Blackwell 10.x
        ((12, 0), "FLASH_ATTN", "FLASHINFER"),
    ],
)
def test_the_attention_backend_is_the_one_vllm_picks(cc, auto_kv, fp8_kv):
    assert (platform.attention_backend(cc, "auto"), platform.attention_backend(cc, "fp8")) == (auto_kv, fp8_kv)


def test_the_cpu_node_has_no_cuda_attention_backend():
    assert platform.attention_backend(platform.NOT_CUDA, "auto") is None


def test_bf16_checkpoints_run_fp16_before_ampere():
    assert [platform.model_dtype(QWEN3_8B, cc) for cc in [(7, 5), (8, 0)]] == ["float16", "bfloat16"]


def test_a_t4_plan_passes_dtype_float16_to_vllm():
    result = plan(PlanRequest(SMALL, gpu="T4"))
    assert result.vllm_args[result.vllm_args.index("--dtype") + 1] == "float16"


def test_deep_gemm_runs_on_hopper_and_blackwell_only():
    ccs = [(8, 0), (8, 9), (9, 0), (10, 0), (12, 0)]
    assert [platform.uses_deep_gemm(cc) for cc in ccs] == [False, False, True, True, True]


def test_an_ampere_fp8_plan_names_marlin_and_no_deep_gemm():
    notes = " ".join(plan(PlanRequest("Qwen/Qwen3-8B-FP8", gpu="A100-80GB")).notes)
    assert "through Marlin" in notes and "DeepGEMM" not in notes


def test_a_turing_int4_plan_says_which_kernel_runs_it():
    notes = " ".join(plan(PlanRequest("Qwen/Qwen3-8B-AWQ", gpu="T4")).notes)
    assert "fp16 activations (awq through Marlin on T4-16GB" in notes


def test_every_backend_takes_the_planned_block_size_of_16():
    assert all(platform.block_size_supported(b, 16) for b in platform.BLOCK_SIZES)


def test_flashinfer_takes_no_128_token_blocks_off_blackwell():
    assert not platform.block_size_supported(platform.FLASHINFER, 128)


# ---- what the attention backend allocates -----------------------------------------------------


def test_flashinfer_workspace_grows_with_the_prefill_chunk():
    engine = Engine(max_num_batched_tokens=8192, kv_cache_dtype="fp8", compute_capability=(8, 9))
    # max(394 MiB, 8192 tokens x 32 query heads x 128 head_dim x 16 B) = 512 MiB
    assert attention_workspace_bytes(QWEN3_8B, engine) == 8192 * 32 * 128 * 16 == 512 * MiB


def test_flashinfer_workspace_is_at_least_394_mib():
    engine = Engine(max_num_batched_tokens=2048, kv_cache_dtype="fp8", compute_capability=(8, 9))
    assert attention_workspace_bytes(QWEN3_8B, engine) == 394 * MiB  # 2048 x 32 x 128 x 16 = 128 MiB < 394


def test_blackwell_adds_the_trtllm_workspace():
    engine = Engine(max_num_batched_tokens=8192, compute_capability=(10, 0))
    assert attention_workspace_bytes(QWEN3_8B, engine) == 512 * MiB + 394 * MiB


def test_triton_attention_holds_its_softmax_segments_on_turing():
    engine = Engine(max_num_batched_tokens=8192, max_num_seqs=256, compute_capability=(7, 5))
    # 128 // 8 KV heads = 16 sequences x 32 heads x 16 segments x (128 + 2) fp32 values
    assert attention_workspace_bytes(QWEN3_8B, engine) == 16 * 32 * 16 * 130 * 4


def test_flash_attention_allocates_no_workspace():
    assert attention_workspace_bytes(QWEN3_8B, Engine(compute_capability=(9, 0))) == 0


def test_the_workspace_counts_in_what_the_process_holds():
    result = plan(PlanRequest("Qwen/Qwen3-8B", gpu="L40S", profile="cost"))
    m = result.memory
    assert m.attention_workspace_bytes > 0 and result.attention_backend == "FLASHINFER"
    assert m.footprint_bytes == m.cuda_context_bytes + m.requested_bytes + m.cudagraph_on_top_bytes + (
        m.attention_workspace_bytes
    )
