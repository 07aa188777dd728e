"""The distributions build, carry their metadata and licence, and pass ``twine check``."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_SECONDS = 150

pytest.importorskip("build", reason="`build` comes with the dev extra")
pytest.importorskip("twine", reason="`twine` comes with the dev extra")


def _build(project: Path, out: Path) -> list[Path]:
    # --no-isolation builds with the setuptools this environment has (no download),
    # which the dev extra keeps at the version pyproject's build-system asks for.
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(out),
         str(project)],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS,
        env=dict(os.environ, PIP_NO_INPUT="1"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted(out.iterdir())


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 cannot build SPDX licence metadata")
    return {
        "amorsize": _build(ROOT, tmp_path_factory.mktemp("dist")),
        "amorsize_dask": _build(ROOT / "plugins" / "dask", tmp_path_factory.mktemp("dist-dask")),
    }


@pytest.mark.timeout(2 * BUILD_TIMEOUT_SECONDS + 60)
def test_twine_check_passes(dists):
    files = [str(p) for paths in dists.values() for p in paths]
    assert len(files) == 4, files  # a wheel and an sdist each
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(2 * BUILD_TIMEOUT_SECONDS + 60)
@pytest.mark.parametrize("name", ["amorsize", "amorsize_dask"])
def test_wheel_metadata(dists, name):
    wheel = next(p for p in dists[name] if p.suffix == ".whl")
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
        licences = [n for n in zf.namelist() if n.endswith("licenses/LICENSE")]
        assert licences, zf.namelist()
        assert "MIT License" in zf.read(licences[0]).decode()
    assert "License-Expression: MIT" in meta
    assert "Requires-Python: >=3.10" in meta
    assert "Author: Amorsize developers" in meta
    assert "Programming Language :: Python :: 3.10" in meta
    if name == "amorsize_dask":
        requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist: dask")]
        assert requires and ">=" in requires[0] and "<" not in requires[0], requires
    else:
        assert "py.typed" in " ".join(zipfile.ZipFile(wheel).namelist())


@pytest.mark.timeout(2 * BUILD_TIMEOUT_SECONDS + 60)
def test_sdist_has_license_and_readme(dists):
    sdist = next(p for p in dists["amorsize"] if p.name.endswith(".tar.gz"))
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"LICENSE", "README.md", "pyproject.toml"} <= names
