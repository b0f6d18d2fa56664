"""Errors a user can cause, and the exit codes the CLI turns them into."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented exit codes (README.md, "Exit codes")."""

    OK = 0
    ERROR = 1  # an error the user can fix; one line on stderr
    USAGE = 2  # bad command-line usage (Typer's own code)
    DOES_NOT_FIT = 3  # nothing starts: vLLM would refuse the plan (or run out of memory starting)
    MISSES_PROFILE = 4  # the plan fits (starts, serves one sequence) but misses a profile target
    NVML_MISSING = 10  # no NVIDIA driver library (no driver, or a container without GPU access)
    NVML_DRIVER_MISMATCH = 11  # the driver library and the kernel module disagree
    NO_GPUS = 12  # NVML works but no GPU is visible
    BAD_VISIBLE_DEVICES = 13  # CUDA_VISIBLE_DEVICES names a GPU that does not exist
    NOT_FOUND = 20  # repo or revision not found on the hub
    UNAUTHORIZED = 21  # gated or private repo, token missing or refused
    NETWORK = 22  # no source could be reached
    DISK_FULL = 23  # not enough free disk for the download
    VERIFY_FAILED = 24  # a downloaded file does not match the hub's size or sha256
    VLLM_MISSING = 30  # vLLM is not installed in this Python environment
    SERVE_FAILED = 31  # vLLM exited or never became ready
    INTERRUPTED = 130  # stopped by Ctrl-C / SIGTERM


class QwdeployError(Exception):
    """An error the user can fix: shown as one line plus an optional hint, never a traceback."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None, exit_code: ExitCode | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class UnknownModelError(QwdeployError):
    pass


class ProfileError(QwdeployError):
    pass


class UnknownGpuError(QwdeployError):
    exit_code = ExitCode.USAGE  # --gpu names no known GPU: a bad option value
