"""The package as a user installs it: a wheel in a fresh environment, away from the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new venv holding only the built wheel; its dependencies come from the test environment's site-packages."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy: setuptools builds in a build/ folder beside pyproject.toml
    shutil.copytree(ROOT / "easyanimate", source / "easyanimate", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work / "dist"),
                    str(source)], check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("easyanimate-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # Dependencies without the checkout: a path entry is not a site dir, so the editable install's
    # .pth hook in the test environment is not run.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    return venv


def test_the_wheel_carries_the_model_configs_and_the_commands(installed):
    (wheel,) = (installed.parent / "dist").glob("easyanimate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "easyanimate/configs/easyanimate_video_motion_module_v1.yaml" in names
    assert not any(name.startswith(("tests/", "examples/", "benchmarks/")) for name in names)
    for command in ("easyanimate-predict", "easyanimate-predict-i2v", "easyanimate-ui", "easyanimate-train",
                    "easyanimate-train-lora"):
        assert (installed / "bin" / command).is_file()


@pytest.mark.slow
def test_the_installed_command_generates_a_video_outside_the_checkout(installed, tiny_models, tmp_path):
    env = {**os.environ, "PYTHONPATH": ""}
    where = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import easyanimate, easyanimate.config as c; print(easyanimate.__file__); "
                            "print(c.load_config('config/easyanimate_video_motion_module_v1.yaml').transformer_"
                            "additional_kwargs.motion_module_kwargs.num_attention_heads)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    package_file, heads = where.stdout.split()
    assert Path(package_file).is_relative_to(installed) and heads == "8"
    done = subprocess.run([str(installed / "bin" / "easyanimate-predict"), "--models-dir", str(tiny_models["root"]),
                           "--model", str(tiny_models["model"]), "--output-dir", "videos", "--steps", "2",
                           "--frames", "4", "--device", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (sidecar,) = (tmp_path / "videos").glob("*.json")
    assert json.loads(sidecar.read_text())["files"] == ["00000001.mp4"]
    assert (tmp_path / "videos" / "00000001.mp4").stat().st_size > 0
