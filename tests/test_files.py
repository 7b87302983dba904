"""Files appear whole or not at all; numbered outputs never replace one another."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from easyanimate.files import NumberedOutput, atomic_write, remove_stale_temporaries, write_safetensors


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("before")

    def fail(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_safetensors_are_written_whole(tmp_path):
    path = write_safetensors(tmp_path / "sub" / "w.safetensors", {"a": torch.ones(2, 3).t()}, {"k": "v"})
    assert torch.equal(load_file(path)["a"], torch.ones(3, 2))


def test_numbers_continue_after_the_highest_and_files_are_published_together(tmp_path):
    (tmp_path / "00000007.mp4").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not numbered")
    with NumberedOutput.claim(tmp_path) as output:
        output.add(".mp4", lambda tmp: tmp.write_bytes(b"video"))
        assert not output.path(".mp4").exists()  # nothing is visible before the block ends
        output.add(".json", lambda tmp: tmp.write_text("{}"))
    assert (tmp_path / "00000008.mp4").read_bytes() == b"video" and (tmp_path / "00000008.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_error_before_publishing_leaves_nothing_and_frees_the_number(tmp_path):
    with pytest.raises(RuntimeError):
        with NumberedOutput.claim(tmp_path) as output:
            output.add(".mp4", lambda tmp: tmp.write_bytes(b"video"))
            raise RuntimeError("the sidecar could not be written")
    assert list(tmp_path.iterdir()) == []
    with NumberedOutput.claim(tmp_path) as output:
        assert output.stem == "00000001"


def test_a_claimed_number_is_skipped_by_the_next_claim(tmp_path):
    first = NumberedOutput.claim(tmp_path)
    second = NumberedOutput.claim(tmp_path)
    assert (first.number, second.number) == (1, 2)
    with first, second:
        pass


def test_claims_and_temporaries_of_a_dead_process_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f".00000003.mp4.{pid}-abcd1234.tmp").write_bytes(b"half")
    (tmp_path / ".00000003.claim").write_text(json.dumps({"pid": pid, "host": os.uname().nodename}))
    (tmp_path / f".00000004.mp4.{os.getpid()}-abcd1234.tmp").write_bytes(b"mine, still running")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".00000003.claim", f".00000003.mp4.{pid}-abcd1234.tmp"]
    assert (tmp_path / f".00000004.mp4.{os.getpid()}-abcd1234.tmp").exists()


def _claim_and_publish(folder: str, barrier, results) -> None:
    barrier.wait()
    with NumberedOutput.claim(folder) as output:
        output.add(".txt", lambda tmp: tmp.write_text(str(os.getpid())))
    results.put(output.stem)


def test_processes_writing_into_one_folder_at_once_never_share_a_number(tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Queue()
    workers = [context.Process(target=_claim_and_publish, args=(str(tmp_path), barrier, results)) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    stems = sorted(results.get(timeout=5) for _ in workers)
    assert stems == [f"{n:08d}" for n in range(1, 7)]
    assert len({p.read_text() for p in tmp_path.glob("*.txt")}) == 6  # six files, one per process
