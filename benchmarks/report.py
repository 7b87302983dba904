"""Markdown tables and PNG plots of the benchmark results (the JSON rows of :mod:`benchmarks.run`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .common import GIB, MIB


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.0f}"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _db(value: float) -> str:
    return "identical" if math.isinf(value) else f"{value:.1f} dB"


def transformer_table(rows: list[dict[str, Any]]) -> str:
    """One row per case: time, FLOPs, achieved rate against the matmul peak, memory."""
    return table(
        ["mode", "frames", "size", "tokens", "GFLOP", "median s", "best s", "s/frame", "GFLOP/s", "% of peak (median / best)",
         "peak RSS delta MiB", "computed activations MiB"],
        [[r["mode"], r["frames"], f"{r['height']}x{r['width']}", f"{r['tokens']:,}", f"{r['flops'] / 1e9:,.1f}",
          f"{r['median_s']:.3f}", f"{r['best_s']:.3f}", f"{r['time_per_frame_s']:.4f}", f"{r['flops_per_s'] / 1e9:.1f}",
          f"{pct(r['fraction_of_matmul_peak'])} / {pct(r['best_fraction_of_matmul_peak'])}",
          mib(r["peak_memory_delta_bytes"]), mib(r.get("computed_activation_bytes"))] for r in rows])


def generation_table(rows: list[dict[str, Any]]) -> str:
    """One row per pipeline and frame count: the whole generation and its stages."""
    return table(
        ["pipeline", "frames", "size", "steps", "total s (median)", "best s", "text s", "denoising s", "s/step",
         "decoding s", "s/frame", "peak RSS delta MiB"],
        [[r["pipeline"], r["frames"], f"{r['size']}x{r['size']}", r["steps"], f"{r['median_s']:.2f}",
          f"{r['best_s']:.2f}", f"{r['text_encoding_s']:.3f}", f"{r['denoising_s']:.2f}", f"{r['per_step_s']:.3f}",
          f"{r['decoding_s']:.2f}", f"{r['time_per_frame_s']:.3f}", mib(r["peak_memory_delta_bytes"])]
         for r in rows])


def fast_path_table(rows: list[dict[str, Any]], plain: dict[str, Any]) -> str:
    """One row per fast path: speed against the plain path, memory, and how much the output changed."""
    out = []
    for r in rows:
        if r.get("skipped"):
            out.append([r["path"], r["what"]] + ["-"] * 8)
            continue
        rate = (f"{pct(r['fraction_of_matmul_peak'])} / {pct(r['best_fraction_of_matmul_peak'])} / "
                f"{pct(r.get('quiet_fraction_of_matmul_peak'))}" if "fraction_of_matmul_peak" in r else "-")
        out.append([r["path"], r["what"], f"{r['median_s']:.3f}", f"{r['best_s']:.3f}",
                    f"{plain['median_s'] / r['median_s']:.2f}x", rate, mib(r["peak_memory_delta_bytes"]),
                    "yes" if r["changes_outputs"] else "no", f"{r['max_abs_diff']:.2e}", _db(r["psnr_db"])])
    return table(["path", "what", "median s", "best s", "speed vs plain (median)", "% of peak (median / best / quiet)",
                  "peak mem delta MiB", "can change outputs", "max abs diff", "PSNR"], out)


def tiers_table(rows: list[dict[str, Any]]) -> str:
    """Computed peak GPU memory per setting, and the tiers it fits."""
    return table(
        ["size", "frames", "dtype", "memory mode", "guidance", "window", "peak GB (computed)", "+1 GiB context",
         "denoise act. GB", "decode act. GB", "fits (GB)"],
        [[f"{r['height']}x{r['width']}", r["frames"], r["dtype"], r["memory_mode"], r["guidance"], r["window"] or "-",
          f"{r['peak_bytes'] / 1e9:.1f}", f"{r['with_overhead_bytes'] / 1e9:.1f}",
          f"{r['denoise_activation_bytes'] / 1e9:.2f}", f"{r['decode_activation_bytes'] / 1e9:.2f}",
          ", ".join(str(t) for t in r["fits_gb"]) or "none"] for r in rows])


def tier_summary_table(summary: list[dict[str, Any]], dtype: str) -> str:
    """Per tier: the largest setting each memory mode fits, in one dtype."""
    modes = list(dict.fromkeys(s["memory_mode"] for s in summary))
    rows = []
    for tier in sorted({s["tier_gb"] for s in summary}):
        cells = [f"{tier} GB"]
        for mode in modes:
            best = next(s["largest"] for s in summary if s["tier_gb"] == tier and s["dtype"] == dtype
                        and s["memory_mode"] == mode)
            cells.append("nothing" if best is None else
                         f"{best['height']}x{best['width']}x{best['frames']}, {best['guidance']} guidance"
                         + (f", window {best['window']}" if best["window"] else "")
                         + f" ({best['with_overhead_bytes'] / 1e9:.1f} GB)")
        rows.append(cells)
    return table(["tier"] + modes, rows)


def plot_transformer(rows: list[dict[str, Any]], axis: str, path: Path, title: str) -> None:
    """Time per step, time per frame and peak memory against frames or resolution (``axis``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = (lambda r: r["frames"]) if axis == "frames" else (lambda r: r["height"])
    figure, (time_ax, frame_ax, memory_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    for mode, marker in (("forward", "o"), ("forward+backward", "s")):
        selected = sorted((r for r in rows if r["mode"] == mode), key=key)
        if not selected:
            continue
        xs = [key(r) for r in selected]
        time_ax.plot(xs, [r["median_s"] for r in selected], marker=marker, label=f"{mode} (median)")
        frame_ax.plot(xs, [r["time_per_frame_s"] for r in selected], marker=marker, label=mode)
        memory_ax.plot(xs, [r["peak_memory_delta_bytes"] / MIB for r in selected], marker=marker,
                       label=f"{mode}: measured")
        if mode == "forward":
            memory_ax.plot(xs, [r["computed_activation_bytes"] / MIB for r in selected], linestyle="--",
                           marker="x", label="forward: computed live tensors")
    label = "frames" if axis == "frames" else "height = width (px)"
    for ax, ylabel in ((time_ax, "seconds per step"), (frame_ax, "seconds per frame"),
                       (memory_ax, "peak memory above the model (MiB)")):
        ax.set_xlabel(label)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    frame_ax.set_ylim(bottom=0)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_generation(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Stage times (stacked) and peak memory of whole generations against frames, per pipeline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pipelines = list(dict.fromkeys(r["pipeline"] for r in rows))
    figure, axes = plt.subplots(1, len(pipelines) + 1, figsize=(5 * (len(pipelines) + 1), 4.2), squeeze=False)
    for ax, name in zip(axes[0], pipelines):
        selected = sorted((r for r in rows if r["pipeline"] == name), key=lambda r: r["frames"])
        xs = [str(r["frames"]) for r in selected]
        bottom = [0.0] * len(selected)
        for stage, label in (("text_encoding_s", "text encoding"), ("denoising_s", "denoising"),
                             ("decoding_s", "VAE decoding")):
            values = [max(r[stage], 0.0) for r in selected]
            ax.bar(xs, values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_title(f"{name} pipeline, {selected[0]['size']} px, {selected[0]['steps']} steps", fontsize=9)
        ax.set_xlabel("frames")
        ax.set_ylabel("seconds (median)")
        ax.legend(fontsize=8)
    memory_ax = axes[0][-1]
    for name in pipelines:
        selected = sorted((r for r in rows if r["pipeline"] == name), key=lambda r: r["frames"])
        memory_ax.plot([r["frames"] for r in selected], [r["peak_memory_delta_bytes"] / MIB for r in selected],
                       marker="o", label=name)
    memory_ax.set_xlabel("frames")
    memory_ax.set_ylabel("peak RSS above the loaded pipeline (MiB)")
    memory_ax.grid(alpha=0.3)
    memory_ax.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def gib(value: float) -> str:
    """Bytes as GiB with one decimal."""
    return f"{value / GIB:.1f} GiB"
