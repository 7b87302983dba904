"""Every command of the README runs as written: its ``bash`` blocks and its Python example, in a fresh copy of
the checkout (the files git tracks, sharing this checkout's ``.venv``), and from another working folder.

Blocks fenced as ``shell`` need the released weights, a GPU or an installation of one's own, and are shown
only. The tests command itself (pytest) is not run from here, and ``bash scripts/setup.sh &&`` is what CI has
already done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = "bash scripts/setup.sh && "

pytestmark = pytest.mark.slow


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def runnable(block: str) -> str:
    """A bash block as a script: setup prefixes dropped, the test command left out."""
    lines = [line.removeprefix(SETUP) for line in block.splitlines()]
    return "\n".join(line for line in lines if "pytest" not in line)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The tracked files of this checkout in a new folder, as a fresh clone has them, with this ``.venv``."""
    copy = tmp_path_factory.mktemp("checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, tracked.stdout.split("\0")):
        source, target = ROOT / name, copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_file():
            shutil.copy2(source, target)
    (copy / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    return copy


def run(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("MODEL_NAME", "DATASET_NAME",
                                                                          "DATASET_META_NAME", "train_data_format")}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)


def test_the_readme_shows_what_it_runs():
    blocks = readme_blocks("bash")
    assert SETUP + ".venv/bin/python predict_t2v.py" in blocks[0]  # the first command: set up and generate
    assert SETUP + ".venv/bin/python -m pytest" in blocks[1]  # the second: set up and test
    assert readme_blocks("python")


def test_every_bash_block_runs_as_written(checkout):
    for block in readme_blocks("bash"):
        script = runnable(block)
        if not script.strip():
            continue
        done = run(script, checkout)
        assert done.returncode == 0, f"{script}\n--- stderr ---\n{done.stderr[-4000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-4000:]
    videos = sorted((checkout / "samples" / "easyanimate-videos").glob("*.json"))
    prompts = [json.loads(path.read_text())["prompt"] for path in videos]
    assert "a blue square moving up" in prompts and "a yellow triangle moving right on a dark background" in prompts
    files = [path.parent / name for path in videos for name in json.loads(path.read_text())["files"]]
    assert files and all(file.stat().st_size > 0 for file in files)
    for export in ("demo_t2v/motion_module.safetensors", "demo_t2i/pixart_transformer.safetensors",
                   "demo_lora/lora.safetensors"):
        assert (checkout / "output_dir" / export).is_file(), export


def test_the_python_example_runs_in_seconds_with_the_models_defaults(checkout):
    (example,) = readme_blocks("python")
    done = subprocess.run([sys.executable, "-c", example], cwd=checkout, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (checkout / "samples" / "red_square.mp4").stat().st_size > 0


def test_from_another_folder_the_message_says_what_to_pass_and_that_works(checkout, tmp_path):
    predict = [str(checkout / ".venv" / "bin" / "python"), str(checkout / "predict_t2v.py"), "--steps", "2",
               "--prompt", "a red circle moving left", "--output-dir", str(tmp_path / "videos")]
    done = subprocess.run(predict, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    first = done.stderr.strip().splitlines()[0]
    assert first.startswith("error: no models folder at") and "--models-dir" in first
    assert "Traceback" not in done.stderr
    done = subprocess.run([*predict, "--models-dir", str(checkout / "models")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "videos").glob("*.mp4"))
