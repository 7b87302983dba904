"""The evaluation's command line (examples.shapes.evaluate.main) on the shipped demo model, with the clip
generation stubbed out: what reaches the pipeline, and which rows come back."""

from __future__ import annotations

import json

import torch

from examples.shapes import evaluate
from examples.shapes.classify import ClipReading
from examples.shapes.world import Combination


def test_lora_mode_merges_the_lora_at_every_weight_asked_for_one_row_each(monkeypatch, shipped_models, tmp_path):
    """``--lora-weights 0 0.4 1`` measures the pipeline with the LoRA merged at 0, 0.4 and 1: the change of
    the image model's weights scales with the weight asked for (0 is the model itself), and each weight
    gets its own rows, seen and held-out."""
    base, changes = {}, []
    load_pipeline = evaluate.load_pipeline

    def loading(*args, **kwargs):
        pipeline = load_pipeline(*args, **kwargs)
        base.update({name: p.detach().clone() for name, p in pipeline.transformer.named_parameters()})
        return pipeline

    def generating(pipeline, combinations, seeds, held_out, style=False, **settings):
        assert style  # "... on a dark background" prompts
        change = sum((p - base[name]).abs().sum().item() for name, p in pipeline.transformer.named_parameters())
        changes.append(change)
        def clip(combination, held):
            reading = ClipReading(combination.colour, combination.shape, combination.direction,
                                  dark_background=change > 0, fill_ratio=0.8, velocity=(0.0, 0.0))
            return evaluate.ClipResult(combination, 0, held, reading)
        return [clip(Combination("red", "circle", "left"), False), clip(sorted(held_out, key=str)[0], True)]

    monkeypatch.setattr(evaluate, "load_pipeline", loading)
    monkeypatch.setattr(evaluate, "generate_and_read", generating)
    out = tmp_path / "rows.json"
    assert evaluate.main(["--models-dir", str(shipped_models), "--modes", "lora", "--seeds", "0",
                          "--lora-weights", "0", "0.4", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert list(rows) == [f"lora {w}/{split}" for w in ("0", "0.4", "1") for split in ("seen", "held-out")]
    assert [rows[f"lora {w}/seen"]["dark"] for w in ("0", "0.4", "1")] == [0.0, 1.0, 1.0]
    assert changes[0] == 0 and changes[2] > 0
    assert torch.isclose(torch.tensor(changes[1]), torch.tensor(0.4 * changes[2]), rtol=1e-3)
    assert evaluate.parse_args([]).lora_weights == [0.0, 1.0]  # the default rows, as before the flag
