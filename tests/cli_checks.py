"""What every CLI failure must look like: its documented exit code, one `Error:` line and a `Hint:`
on stderr, and no traceback (CliRunner keeps an uncaught exception in `result.exception`)."""

from __future__ import annotations

from qwdeploy.errors import ExitCode

DOCUMENTED = {int(code) for code in ExitCode}


def uncaught(result) -> BaseException | None:
    """The exception that escaped the command (a traceback for a user), if any."""
    e = result.exception
    return None if e is None or isinstance(e, SystemExit) else e


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def is_one_error(result, code: int) -> bool:
    """Exit `code`, exactly one Error: line followed by a Hint:, no traceback anywhere."""
    lines = result.stderr.splitlines()
    errors = error_lines(result)
    hinted = (
        len(errors) == 1
        and lines.index(errors[0]) + 1 < len(lines)
        and lines[lines.index(errors[0]) + 1].startswith("Hint:")
    )
    shown = "Traceback" in result.stdout + result.stderr
    return result.exit_code == code and hinted and uncaught(result) is None and not shown
