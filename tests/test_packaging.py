"""The package works outside its source tree: a non-editable install into a fresh environment
finds its bundled specs and recipes by name from an empty folder, and runs a newcomer's first
commands there (demo-data, init-model, build --spec demo). ~30 s: a venv that borrows the
installed torch & co (--system-site-packages), a wheel built without network (--no-deps,
--no-build-isolation), then three real commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    # no PYTHONPATH: the installed copy, not this checkout, must answer
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with salt-cache installed from a copy of this checkout (not editable)."""
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("salt_cache", "cache_specs", "pipelines"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    # no pip of its own: the system's pip installs into the venv, with the system's setuptools
    res = run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], root)
    assert res.returncode == 0, res.stderr
    py = venv / "bin" / "python"
    pip = [py, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed"]
    res = run(pip + ["--no-build-isolation", src], root)
    if res.returncode != 0:  # a setuptools too old to build wheels itself: let pip fetch the build backend
        res = run(pip + [src], root)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return venv


def test_installed_package_runs_bundled_specs_and_recipes_from_an_empty_folder(installed, tmp_path):
    py, cli = installed / "bin" / "python", installed / "bin" / "salt-cache"
    work = tmp_path / "empty"
    work.mkdir()
    where = run([py, "-c", "import salt_cache, salt_cache.resources as r; "
                           "print(salt_cache.__file__); print(r.bundled_dir('cache_specs')); print(r.bundled_dir('pipelines'))"], work)
    assert where.returncode == 0, where.stderr
    package, specs, recipes = where.stdout.split()
    assert Path(package).is_relative_to(installed) and Path(specs).is_relative_to(installed)
    assert Path(recipes).is_relative_to(installed) and (Path(specs) / "demo.yaml").is_file()

    res = run([cli, "demo-data", "--clips", "8"], work)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (work / "demo" / "train" / "index.json").is_file()
    res = run([cli, "init-model", "--model", "micro", "--patch-size", "8", "--out", "teacher.pt"], work)
    assert res.returncode == 0, res.stdout + res.stderr
    res = run([cli, "build", "--teacher", "teacher.pt", "--data", "demo/train", "--spec", "demo", "--out", "cache",
               "--workers", "0"], work)
    assert res.returncode == 0, res.stdout + res.stderr
    assert '"status": "complete"' in (work / "cache" / "cache.json").read_text()

    # the bundled recipe resolves by name, and its work dir lands in the current folder
    res = run([cli, "quickstart", "--help"], work)
    assert res.returncode == 0 and "quickstart" in res.stdout
    res = run([cli, "run", "quickstart", "--only", "no-such-stage"], work)
    assert res.returncode == 1 and "no such stage in" in res.stdout + res.stderr
    assert str(installed) in res.stdout + res.stderr  # ... of the installed quickstart.yaml
    assert (work / "quickstart").is_dir()
