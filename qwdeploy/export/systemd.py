"""A systemd service that keeps vLLM running: restarts with backoff, the key from a credential."""

from __future__ import annotations

import re
import shlex

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.export.common import (
    API_KEY_ENV,
    DEFAULT_OPTIONS,
    ExportOptions,
    export_name,
    header,
    single_node_only,
    start_env,
    vllm_argv,
)
from qwdeploy.planning.plan import Plan

VLLM_VENV = "/opt/vllm"  # the virtual environment the install steps create for ExecStart


def _systemd_word(arg: str) -> str:
    """One ExecStart= word: '%' and '$' doubled (specifiers, variables), quoted when needed."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    return "'" + arg.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _argv_lines(words: list[str]) -> list[str]:
    """Words grouped one option (with its value) per line."""
    lines: list[str] = []
    for w in words:
        if lines and not w.startswith("--") and lines[-1].startswith("--") and " " not in lines[-1]:
            lines[-1] += " " + w
        else:
            lines.append(w)
    return lines


def systemd(plan: Plan, opts: ExportOptions = DEFAULT_OPTIONS) -> str:
    """A systemd service that keeps vLLM running: restarts with backoff, key from a credential."""
    single_node_only(plan, "systemd")
    name = export_name(plan, opts)
    cache = f"/var/cache/{name}"
    lines = header(plan, "systemd unit", opts) + _install_steps(plan, opts, name, cache) + _unit_section(plan, name)
    lines += _service_section(plan, opts, name, cache) + ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def vllm_bin(opts: ExportOptions) -> str:
    """The vllm executable ExecStart runs: --vllm-bin, else the venv the install steps create."""
    if opts.vllm_bin and not opts.vllm_bin.startswith("/"):
        raise QwdeployError(
            f"--vllm-bin {opts.vllm_bin!r} is not an absolute path",
            hint="systemd runs ExecStart by absolute path, e.g. /opt/vllm/bin/vllm",
            exit_code=ExitCode.USAGE,
        )
    return opts.vllm_bin or f"{VLLM_VENV}/bin/vllm"


def _vllm_steps(plan: Plan, opts: ExportOptions) -> list[str]:
    """Install vLLM where ExecStart finds it; a --vllm-bin of your own: how to check it first."""
    if opts.vllm_bin:
        return [f"#   {shlex.quote(opts.vllm_bin)} --version  # ExecStart runs it: expect {plan.vllm.version}"]
    return [
        f"#   sudo python3 -m venv {VLLM_VENV}  # Debian/Ubuntu: apt-get install python3-venv",
        f"#   sudo {VLLM_VENV}/bin/pip install 'vllm=={plan.vllm.version}'",
        f"#   {VLLM_VENV}/bin/vllm --version  # ExecStart runs it: expect {plan.vllm.version}",
    ]


def _install_steps(plan: Plan, opts: ExportOptions, name: str, cache: str) -> list[str]:
    lines = [
        "# Install:",
        *_vllm_steps(plan, opts),
        f"#   sudo useradd --system --create-home --home-dir {cache} --shell /usr/sbin/nologin {opts.user}",
        f"#   sudo -u {opts.user} HF_HOME={cache}/huggingface qwdeploy download {plan.model}",
    ]
    if opts.api_key:
        lines += [f"#   sudo install -D -m 0600 -o root /dev/stdin {opts.api_key_file}  # paste the key, then Ctrl-D"]
    return lines + [
        f"#   sudo cp {name}.service /etc/systemd/system/ && sudo systemctl daemon-reload",
        f"#   sudo systemctl enable --now {name}.service",
        "",
    ]


def _unit_section(plan: Plan, name: str) -> list[str]:
    return [
        "[Unit]",
        f"Description=vLLM serving {plan.model} (qwdeploy, profile {plan.profile.name})",
        "Documentation=https://docs.vllm.ai/",
        "Wants=network-online.target",
        "After=network-online.target",
        "# A crash loop (10 failed starts in 30 min) stops here instead of retrying forever;",
        f"# `systemctl reset-failed {name}` re-arms it.",
        "StartLimitIntervalSec=30min",
        "StartLimitBurst=10",
        "",
    ]


def _service_section(plan: Plan, opts: ExportOptions, name: str, cache: str) -> list[str]:
    env = {
        "HF_HOME": f"{cache}/huggingface",
        "HF_HUB_OFFLINE": "1",  # start from the local cache only: no hub round trips on restart
        "VLLM_CACHE_ROOT": f"{cache}/vllm",  # torch.compile cache survives restarts (warm start)
        "VLLM_NO_USAGE_STATS": "1",
        "XDG_CACHE_HOME": cache,
        **start_env(plan),
        **plan.env,  # CUDA_VISIBLE_DEVICES when planned on this machine's GPUs
    }
    lines = ["[Service]", "Type=exec", f"User={opts.user}", f"Group={opts.user}", f"CacheDirectory={name}"]
    lines += [f"Environment={k}={v}" for k, v in sorted(env.items())]
    if opts.api_key:
        lines += [
            "# The key file stays root-only; systemd exposes a copy to this service alone in",
            "# $CREDENTIALS_DIRECTORY (an unswappable private mount).",
            f"LoadCredential=api-key:{opts.api_key_file}",
        ]
    return lines + [
        _exec_start(plan, opts),
        "# Always restart; the delay grows from 10 s to 5 min over 6 failures (systemd >= 254;",
        "# older versions ignore RestartSteps/RestartMaxDelaySec and wait 10 s each time).",
        "Restart=always",
        "RestartSec=10s",
        "RestartSteps=6",
        "RestartMaxDelaySec=5min",
        "# vLLM stops its engine processes on SIGTERM; what is left is killed after the timeout.",
        "KillMode=mixed",
        "TimeoutStopSec=60s",
        "LimitNOFILE=65536",
    ]


def _exec_start(plan: Plan, opts: ExportOptions) -> str:
    prefix = [vllm_bin(opts), "serve"]
    if opts.api_key:
        # sh reads the key from systemd's credential directory and hands it to vLLM in its
        # environment: it is never in this unit, in `systemctl show`, nor on vLLM's command line.
        script = (
            f'{API_KEY_ENV}="$(cat "${{CREDENTIALS_DIRECTORY}}/api-key")" || exit 1; '
            f'export {API_KEY_ENV}; exec "$0" "$@"'
        )
        prefix = ["/bin/sh", "-c", script, *prefix]
    model, *args = vllm_argv(plan, opts)
    exec_lines = [" ".join(_systemd_word(w) for w in [*prefix, model])]
    exec_lines += _argv_lines([_systemd_word(w) for w in args])
    return "ExecStart=" + " \\\n    ".join(exec_lines)
