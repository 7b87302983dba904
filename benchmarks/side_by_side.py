"""Side by side with the original EasyAnimate v1 code: the same weights and inputs, timed in interleaved rounds.

    python -m benchmarks.side_by_side --original DIR --original-python PY --out DIR
    python -m benchmarks.side_by_side --original ours --out DIR   # the control: our code on both sides

DIR is a checkout of the original v1 code (its ``easyanimate/models``), PY a Python with what that code imports
(diffusers 0.27, einops, safetensors, torch); nothing of it is kept here. Each side runs in a worker process of
this file, under the same thread count: ours with this Python, the original with PY and DIR first on its path. The
driver writes one weights file from our model (the v1 transformer at full width, ``--layers`` blocks, motion
modules doing work) and one inputs file; the original loads the weights strictly, so the key layouts must agree.
Then it asks for one call at a time, alternating sides, with an fp32 matmul reading before each round (both workers
run with glibc told to keep and reuse freed memory, :data:`RETAIN`):

* ``forward``: one forward in inference mode (the outputs of both are compared: the same function);
* ``train``: one motion-module training step: forward, MSE against fixed noise, backward, AdamW step of each
  project's kind (ours fused, as our trainer makes it; the original's ``torch.optim.AdamW`` default, as its
  ``train.py`` makes it).

The report (``side-by-side.json`` and ``.md``; the control's: ``side-by-side-control``) gives the medians, our
time over the original's in each round (the median of those ratios) and the share of the matmul peak (FLOPs
counted as in :mod:`benchmarks.flops`, the training step with the gradients it takes).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from safetensors.torch import load_file

KINDS = ("forward", "train")
# glibc keeps freed memory mapped and reuses it (the harness's "retain" mode, set here before the workers start):
# without it a call's time depends on how many fresh pages it touches, which varies from call to call
RETAIN = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1), "MALLOC_TOP_PAD_": str(2**28)}


def worker(side: str, folder: Path) -> None:
    """Serve calls on stdin (a kind, or ``save``: write the forward output), answering seconds on stdout."""
    if side == "ours":
        from easyanimate.models import Transformer3DModel
    else:  # the original's package has our package's name: its folder goes first on the path
        sys.path.insert(0, side)
        from easyanimate.models.transformer3d import Transformer3DModel

        # torch 2.13's CPU GroupNorm backward crashes (SIGSEGV) on the strided "(b f) c h w" view the original's
        # motion modules normalise when that input needs no gradient (the first block's, in motion-module
        # training); a contiguous input avoids it, and the kernel copied the view to contiguous memory anyway
        group_norm = torch.nn.GroupNorm.forward
        torch.nn.GroupNorm.forward = lambda self, x: group_norm(self, x.contiguous())
    config = json.loads((folder / "config.json").read_text())
    accepted = inspect.signature(Transformer3DModel.__init__).parameters
    model = Transformer3DModel(**{k: v for k, v in config.items() if k in accepted})
    model.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    inputs = load_file(folder / "inputs.safetensors")
    call = dict(hidden_states=inputs["latents"], encoder_hidden_states=inputs["text"],
                encoder_attention_mask=inputs["mask"], timestep=inputs["steps"],
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)
    model.requires_grad_(False)
    trainable = [p.requires_grad_() for n, p in model.named_parameters() if "attn_temporal" in n]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, **({"fused": True} if side == "ours" else {}))

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model.eval()(**call)[0]

    def train() -> None:
        output = model.train()(**call)[0]
        torch.nn.functional.mse_loss(output, inputs["target"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    print("ready", flush=True)
    for line in sys.stdin:
        if line.startswith("save"):
            torch.save(forward(), folder / f"{line.split()[1]}.pt")
            print(0.0, flush=True)
            continue
        started = time.perf_counter()
        (forward if line.strip() == "forward" else train)()
        print(time.perf_counter() - started, flush=True)


class Side:
    """A worker process and the way to ask it for one call."""

    def __init__(self, name: str, python: str, argument: str, folder: Path, threads: int):
        script = ["-m", "benchmarks.side_by_side"] if argument == "ours" else [str(Path(__file__).resolve())]
        command = [python, *script, "--worker", argument, "--folder", str(folder)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), **RETAIN}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                        cwd=Path(__file__).resolve().parents[1])
        self.name = name
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {name} worker did not start: {' '.join(command)}")

    def __call__(self, kind: str) -> float:
        self.process.stdin.write(kind + "\n")
        self.process.stdin.flush()
        if not (reply := self.process.stdout.readline()):
            raise SystemExit(f"the {self.name} worker stopped during a {kind!r} call (exit status "
                             f"{self.process.wait()}; its error is above)")
        return float(reply)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--original", type=Path, help="a checkout of the original v1 code, or 'ours' (the control)")
    add("--original-python", help="a Python with the original's dependencies")
    add("--out", type=Path, default=Path("benchmarks/results"), help="folder of the report")
    add("--layers", type=int, default=1, help="transformer blocks at full width")
    add("--frames", type=int, default=16)
    add("--size", type=int, default=256, help="pixels, square")
    add("--rounds", type=int, default=5)
    add("--threads", type=int, default=torch.get_num_threads())
    add("--worker", help=argparse.SUPPRESS)
    add("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.folder)
    control = str(args.original) == "ours"
    if not control and not (args.original and (args.original / "easyanimate/models/transformer3d.py").exists()):
        raise SystemExit("--original must be a checkout of the original v1 code (with easyanimate/models/"
                         "transformer3d.py), or 'ours' for the control run (our code on both sides)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:  # the weights and inputs both workers read (about 300 MB)
        run(args, control, Path(scratch))


def run(args: argparse.Namespace, control: bool, folder: Path) -> None:
    """Write the shared files into ``folder``, start both workers, time them, write the report."""
    from safetensors.torch import save_file

    from . import harness as h
    from .flops import training_flops, transformer_flops

    model = h.build_transformer("full", args.layers)
    latents, text, mask, steps = h.transformer_inputs(model, 1, args.frames, args.size, args.size)
    with torch.no_grad():
        shape = model(latents, text, mask, steps).sample.shape
    target = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    (folder / "config.json").write_text(json.dumps(dict(model.config), default=str))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "weights.safetensors")
    save_file(dict(latents=latents, text=text, mask=mask, steps=steps, target=target), folder / "inputs.safetensors")
    sides = {"ours": Side("ours", sys.executable, "ours", folder, args.threads),
             "original": Side("original", args.original_python or sys.executable,
                              "ours" if control else str(args.original.resolve()), folder, args.threads)}
    for name, side in sides.items():
        side(f"save {name}")
    same = h.compare(*(torch.load(folder / f"{name}.pt", weights_only=True) for name in ("original", "ours")))
    peaks, rounds = h.MatmulPeaks(torch.device("cpu")), []
    for kind in KINDS:  # one warm call each
        for side in sides.values():
            side(kind)
    for index in range(args.rounds):
        record = {"round": index, "matmul": peaks.measure(torch.float32)}
        order = list(sides) if index % 2 == 0 else list(sides)[::-1]
        record.update({f"{kind} {name}": sides[name](kind) for kind in KINDS for name in order})
        rounds.append(record)
        print(f"  round {index}: " + ", ".join(f"{k} {v:.3f}s" for k, v in record.items() if " " in k), flush=True)
    latent = (args.frames, args.size // 8, args.size // 8)
    flops = {"forward": transformer_flops(model.config, *latent),
             "train": training_flops(model.config, *latent, lambda name: "attn_temporal" in name)}
    rows = []
    for kind in KINDS:
        for name in sides:
            times = [r[f"{kind} {name}"] for r in rounds]
            ratio = median([r[f"{kind} ours"] / r[f"{kind} original"] for r in rounds]) if name == "ours" else None
            rows.append(h.add_rates({"path": f"{kind}, {name}", "median_s": median(times), "best_s": min(times),
                                     "ours_over_original": ratio, "flops": flops[kind], "dtype": "fp32"}, peaks))
    name = "side-by-side-control" if control else "side-by-side"
    title = "Side by side with the original v1 code" + (" (control: ours on both sides)" if control else "")
    settings = {"kind": "side-by-side", "view": "side-by-side", "title": title,
                **{k: getattr(args, k) for k in ("layers", "frames", "size", "rounds", "threads")}}
    payload = {"scenario": name, "settings": settings, "machine": h.machine_info(torch.device("cpu")),
               "matmul_peaks": peaks.record(), "forward_outputs": same, "rows": rows, "rounds": rounds}
    (args.out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(h.render(args.out, name)[""])
    for side in sides.values():
        side.process.stdin.close()

if __name__ == "__main__":
    main()
