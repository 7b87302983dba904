"""The device check (benchmarks/gpu_check.py) runs every stage at toy size on a CPU and writes its reports, so that
the one prepared GPU run cannot rot between the sessions that have a GPU."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import gpu_check
from benchmarks.harness import write_docs

STAGES = {"gpu-checks": {"build", "correctness"}, "gpu-memory": {"memory"}, "gpu-training": {"training"},
          "gpu-speed": {f"speed-{dtype}-{mode}" for dtype in ("bf16", "fp16") for mode in ("eager", "compiled")}}


@pytest.mark.slow  # the whole device check, every stage, at toy size
def test_the_device_check_runs_every_stage_at_toy_size_and_writes_its_reports(tmp_path, monkeypatch):
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)]) == 0
    reports = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in gpu_check.REPORTS}
    for name, report in reports.items():
        assert {stage: record["status"] for stage, record in report["stages"].items()} == dict.fromkeys(
            STAGES[name], "ok")
        assert (tmp_path / f"{name}.md").read_text().startswith("# Device check")

    checks = {row["path"]: row for row in reports["gpu-checks"]["rows"]}
    for case in ("bf16", "fp16", "bf16 text_encoder_cpu", "bf16 model_cpu_offload",
                 "transformer, window of 4 frames in chunks of 1"):
        assert checks[case]["finite"] and checks[case]["passed"], case
    # A mode that raises is a finding: reported with its error, never the end of the check.
    sequential = checks["bf16 sequential_cpu_offload"]
    assert sequential.get("passed") or sequential["what"]

    memory = [row for row in reports["gpu-memory"]["rows"] if not row.get("skipped")]
    assert {row["path"] for row in memory} >= {"bf16 none", "bf16 none, window 4", "bf16 model_cpu_offload"}
    assert all(row["computed_peak_bytes"] > 0 and row["denoising_s"] > 0 for row in memory)

    speed = {row["path"]: row for row in reports["gpu-speed"]["rows"]}
    assert set(speed) == {"bf16 eager", "bf16 compiled", "fp16 eager", "fp16 compiled"}
    for row in speed.values():
        assert row["steps_run"] == row["steps"] == 3 and len(row["step_times_s"]) == 3
        assert 0 < row["step_s"] < row["end_to_end_s"] == row["projected_s"]
        assert 0 < row["fraction_of_matmul_peak"] < 1 and row["flops"] > 0

    training = reports["gpu-training"]["rows"]
    assert [row["path"] for row in training] == ["train-motion_module+autocast",
                                                "train-motion_module+autocast+checkpointing"]
    assert all(row["median_s"] > 0 and row["trainable_params"] > 0 for row in training)

    # The reports are scenario records: a docs template takes them as it takes any scenario's tables.
    template, page = tmp_path / "template.md", tmp_path / "page.md"
    template.write_text("".join(f"{{{{{name}}}}}\n" for name in gpu_check.REPORTS))
    monkeypatch.setattr("benchmarks.harness.TEMPLATE", template)
    write_docs(tmp_path, page)
    assert "{{" not in page.read_text() and "| bf16 eager |" in page.read_text()


def test_a_stage_without_the_time_it_needs_is_skipped_with_its_reason(tmp_path):
    check = gpu_check.Check(gpu_check.torch.device("cpu"), gpu_check.TINY, tmp_path, budget_s=5)
    ran = []
    check.stage("speed-bf16-eager", "gpu-speed", 60, lambda: ran.append(1) or [])
    check.stage("memory", "gpu-memory", 0, lambda: 1 / 0)
    assert not ran
    speed = json.loads((tmp_path / "gpu-speed.json").read_text())
    assert speed["stages"]["speed-bf16-eager"]["status"] == "skipped"
    assert "needs about 60 s" in speed["rows"][0]["what"]
    memory = json.loads((tmp_path / "gpu-memory.json").read_text())
    assert memory["stages"]["memory"]["status"] == "failed" and "ZeroDivisionError" in memory["rows"][0]["what"]
    assert not math.isnan(memory["wall_s"])
