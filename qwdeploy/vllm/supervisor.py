"""The supervisor: start vLLM, know when it really answers, stop its whole process group (I/O).

  * vLLM runs in a session of its own, its output in a log file followed line by line
    (qwdeploy.vllm.log); no shell anywhere.
  * ready = /v1/models lists the served name, then one short completion answers (vLLM's
    /health turns 200 before the model can serve). The prompt is token ids, so it also works
    with --skip-tokenizer-init.
  * SIGINT, SIGTERM and SIGHUP are forwarded to vLLM's whole process group; what is still there
    after `stop_timeout_s` is SIGKILLed, on every way out (try/finally), so no process of the
    group outlives `serve`. vLLM's leader also gets SIGTERM if qwdeploy itself is killed
    (Linux PR_SET_PDEATHSIG), and it takes its EngineCore and Worker down with it.
`serve` and `warm` both start vLLM through `Server`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from qwdeploy.errors import ExitCode, QwdeployError
from qwdeploy.vllm import failures
from qwdeploy.vllm.command import Launch
from qwdeploy.vllm.log import LogParser, StartupReport, parse
from qwdeploy.vllm.readiness import check_port, model_listed, warm_up

READY_TIMEOUT_S = 1800.0  # a cold 32B start on one GPU: ~3 min; a first download is separate
STOP_TIMEOUT_S = 30.0  # SIGINT to the group stops vLLM in < 1 s (measured, CPU)
GROUP_GRACE_S = 10.0  # after the leader exits, for the rest of its group to exit by itself
POLL_S = 0.5
HEARTBEAT_S = 15.0  # repeat the phase line while a phase lasts
VLLM_LOCK = Path("/tmp/qwdeploy-vllm.lock")  # one vLLM start at a time on this machine


@dataclass(frozen=True)
class Ready:
    endpoint: str
    model: str
    seconds: float  # spawn to the warm-up completion answered
    report: StartupReport
    pid: int


@dataclass(frozen=True)
class Stopped:
    """How a serve that was ready or starting ended on a signal."""

    signal: str
    vllm_exit_code: int | None
    killed: bool  # it needed SIGKILL
    survivors: int  # processes of vLLM's group still alive afterwards (0 expected)


class _Signal(BaseException):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _SignalGuard:
    """SIGINT, SIGTERM and SIGHUP raise `_Signal` in the main thread (instead of the default
    kill, so cleanup runs) the first time; from then on, and while stopping, they are ignored:
    a second Ctrl-C must not abandon vLLM's group half-stopped."""

    def __enter__(self):
        self.old = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._raise)
        return self

    def _raise(self, signum, frame):
        self.ignore()
        raise _Signal(signal.Signals(signum).name)

    def ignore(self) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def _parent_death_signal():
    """preexec_fn: vLLM's leader gets SIGTERM if qwdeploy dies without cleaning up (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()

    def preexec():
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def group_members(pgid: int, proc_root: str = "/proc") -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    out = []
    for d in os.listdir(proc_root):
        if not d.isdigit():
            continue
        try:
            with open(f"{proc_root}/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            out.append(int(d))
    return out


class StartFailed(QwdeployError):
    """vLLM exited or never became ready; `log_tail` holds its last lines."""

    def __init__(
        self,
        message: str,
        hint: str | None,
        exit_code: ExitCode,
        failure: failures.Failure | None = None,
        log_tail: Sequence[str] = (),
    ):
        super().__init__(message, hint=hint, exit_code=exit_code)
        self.failure = failure
        self.log_tail = list(log_tail)


class Server:
    """One vLLM server process group and its log, followed line by line."""

    def __init__(
        self, launch: Launch, log_path: Path, api_key: str | None = None, environ: Mapping[str, str] | None = None
    ):
        self.launch, self.log_path, self.api_key = launch, Path(log_path), api_key
        self.environ = os.environ if environ is None else environ
        self.parser = LogParser()
        self.proc: subprocess.Popen[bytes] | None = None
        self.t0 = 0.0
        self._reader: TextIO | None = None
        self._partial = ""

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError("vLLM was not started")
        return self.proc

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.t0 = time.monotonic()
            self.proc = subprocess.Popen(
                list(self.launch.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.launch.process_env(self.environ),
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        self._reader = open(self.log_path, errors="replace")  # noqa: SIM115 - followed until stop() closes it

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def follow(self) -> list[str]:
        """Read what vLLM wrote since the last call; returns the phases it entered."""
        if self._reader is None:
            return []
        chunk = self._partial + self._reader.read()
        lines = chunk.split("\n")
        self._partial = lines.pop()
        entered = []
        t = self.elapsed()
        for line in lines:
            new = self.parser.feed(line.split("\r")[0] if "Capturing" not in line else line, t)
            if new:
                entered.append(new)
        return entered

    def wait_ready(self, timeout_s: float, on_phase: Callable[[str, float], None] | None = None) -> Ready:
        deadline = self.t0 + timeout_s
        listed, last_beat, last_try = False, 0.0, ""
        while True:
            for phase in self.follow():
                if on_phase:
                    on_phase(phase, self.elapsed())
                last_beat = self.elapsed()
            if self.process.poll() is not None:
                raise self._failed(
                    f"vLLM exited with code {self.process.returncode} before it was ready", self.process.returncode
                )
            if not listed:
                listed = model_listed(self.launch.base_url, self.launch.served_model_name, self.api_key)
            if listed:
                ok, last_try = warm_up(self.launch.base_url, self.launch.served_model_name, self.api_key)
                if ok:
                    seconds = self.elapsed()
                    self.follow()
                    return Ready(
                        self.launch.endpoint, self.launch.served_model_name, seconds, self.report(), self.process.pid
                    )
            if time.monotonic() > deadline:
                why = f"; last warm-up answer: {last_try}" if last_try else ""
                raise self._failed(
                    f"vLLM was not ready after {timeout_s:.0f} s (still {self.parser.phase}){why}",
                    None,
                    hint="raise --ready-timeout for a slow first start",
                )
            if on_phase and self.elapsed() - last_beat >= HEARTBEAT_S:
                on_phase(self.parser.phase, self.elapsed())
                last_beat = self.elapsed()
            time.sleep(POLL_S)

    def report(self) -> StartupReport:
        """The whole log as parsed so far (timed phases from following it)."""
        return self.parser.report()

    def wait(self) -> int:
        """Block until vLLM exits by itself; its exit code."""
        while self.process.poll() is None:
            time.sleep(POLL_S)
        return self.process.returncode

    def _failed(self, message: str, code: int | None, hint: str | None = None) -> StartFailed:
        self.follow()
        lines = self.log_path.read_text(errors="replace").splitlines()
        failure = parse(lines).failure
        exit_code = ExitCode.SERVE_FAILED
        if failure is not None:
            message = f"{message}: {failure.message}; {failure.fix}"
            if failure.kind == failures.VLLM_MISSING:
                exit_code = ExitCode.VLLM_MISSING
        return StartFailed(
            message, hint or f"vLLM's whole log: {self.log_path}", exit_code, failure, failures.tail(lines)
        )

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = STOP_TIMEOUT_S) -> Stopped:
        """Signal the whole group, wait, SIGKILL what is left; idempotent."""
        name = signal.Signals(sig).name
        if self.proc is None:
            return Stopped(name, None, False, 0)
        pgid, killed = self.process.pid, False
        if self.process.poll() is None:
            _killpg(pgid, sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _killpg(pgid, signal.SIGKILL)
                killed = True
        # The leader is gone; its helpers (resource tracker, EngineCore, Worker) finish on
        # their own within a second or two. Whatever is left after the grace is killed.
        if not _wait_empty(pgid, GROUP_GRACE_S):
            _killpg(pgid, signal.SIGKILL)
            killed = True
            _wait_empty(pgid, 5.0)
        code = self.proc.wait()
        if self._reader is not None:
            self.follow()
            self._reader.close()
            self._reader = None
        return Stopped(name, code, killed, len(group_members(pgid)))


def _wait_empty(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _ignore(*args: Any) -> None:
    return None


@dataclass(frozen=True)
class Watch:
    """What `serve` tells its caller while vLLM runs, and how long it waits."""

    on_start: Callable[[Server], None] = _ignore
    on_phase: Callable[[str, float], None] | None = None  # (phase, seconds since start)
    on_ready: Callable[[Ready], None] = _ignore
    on_stopping: Callable[[str], None] = _ignore  # the signal's name
    ready_timeout_s: float = READY_TIMEOUT_S
    stop_timeout_s: float = STOP_TIMEOUT_S


def serve(launch: Launch, log_path: Path, api_key: str | None = None, watch: Watch = Watch()) -> Stopped:
    """Start vLLM, wait until it answers, keep it until a signal; stop its whole group.

    Returns how it stopped after SIGINT / SIGTERM / SIGHUP (forwarded to vLLM's group as SIGINT
    and SIGTERM). Raises StartFailed when vLLM exits or is not ready in time, or exits by itself
    while serving. Whatever happens, vLLM's process group is gone when this returns.
    """
    check_port(launch.host, launch.port)
    server = Server(launch, log_path, api_key)
    received = None
    with _SignalGuard() as guard:
        try:
            server.start()
            watch.on_start(server)
            watch.on_ready(server.wait_ready(watch.ready_timeout_s, watch.on_phase))
            code = server.wait()
            lines = server.log_path.read_text(errors="replace").splitlines()
            raise StartFailed(
                f"vLLM exited with code {code} while serving",
                f"vLLM's whole log: {log_path}",
                ExitCode.SERVE_FAILED,
                log_tail=failures.tail(lines),
            )
        except _Signal as s:
            received = s.name
            watch.on_stopping(s.name)
        finally:
            guard.ignore()
            forward = signal.SIGINT if received in (None, "SIGINT") else signal.SIGTERM
            stopped = server.stop(forward, watch.stop_timeout_s)
    return replace(stopped, signal=received)


class vllm_lock:
    """Exclusive flock on /tmp/qwdeploy-vllm.lock: never two vLLM servers at once here."""

    def __init__(self, path: Path = VLLM_LOCK, timeout_s: float = 1800.0):
        self.path, self.timeout_s, self.fd = Path(path), timeout_s, -1

    def __enter__(self) -> vllm_lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise TimeoutError(f"another vLLM holds {self.path}") from None
                time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
