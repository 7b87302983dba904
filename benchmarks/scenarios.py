"""The benchmark scenarios, as data: one entry per published table.

A scenario names a kind of measurement (``benchmarks.run.KINDS``), its sizes, the variants it compares (the first
is the plain path; the tokens are explained in ``docs_template.md``) and the view that reports it
(``benchmarks.harness.VIEWS``). Sizes are chosen for about 30 minutes on 2 CPU cores; a GPU run adds scenarios
(e.g. ``width="full", layers=28, dtype="bf16"``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from easyanimate.generation import MEMORY_MODES


@dataclass(frozen=True)
class Scenario:
    """What one table measures."""

    kind: str
    view: str
    title: str
    variants: tuple[str, ...] = ("forward",)
    width: str = "small"  # a key of benchmarks.harness.WIDTHS
    layers: int = 1
    frames: tuple[int, ...] = (16,)
    size: int = 256  # pixels, square, a multiple of 32
    sizes: tuple[int, ...] = ()  # a resolution sweep at frames[0]
    windows: tuple[int | None, ...] = (None,)  # temporal windows (context_frames); None: the whole clip
    dtype: str = "fp32"
    batch: int = 1  # 2: guidance in one batched forward
    text_dim: int = 4096  # caption width (T5-XXL)
    pipeline: str = "tiny"  # a key of benchmarks.harness.PIPELINE_SIZES
    steps: int = 5
    guidance: float = 6.0
    repeats: int = 2  # interleaved timing rounds
    warmup: int = 0
    compile_backend: str = "inductor"
    peak_size: int | None = None  # side of the matmul of the peak; None: 2048 on a CPU, 8192 on a GPU


SWEEP = dict(frames=(16, 32, 48, 80), sizes=(128, 256, 384, 512))
TRAIN = tuple(f"train-{mode}{extra}" for mode in ("motion_module", "full", "lora") for extra in ("", "+checkpointing"))
SCENARIOS = {
    "target": Scenario("transformer", "paths", "CPU target: full-width block, 16 frames of 256x256, fp32 forward",
                       ("plain", "compiled", "retain", "compiled+retain"), width="full", repeats=5, warmup=1),
    "target-frames": Scenario("transformer", "sweep", "CPU target: time per frame, 80 against 16 frames",
                              ("plain", "compiled+retain"), width="full", frames=(16, 80), warmup=1),
    "transformer": Scenario("transformer", "sweep", "Transformer against frames and resolution", **SWEEP),
    "transformer_backward": Scenario("transformer", "sweep", "Transformer forward and forward+backward",
                                     ("forward", "forward+backward"), **SWEEP),
    "long-video": Scenario("transformer", "windows", "One guided step of long clips, with and without temporal windows",
                           frames=(16, 32, 64), windows=(None, 16), batch=2, text_dim=256, repeats=1),
    "train": Scenario("transformer", "train", "Training step by trainable set, with and without gradient checkpointing",
                      TRAIN, layers=2, size=128, text_dim=256, warmup=1),
    "train-target": Scenario("transformer", "train", "CPU target: motion-module training step, full-width block, "
                             "16 frames of 256x256", ("train-motion_module", "train-motion_module+foreach",
                                                      "train-motion_module+v1-layout", "train-motion_module+compiled",
                                                      "train-motion_module+autocast",
                                                      "train-motion_module+autocast+compiled"),
                             width="full", text_dim=4096, repeats=3, warmup=1),
    "generation": Scenario("pipeline", "generation", "Whole generation by stage", ("plain",), frames=SWEEP["frames"],
                           warmup=1),
    "fast-paths": Scenario("transformer", "paths", "Transformer fast paths against the plain path", (
        "plain", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "v1-layout", "retain", "bf16", "fp16",
        "compiled"), repeats=3, warmup=1),
    "fast-paths-pipeline": Scenario("pipeline", "paths", "Generation and VAE decoding fast paths", (
        "plain", "two-forwards", "bf16", "fp16", "chunk-8", "chunk-1", "chunk-16", "tiled"), pipeline="small",
        steps=3, repeats=3, warmup=1),
    "memory-modes": Scenario("pipeline", "paths", "Memory modes", tuple(f"memory-{m}" for m in MEMORY_MODES),
                             warmup=1),
    "tiers": Scenario("tiers", "tiers", "Memory tiers of the released model (computed, not measured)", ("bf16", "fp32"),
                      width="full", layers=28, frames=(16, 48, 80), sizes=(256, 512), windows=(None, 16)),
}


def quick(scenario: Scenario) -> Scenario:
    """The scenario at tiny sizes, to check the harness in seconds (the tiers allocate nothing: they keep theirs)."""
    if scenario.kind == "tiers":
        return replace(scenario, frames=(16,), sizes=(256,), windows=(None,))
    return replace(scenario, width="tiny", layers=1, frames=(4, 8)[:len(scenario.frames)], size=64,
                   sizes=(32, 64) if scenario.sizes else (), windows=tuple(w and 4 for w in scenario.windows),
                   pipeline="tiny", steps=2, repeats=1, warmup=0, text_dim=64, compile_backend="eager", peak_size=256)
