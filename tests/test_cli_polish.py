"""What a terminal user meets first: shell completion, --help at 80 columns, warm's stated
defaults, `models` through a pipe, and one rule for a value that is not a choice (exit 2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_checks import is_one_error

from qwdeploy import PlanRequest, api
from qwdeploy.cli import app
from qwdeploy.errors import ExitCode
from qwdeploy.planning import catalog, startup

TINY = str(Path(__file__).parent / "fixtures" / "tiny-qwen3")
COMMANDS = ["plan", "models", "download", "serve", "warm", "export", "gpus"]


pytestmark = pytest.mark.usefixtures("cpu_machine")


# ---- completion ----------------------------------------------------------------------------------


def test_show_completion_prints_a_bash_completion_script(runner):
    result = runner.invoke(app, ["--show-completion", "bash"], prog_name="qwdeploy")
    assert result.exit_code == 0 and "complete -o default -F _qwdeploy_completion qwdeploy" in result.stdout


def test_install_completion_is_offered_in_help(runner):
    assert "--install-completion" in runner.invoke(app, ["--help"]).stdout


def test_completion_completes_an_option_name(runner):
    env = {"_QWDEPLOY_COMPLETE": "complete_bash", "COMP_WORDS": "qwdeploy plan M --max-model", "COMP_CWORD": "3"}
    assert runner.invoke(app, [], env=env, prog_name="qwdeploy").stdout.split() == ["--max-model-len"]


# ---- --help at 80 columns ------------------------------------------------------------------------


def _help(runner, command: str) -> str:
    return runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}, prog_name="qwdeploy").stdout


def _option_names(command: str) -> list[str]:
    import typer.main

    click_command = typer.main.get_command(app).commands[command]
    return [name for p in click_command.params for name in (*p.opts, *p.secondary_opts) if name.startswith("--")]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_names_every_option_whole(runner, command):
    text = _help(runner, command)
    assert [name for name in _option_names(command) if not re.search(rf"{re.escape(name)}(?![\w-])", text)] == []


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_fits_80_columns_without_bool_metavars_or_cuts(runner, command):
    text = _help(runner, command)
    assert [line for line in text.splitlines() if len(line) > 80 or "<bool>" in line or "…" in line] == []


def test_warm_help_states_the_deep_gemm_defaults_the_code_uses(runner):
    text = " ".join(_help(runner, "warm").split())
    said = re.search(r"default: (\w+) with the low-latency profile, (\w+) with the others", text)
    fp8 = catalog.get("Qwen/Qwen3-8B-FP8")
    chosen = [
        startup.deep_gemm_warmup(api.plan(PlanRequest(fp8.repo_id, profile=p, gpu="H100")))
        for p in ("low-latency", "chat")
    ]
    assert said is not None and list(said.groups()) == chosen


# ---- models through a pipe -----------------------------------------------------------------------


def test_models_never_cuts_a_repo_id_when_stdout_is_not_a_terminal(runner):
    out = runner.invoke(app, ["models"], env={"COLUMNS": "80"}).stdout
    assert [v.repo_id for v in catalog.variants() if f" {v.repo_id} " not in out] == []


# ---- one rule for a value that is not a choice ---------------------------------------------------

BAD_CHOICES = [
    ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--dtype", "int3"],
    ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--kv-cache-dtype", "fp4"],
    ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--profile", "chatty"],
    ["serve", "Qwen/Qwen3-8B", "--gpu", "H100", "--dry-run", "--dtype", "int3"],
    ["serve", "Qwen/Qwen3-8B", "--gpu", "H100", "--dry-run", "--kv-cache-dtype", "fp4"],
    ["serve", "Qwen/Qwen3-8B", "--gpu", "H100", "--dry-run", "--profile", "chatty"],
    ["warm", TINY, "--dtype", "int3"],
    ["warm", TINY, "--kv-cache-dtype", "fp4"],
    ["warm", TINY, "--profile", "chatty"],
    ["warm", TINY, "--deep-gemm-warmup", "fast"],
    ["export", "k8s", "Qwen/Qwen3-8B", "--gpu", "H100", "--dtype", "int3"],
    ["export", "k8s", "Qwen/Qwen3-8B", "--gpu", "H100", "--kv-cache-dtype", "fp4"],
    ["export", "k8s", "Qwen/Qwen3-8B", "--gpu", "H100", "--profile", "chatty"],
    ["export", "helm", "Qwen/Qwen3-8B", "--gpu", "H100"],
    ["download", "Qwen/Qwen3-8B", "--dtype", "int3", "--dry-run"],
    ["download", "Qwen/Qwen3-8B", "--source", "hff", "--dry-run"],
]


CHOICE_FLAGS = ("--dtype", "--kv-cache-dtype", "--profile", "--deep-gemm-warmup", "--source")


@pytest.mark.parametrize("args", BAD_CHOICES, ids=lambda a: a[0] + next((f for f in a if f in CHOICE_FLAGS), "-format"))
def test_a_value_that_is_not_a_choice_is_a_usage_error(runner, args):
    assert is_one_error(runner.invoke(app, args), ExitCode.USAGE)


def test_a_profile_file_that_does_not_exist_is_a_usage_error(runner, tmp_path):
    result = runner.invoke(app, ["plan", "Qwen/Qwen3-8B", "--gpu", "H100", "--profile", str(tmp_path / "p.yaml")])
    assert is_one_error(result, ExitCode.USAGE)
