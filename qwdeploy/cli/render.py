"""Rich tables and JSON from the same dataclasses. With progress.py, the only modules that import rich."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from qwdeploy.planning.plan import Plan
from qwdeploy.units import GiB

stdout = Console(highlight=False, soft_wrap=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def print_json(data: Any) -> None:
    """JSON on stdout, nothing else: scripts parse it."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def error(message: str, hint: str | None = None) -> None:
    stderr.print(Text("Error: ", style="bold red") + Text(message))
    if hint:
        stderr.print(Text("Hint: ", style="bold") + Text(hint))


def warning(message: str) -> None:
    stderr.print(Text("Warning: ", style="bold yellow") + Text(message))


def info(message: str) -> None:
    stderr.print(Text(message))


def profile_misses(p: Plan) -> None:
    """On stderr: the profile targets a plan that starts misses (serve, warm and export go on)."""
    if p.fits and not p.meets_profile:
        warning(f"the plan misses the {p.profile.name} profile: {'; '.join(p.profile_misses)}")


def plan(p: Plan) -> None:
    """The plan as a person reads it: memory per GPU, capacity, choices, the command."""
    data = p.to_json()
    verdict = (
        Text("fits", style="bold green")
        if data["meets_profile"]
        else Text("fits, misses the profile", style="bold yellow")
        if data["fits"]
        else Text("does not fit", style="bold red")
    )
    gpu = data["gpu"]
    title = Text.assemble(f"{data['model']} on {gpu['count']} × {gpu['name']} (profile {data['profile']}): ", verdict)
    stdout.print(title)
    stdout.print(Text(p.vllm.summary + "."))
    stdout.print(_memory_table(data))
    stdout.print(_capacity_table(data))
    stdout.print(_choices_table(data))
    for note in data["notes"]:
        stdout.print(Text("• ") + Text(note))
    if data["alternatives"]:
        stdout.print(_alternatives_table(data))
    env = " ".join(f"{k}={v}" for k, v in data["env"].items())
    stdout.print(Text("Command:", style="bold"))
    stdout.print(Text((env + " " if env else "") + data["vllm_command"]), soft_wrap=True)


def _memory_table(data: dict[str, Any]) -> Table:
    mem, gpu = data["memory_per_gpu"], data["gpu"]
    table = Table(title="Memory per GPU", title_justify="left", show_header=True)
    table.add_column("part")
    table.add_column("GiB", justify="right")
    table.add_column("how")
    rows = [
        ("total (CUDA)", mem["total_bytes"], f"{gpu['name']}"),
        ("requested", mem["requested_bytes"], _requested_how(data)),
        ("  weights", mem["weights_bytes"], f"{_weights_how(data)}, TP {data['tensor_parallel_size']}"),
        ("  peak activation", mem["activation_bytes"], f"profile run, {data['max_num_batched_tokens']} tokens"),
        ("  non-torch", mem["non_torch_bytes"], "cuBLAS, attention buffers"),
    ]
    if mem.get("cudagraph_in_budget_bytes"):
        rows.append(
            ("  CUDA-graph estimate", mem["cudagraph_in_budget_bytes"], "vLLM's graph estimate, out of the KV budget")
        )
    kv_how = f"{data['kv_cache_bytes_per_token']:,} B/token, {data['kv_cache_dtype']}"
    on_top = mem["cudagraph_bytes"] - mem.get("cudagraph_in_budget_bytes", 0)
    rows += [
        ("  KV cache", mem["kv_cache_bytes"], kv_how),
        ("CUDA graphs (on top)", on_top, "0 with --enforce-eager" if not data["enforce_eager"] else "eager: none"),
        ("CUDA context", mem["cuda_context_bytes"], "per process"),
    ]
    if mem.get("distributed_init_bytes"):
        rows.append(("communicators", mem["distributed_init_bytes"], "NCCL, custom all-reduce; before vLLM's check"))
    for part, n, how in rows:
        table.add_row(part, f"{n / GiB:.2f}", how)
    return table


def _weights_how(data: dict[str, Any]) -> str:
    """The checkpoint's weight type, and the type vLLM runs a 16-bit checkpoint in where they differ (fp16
    before Ampere)."""
    weights, dtype = data["weights"], data.get("dtype")
    sixteen_bit = {"bf16": "bfloat16", "fp16": "float16"}
    if weights in sixteen_bit and dtype and dtype not in ("auto", sixteen_bit[weights]):
        return f"{weights} checkpoint, run as {dtype}"
    return str(weights)


def _requested_how(data: dict[str, Any]) -> str:
    most = data.get("gpu_memory_utilization_max")
    ceiling = f" (at most {most:g} here)" if most is not None else ""
    return f"gpu_memory_utilization {data['gpu_memory_utilization']:g} × total{ceiling}"


_PERFORMANCE_ROWS = (
    ("predicted_decode_tokens_per_s_batch1", "decode tok/s, 1 sequence"),
    ("predicted_decode_tokens_per_s_concurrent", "decode tok/s, all sequences"),
    ("predicted_prefill_tokens_per_s", "prefill tok/s"),
    ("predicted_ttft_s", "time to first token (s)"),
    ("predicted_cold_start_s", "cold start (s)"),
)


def _capacity_table(data: dict[str, Any]) -> Table:
    cap = Table(title="Capacity", title_justify="left", show_header=False)
    cap.add_column("what")
    cap.add_column("value", justify="right")
    cap.add_row("KV cache tokens", f"{data['kv_cache_tokens']:,}")
    cap.add_row(f"max concurrency at {data['max_model_len']:,} tokens", f"{data['max_concurrency']:.2f}x")
    cap.add_row("longest max_model_len that fits", f"{data['max_model_len_limit']:,}")
    perf = data.get("performance") or {}
    for key, label in _PERFORMANCE_ROWS:
        if perf.get(key) is not None:
            cap.add_row(label, f"{perf[key]:,.1f}" if perf[key] < 100 else f"{perf[key]:,.0f}")
    return cap


def _choices_table(data: dict[str, Any]) -> Table:
    choices = Table(title="Choices", title_justify="left")
    for col in ("setting", "value", "why"):
        choices.add_column(col)
    for c in data["choices"]:
        choices.add_row(c["key"], str(c["value"]), c["reason"])
    return choices


def _alternatives_table(data: dict[str, Any]) -> Table:
    alt = Table(title="Alternatives", title_justify="left")
    for col in ("option", "TP", "max_model_len", "KV tokens", "concurrency", "fits"):
        alt.add_column(col)
    for a in data["alternatives"]:
        alt.add_row(
            a["summary"],
            str(a["tensor_parallel_size"]),
            f"{a['max_model_len']:,}",
            f"{a['kv_cache_tokens']:,}",
            f"{a['max_concurrency']:.2f}x",
            "meets profile" if a["meets_profile"] else "yes" if a["fits"] else "no",
        )
    return alt


def models(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Known models")
    for col in ("repo id", "weights", "layers", "KV heads", "context", "config"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["repo_id"],
            r["weights"],
            str(r["layers"]),
            str(r["kv_heads"]),
            f"{r['max_position_embeddings']:,}",
            r["config"],
        )
    _print_whole(table)


def _print_whole(table: Table) -> None:
    """A terminal gets the table at its width; a pipe or a file gets it as wide as it needs,
    so no repo id is ever cut to fit 80 columns."""
    if stdout.is_terminal:
        stdout.print(table)
        return
    needed = stdout.measure(table, options=stdout.options.update_width(10_000)).maximum
    Console(highlight=False, soft_wrap=False, width=max(stdout.width, needed)).print(table)


def gpus(data: dict[str, Any]) -> None:
    """`qwdeploy gpus`: memory per GPU (CUDA's index), identities, MIG, processes, link matrix."""
    visible = data["cuda_visible_devices"]
    stdout.print(Text(f"Driver {data['driver_version']}, CUDA {data['cuda_driver_version'] or '?'}"))
    stdout.print(
        Text(
            f"CUDA_VISIBLE_DEVICES={'(unset)' if visible is None else repr(visible)}, "
            f"CUDA_DEVICE_ORDER={data['cuda_device_order']}"
        )
    )
    label = {
        g["uuid"]: f"hidden (nvml {g['nvml_index']})" if g["index"] is None else str(g["index"]) for g in data["gpus"]
    }
    for table in (
        _gpu_memory(data, label),
        _gpu_ids(data, label),
        _mig(data, label),
        _processes(data, label),
        _links(data, label),
    ):
        if table is not None:
            stdout.print(table)
    for note in data["notes"]:
        stdout.print(Text("• ") + Text(note))


def _optional(value: Any, fmt: str = "{}") -> str:
    return "" if value is None else fmt.format(value)


def _gpu_memory(data: dict[str, Any], label: dict[str, str]) -> Table:
    table = Table(title="GPUs (GiB)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("GPU", "name", "cc", "used", "free", "total", "CUDA total", "MIG", "W", "°C"):
        table.add_column(col, justify="left" if col in ("GPU", "name", "MIG") else "right", no_wrap=col == "name")
    for g in data["gpus"]:
        table.add_row(
            label[g["uuid"]],
            g["name"].removeprefix("NVIDIA "),
            g["compute_capability"],
            *(
                f"{g[k] / GiB:.2f}"
                for k in ("memory_used_bytes", "memory_free_bytes", "memory_total_bytes", "cuda_total_bytes")
            ),
            {"enabled": "on", "disabled": "off"}.get(g["mig_mode"], "n/a"),
            _optional(g["power_watts"], "{:.0f}"),
            _optional(g["temperature_c"]),
        )
    return table


def _gpu_ids(data: dict[str, Any], label: dict[str, str]) -> Table:
    ids = Table(box=box.SIMPLE_HEAD)
    for col in ("GPU", "uuid", "PCI bus id", "nvml"):
        ids.add_column(col)
    for g in data["gpus"]:
        ids.add_row(label[g["uuid"]], g["uuid"], g["pci_bus_id"], str(g["nvml_index"]))
    return ids


def _mig(data: dict[str, Any], label: dict[str, str]) -> Table | None:
    migs = [(g, m) for g in data["gpus"] for m in g["mig_devices"]]
    if not migs:
        return None
    mig = Table(title="MIG instances (GiB)", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("GPU", "uuid", "name", "GI/CI", "total", "free", "visible"):
        mig.add_column(col)
    for g, m in migs:
        mig.add_row(
            label[g["uuid"]],
            m["uuid"],
            m["name"].removeprefix("NVIDIA "),
            f"{m['gpu_instance_id']}/{m['compute_instance_id']}",
            f"{m['memory_total_bytes'] / GiB:.2f}",
            f"{m['memory_free_bytes'] / GiB:.2f}",
            "yes" if m["visible"] else "no",
        )
    return mig


def _processes(data: dict[str, Any], label: dict[str, str]) -> Table | None:
    procs = [(g, p) for g in data["gpus"] for p in g["processes"]]
    if not procs:
        return None
    table = Table(title="Processes holding GPU memory", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("GPU", "pid", "name", "GiB"):
        table.add_column(col, justify="right" if col == "GiB" else "left")
    for g, p in procs:
        used = "?" if p["used_bytes"] is None else f"{p['used_bytes'] / GiB:.2f}"
        table.add_row(label[g["uuid"]], str(p["pid"]), p["name"] or "?", used)
    return table


def _links(data: dict[str, Any], label: dict[str, str]) -> Table | None:
    if len(data["gpus"]) <= 1:
        return None
    kinds = {frozenset((k["a_uuid"], k["b_uuid"])): k["kind"] for k in data["links"]}
    matrix = Table(
        title="Links (NVLINK, else the PCIe path as `nvidia-smi topo -m` names it)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    matrix.add_column("GPU")
    for g in data["gpus"]:
        matrix.add_column(label[g["uuid"]])
    for a in data["gpus"]:
        cells = ["X" if a is b else kinds.get(frozenset((a["uuid"], b["uuid"])), "?") for b in data["gpus"]]
        matrix.add_row(label[a["uuid"]], *cells)
    return matrix


def shown(unit: str, value: float | None) -> str:
    """A plan-vs-actual figure as people read it."""
    if value is None:
        return "-"
    if unit == "bytes":
        return gib(value)
    if unit == "tokens":
        return f"{int(value):,}"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.1f} s"
