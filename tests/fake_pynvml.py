"""A thin stand-in for the pynvml module that replays an NVML session recorded on a real GPU.

Recordings come from tests/data/nvml/capture_nvml.py: each call is stored with its arguments and
its answer or NVMLError. Replaying a call that was not recorded (or that the capture could not make)
raises NotRecorded, so code under test cannot quietly read numbers nobody measured.

    nv = fake_pynvml.load("h100_idle")            # tests/data/nvml/h100_idle.json
    nvml.inventory(nv, process_name=nv.process_name)
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pynvml as _real  # only for constants the recording does not list (pure API values)

DATA = Path(__file__).parent / "data" / "nvml"


class NotRecorded(AssertionError):
    """The code asked NVML something the recording has no answer for."""


class NVMLError(Exception):
    """Like pynvml.NVMLError: `.value` is the NVML return code."""

    def __init__(self, value, text: str | None = None):
        super().__init__(value)
        self.value = value
        self.text = text

    def __str__(self) -> str:
        return self.text or f"NVML error {self.value}"


_ERROR_CLASSES: dict[str, type] = {}


def _error_class(name: str) -> type:
    if name not in _ERROR_CLASSES:
        _ERROR_CLASSES[name] = type(name, (NVMLError,), {})
    return _ERROR_CLASSES[name]


class Handle:
    """A device handle: a GPU by NVML index."""

    def __init__(self, index: int):
        self.index = index

    def __repr__(self) -> str:
        return f"<fake handle {self.index}>"


def path(name: str) -> Path:
    return DATA / (name if name.endswith(".json") else name + ".json")


def load(name: str) -> FakePynvml:
    return FakePynvml(json.loads(path(name).read_text()))


def _key(call: str, args: list, kwargs: dict) -> str:
    kwargs = {k: _norm(v) for k, v in sorted(kwargs.items())}
    return json.dumps([call, [_norm(a) for a in args], kwargs])


def _norm(a):
    if isinstance(a, Handle):
        return {"handle": a.index}
    if isinstance(a, dict) and "const" in a:
        a = a["value"]
    if isinstance(a, dict):
        return {k: _norm(v) for k, v in a.items()}
    return a


def _obj(value):
    """Recorded ctypes structs come back as objects with attributes, like pynvml's."""
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _obj(v) for k, v in value.items() if not k.startswith("__")})
    if isinstance(value, list):
        return [_obj(v) for v in value]
    return value


class FakePynvml:
    """Module-like: nvml* functions replay the recording; NVML_* constants; NVMLError."""

    NVMLError = NVMLError

    def __init__(self, recording: dict):
        self.recording = recording
        self._answers: dict[str, list[dict]] = {}
        self._missing: set[str] = set()
        for rec in recording["calls"]:
            if rec.get("error", {}).get("class") == "MissingInPynvml":
                self._missing.add(rec["call"])
                continue
            key = _key(rec["call"], rec["args"], rec.get("kwargs", {}))
            self._answers.setdefault(key, []).append(rec)
        self.constants = dict(recording.get("constants", {}))
        self.calls: list[str] = []  # what the code under test asked, in order

    # ---- module surface -------------------------------------------------------------------
    def __getattr__(self, name: str):
        if name in self.__dict__.get("constants", {}):
            return self.constants[name]
        if hasattr(_real, name) and not callable(getattr(_real, name)):
            return getattr(_real, name)  # NVML_* and nvmlMemory_v2 style constants
        if name.startswith("nvml") and name[4:5].isupper():
            if name in self.__dict__.get("_missing", ()):
                raise AttributeError(name)
            return lambda *args, **kwargs: self._replay(name, list(args), kwargs)
        raise AttributeError(name)

    def _replay(self, call: str, args: list, kwargs: dict):
        self.calls.append(call)
        answers = self._answers.get(_key(call, args, kwargs))
        if not answers:
            raise NotRecorded(f"{call}{tuple(args)} {kwargs or ''} is not in the recording")
        rec = answers.pop(0) if len(answers) > 1 else answers[0]
        err = rec.get("error")
        if err:
            if err.get("python_error") or err.get("value") is None:
                raise NotRecorded(f"the capture could not make {call}{tuple(args)}: {err}")
            raise _error_class(err["class"])(err["value"], err.get("str"))
        if call == "nvmlDeviceGetHandleByIndex":
            return Handle(int(args[0]))
        if isinstance(rec["result"], list) and any(str(x).startswith("<") for x in rec["result"]):
            raise NotRecorded(f"{call}: the capture stored only repr() strings: {rec['result']}")
        return _obj(rec["result"])

    # ---- things the capture stored beside the calls ------------------------------------------
    def process_name(self, pid: int) -> str | None:
        """/proc/<pid>/comm as the capture read it on the GPU machine."""
        entry = self.recording.get("process_names", {}).get(str(pid)) or {}
        return entry.get("comm")

    @property
    def torch_mem_get_info(self) -> dict:
        """torch.cuda.mem_get_info() of a separate process in the same session (free after its
        CUDA context was created, and CUDA's total)."""
        return self.recording["torch_mem_get_info"]


def failing_init(error_name: str) -> FakePynvml:
    """A pynvml whose nvmlInit fails with the real library's NVML_ERROR_<error_name> code."""
    value = getattr(_real, "NVML_ERROR_" + error_name)
    fake = FakePynvml(
        {
            "calls": [{"call": "nvmlInit", "args": [], "error": {"class": "NVMLError", "value": value}}],
            "constants": {k: getattr(_real, k) for k in dir(_real) if k.startswith("NVML_ERROR_")},
        }
    )
    return fake
