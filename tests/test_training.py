"""The training core on the tiny model and a tiny generated dataset, on CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from easyanimate.config import ConfigError
from easyanimate.generation import apply_lora, load_pipeline, select_model
from easyanimate.models import read_state_dict
from easyanimate.training import checkpoints
from easyanimate.training.config import config_from_sources, parse_config
from easyanimate.training.trainer import make_optimizer

from .helpers import ROOT, fixed_batch_loss_drop, free_port, run, settings


def test_motion_module_training_lowers_the_loss_and_keeps_the_rest_frozen(tiny_models, dataset, tmp_path):
    before = read_state_dict(tiny_models["model"] / "transformer" / "diffusion_pytorch_model.safetensors")
    # Overfit one batch: two clips, batch 2, fixed timesteps would be ideal; 40 steps at lr 1e-3 suffice.
    result = run(tiny_models, dataset, tmp_path, max_train_steps=40, train_data_meta=str(dataset / "videos_only.json"))
    first, last = fixed_batch_loss_drop(result)
    assert last < first, (first, last)
    after = load_file(str(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"))
    for key, value in before.items():
        assert torch.equal(after[key], value), f"frozen {key} changed"
    motion = load_file(str(tmp_path / "motion_module.safetensors"))
    assert motion and all(".attn_temporal." in k for k in motion)


def test_the_fused_optimizer_steps_as_the_default_adamw_does():
    config = config_from_sources(None, {"pretrained_model_name_or_path": "m", "adam_weight_decay": 0.05,
                                          "adam_beta1": 0.8})
    torch.manual_seed(0)
    start = [torch.randn(64, 32), torch.randn(32)]
    params = {name: [p.clone().requires_grad_() for p in start] for name in ("ours", "default")}
    optimizers = {"ours": make_optimizer(config, [{"params": params["ours"], "lr": 1e-3}]),
                  "default": torch.optim.AdamW([{"params": params["default"], "lr": 1e-3}], betas=(0.8, 0.999),
                                               weight_decay=0.05, eps=config.adam_epsilon, foreach=True)}
    for step in range(5):
        for name, optimizer in optimizers.items():
            for p in params[name]:
                p.grad = torch.sin(p.detach() * (step + 1))  # the same gradients on both sides
            optimizer.step()
    assert optimizers["ours"].defaults["fused"]
    for ours, default, first in zip(params["ours"], params["default"], start, strict=True):
        assert not torch.equal(ours, first)
        torch.testing.assert_close(ours, default, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # compiles and trains twice; the fast tier compiles in test_diffusers_api
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_compiled_blocks_train_as_the_eager_model_does(tiny_models, dataset, tmp_path, backend):
    common = dict(max_train_steps=3, gradient_checkpointing=True)
    run(tiny_models, dataset, tmp_path / "eager", **common)
    compiled = run(tiny_models, dataset, tmp_path / "compiled", compile=backend, **common)
    assert np.all(np.isfinite(compiled.losses))
    eager = load_file(str(tmp_path / "eager" / "motion_module.safetensors"))
    ours = load_file(str(tmp_path / "compiled" / "motion_module.safetensors"))
    assert ours.keys() == eager.keys()  # compiled in place: the exports keep the eager names
    for key in eager:
        torch.testing.assert_close(ours[key], eager[key], rtol=1e-4, atol=1e-5)


def test_an_unknown_compile_backend_is_refused_at_start():
    with pytest.raises(ConfigError, match="compile must be a torch.compile backend such as .*inductor.*; got 'fast'"):
        config_from_sources(None, {"pretrained_model_name_or_path": "m", "compile": "fast"})


def test_image_training_trains_the_whole_pixart_model(tiny_models, dataset, tmp_path):
    image_config = ROOT / "config" / "easyanimate_image_normal_v1.yaml"
    result = run(tiny_models, dataset, tmp_path, config_path=str(image_config), trainable_modules=["."],
                 train_data_meta=str(dataset / "images_only.json"), max_train_steps=40)
    first, last = fixed_batch_loss_drop(result)
    assert last < first, (first, last)
    exported = load_file(str(result.exports["pixart_transformer"]))
    base = read_state_dict(tiny_models["model"] / "transformer" / "diffusion_pytorch_model.safetensors")
    assert set(exported) == set(base)  # the PixArt key set: usable as a personalized base model
    assert any(not torch.equal(exported[k], base[k]) for k in base)


def test_cross_attention_trained_beside_the_motion_module_is_exported_as_the_image_model(
        tiny_models, dataset, tmp_path):
    """A video stage that also trains cross-attention (at lr/10) writes the image model it changed, with
    the PixArt key set, next to the motion module; the rest of the image model stays as it was."""
    result = run(tiny_models, dataset, tmp_path, max_train_steps=3, trainable_modules_low_learning_rate=["attn2"])
    base = read_state_dict(tiny_models["model"] / "transformer" / "diffusion_pytorch_model.safetensors")
    image = load_file(str(result.exports["pixart_transformer"]))
    assert set(image) == set(base)  # no motion-module key: a personalized base model / --transformer_path
    changed = {k for k in base if not torch.equal(image[k], base[k])}
    assert changed and all(".attn2." in k for k in changed), sorted(changed)[:5]
    assert all(".attn_temporal." in k for k in load_file(str(result.exports["motion_module"])))
    # a motion-module-only stage leaves the image model alone and does not write it
    assert "pixart_transformer" not in run(tiny_models, dataset, tmp_path / "mm_only", max_train_steps=1).exports


def test_lora_training_exports_a_kohya_file_that_changes_the_pipeline(tiny_models, dataset, tmp_path):
    overrides = dict(lora={"rank": 4, "network_alpha": 4.0, "train_text_encoder": True}, precompute=False,
                     max_train_steps=30, learning_rate=5e-3)
    result = run(tiny_models, dataset, tmp_path, **overrides)
    first, last = fixed_batch_loss_drop(result)
    assert last < first, (first, last)
    lora = load_file(str(result.exports["lora"]))
    assert any(k.startswith("lora_unet__") for k in lora) and any(k.startswith("lora_te_") for k in lora)
    assert not any("attn_temporal" in k for k in lora)
    base = read_state_dict(tiny_models["model"] / "transformer" / "diffusion_pytorch_model.safetensors")
    assert not (tmp_path / "transformer").exists()  # the base is not re-exported

    pipe = load_pipeline(select_model(tiny_models["root"], model=tiny_models["model"]), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(height=64, width=64, video_length=2, num_inference_steps=2)
    plain = pipe("a red square", generator=torch.Generator().manual_seed(0), **kwargs).videos
    apply_lora(pipe, None, result.exports["lora"], 1.0)
    styled = pipe("a red square", generator=torch.Generator().manual_seed(0), **kwargs).videos
    assert (styled - plain).abs().max() > 1e-4
    assert base  # loaded for the assertion above to be meaningful


def test_each_dataset_format_trains_with_its_own_caption_column(tiny_models, dataset, tmp_path):
    """A standard WebVid csv (videoid, name, page_dir: captions in 'name') needs no --caption_column."""
    import csv

    videos = tmp_path / "webvid"
    videos.mkdir()
    records = json.loads((dataset / "videos_only.json").read_text())
    with open(tmp_path / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["videoid", "name", "page_dir"])
        for number, record in enumerate(records):
            (videos / f"{number}.mp4").write_bytes((dataset / record["file_path"]).read_bytes())
            writer.writerow([number, record["text"], "000"])
    result = run(tiny_models, dataset, tmp_path / "out", train_data_format="webvid", train_data_dir=str(videos),
                 train_data_meta=str(tmp_path / "results.csv"), max_train_steps=1)
    assert result.global_step == 1 and result.data_summary["usable"] == len(records)


def test_a_trained_lora_loads_through_peft_through_the_pipeline_and_merged_alike(tiny_models, dataset, tmp_path):
    """The run writes the kohya file and peft adapter folders; peft itself, the pipeline's adapters and the
    exact merge all give the same video."""
    from peft import PeftModel

    from easyanimate.lora import LoraMerger

    overrides = dict(lora={"rank": 4, "network_alpha": 2.0, "train_text_encoder": True}, precompute=False,
                     max_train_steps=3, learning_rate=5e-2)
    result = run(tiny_models, dataset, tmp_path, **overrides)
    folders = result.exports["lora_peft"]
    assert (folders / "transformer" / "adapter_config.json").is_file()
    assert (folders / "text_encoder" / "adapter_model.safetensors").is_file()
    kwargs = dict(height=64, width=64, video_length=2, num_inference_steps=2, output_type="latent")

    def generate(pipe):
        pipe.set_progress_bar_config(disable=True)
        return pipe("a red square", generator=torch.Generator().manual_seed(0), **kwargs).videos

    merged_pipe = load_pipeline(select_model(tiny_models["root"], model=tiny_models["model"]), device="cpu")
    plain = generate(merged_pipe)
    LoraMerger(merged_pipe.transformer, merged_pipe.text_encoder).merge(result.exports["lora"])
    merged = generate(merged_pipe)
    adapters = load_pipeline(select_model(tiny_models["root"], model=tiny_models["model"]), device="cpu")
    adapters.load_lora_weights(folders)
    through_pipeline = generate(adapters)
    with_peft = load_pipeline(select_model(tiny_models["root"], model=tiny_models["model"]), device="cpu")
    with_peft.transformer = PeftModel.from_pretrained(with_peft.transformer, folders / "transformer").base_model.model
    with_peft.text_encoder = PeftModel.from_pretrained(with_peft.text_encoder,
                                                       folders / "text_encoder").base_model.model
    through_peft = generate(with_peft)
    assert (merged - plain).abs().max() > 1e-3
    torch.testing.assert_close(through_pipeline, merged, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(through_peft, merged, atol=1e-3, rtol=1e-4)


def test_a_trained_motion_module_is_also_a_configured_model_folder(tiny_models, dataset, tmp_path):
    from easyanimate.models import EasyAnimateMotionModule

    result = run(tiny_models, dataset, tmp_path, max_train_steps=2)
    folder = EasyAnimateMotionModule.from_pretrained(result.exports["motion_module_folder"])
    single = read_state_dict(result.exports["motion_module"])
    assert folder.config.num_attention_heads == 2 and folder.config.num_layers == 2
    assert all(torch.equal(folder.state_dict()[key], value) for key, value in single.items())


def test_a_lora_with_motion_module_targets_exports_and_merges_back(tiny_models, dataset, tmp_path):
    """lora.motion_module (v1's add_lora_in_attn_temporal): the motion modules are adapted too, the export names
    them kohya-style (lora_unet__transformer_blocks_<i>_attn_temporal_...), and that part alone changes the video."""
    overrides = dict(lora={"rank": 4, "network_alpha": 4.0, "motion_module": True}, max_train_steps=3,
                     learning_rate=5e-3, motion_module_path=str(tiny_models["motion_module"]))
    lora = load_file(str(run(tiny_models, dataset, tmp_path, **overrides).exports["lora"]))
    modules = {key.partition(".")[0] for key in lora}
    temporal = {name for name in modules if name.startswith("lora_unet__transformer_blocks_")
                and "_attn_temporal_" in name}
    assert len(temporal) == 2 * 12 and len(modules) == 26 + 2 * 12  # the tiny model has 2 blocks

    pipe = load_pipeline(select_model(tiny_models["root"], model=tiny_models["model"],
                                      motion_module=tiny_models["motion_module"]), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(height=64, width=64, video_length=4, num_inference_steps=2)
    plain = pipe("a red square", generator=torch.Generator().manual_seed(0), **kwargs).videos
    motion_only = {key: value for key, value in lora.items() if key.partition(".")[0] in temporal}
    merger = apply_lora(pipe, None, motion_only, 1.0)
    assert merger.merged.num_modules == 24
    styled = pipe("a red square", generator=torch.Generator().manual_seed(0), **kwargs).videos
    assert (styled - plain).abs().max() > 1e-4
    assert apply_lora(pipe, merger, None, 0.0) is merger and merger.merged is None
    assert apply_lora(pipe, merger, lora, 1.0).merged.num_modules == 50  # every exported name resolves


def test_exported_motion_module_loads_in_the_pipeline_and_changes_it(tiny_models, dataset, tmp_path):
    result = run(tiny_models, dataset, tmp_path, max_train_steps=3, learning_rate=1e-2)
    kwargs = dict(height=64, width=64, video_length=4, num_inference_steps=2)
    videos = []
    for motion_module in (tiny_models["motion_module"], result.exports["motion_module"]):
        pipe = load_pipeline(select_model(tiny_models["root"], model=tiny_models["model"],
                                          motion_module=motion_module), device="cpu")
        pipe.set_progress_bar_config(disable=True)
        videos.append(pipe("a red square", generator=torch.Generator().manual_seed(0), **kwargs).videos)
    assert (videos[0] - videos[1]).abs().max() > 1e-4


def test_resume_equals_an_uninterrupted_run(tiny_models, dataset, tmp_path):
    common = dict(precompute=False, use_ema=True, checkpointing_steps=2, train_data_meta=str(dataset / "meta.json"))
    run(tiny_models, dataset, tmp_path / "straight", max_train_steps=5, **common)
    run(tiny_models, dataset, tmp_path / "resumed", max_train_steps=2, **common)
    run(tiny_models, dataset, tmp_path / "resumed", max_train_steps=5, resume_from_checkpoint="latest", **common)
    straight = load_file(str(tmp_path / "straight" / "transformer" / "diffusion_pytorch_model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "transformer" / "diffusion_pytorch_model.safetensors"))
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_a_crash_while_saving_leaves_the_previous_checkpoint_latest(tiny_models, dataset, tmp_path, monkeypatch):
    from easyanimate.training import trainer

    real_write = trainer.CheckpointIO.write
    calls = {"n": 0}

    def crash_on_second_save(self, folder, step):
        calls["n"] += 1
        real_write(self, folder, step) if calls["n"] == 1 else None
        if calls["n"] == 2:
            (folder / "partial.bin").write_bytes(b"half")
            raise KeyboardInterrupt  # the process dies mid-save

    monkeypatch.setattr(trainer.CheckpointIO, "write", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_models, dataset, tmp_path, max_train_steps=6, checkpointing_steps=2)
    monkeypatch.undo()
    assert checkpoints.resolve_checkpoint(tmp_path, "latest").name == "checkpoint-2"
    result = run(tiny_models, dataset, tmp_path, max_train_steps=4, checkpointing_steps=2,
                 resume_from_checkpoint="latest")
    assert result.global_step == 4
    assert not list(tmp_path.glob(".incomplete-*"))


def test_checkpoint_limit_prunes_old_checkpoints(tiny_models, dataset, tmp_path):
    run(tiny_models, dataset, tmp_path, max_train_steps=6, checkpointing_steps=1, checkpoints_total_limit=2)
    assert [p.name for _, p in checkpoints.list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-6"]
    saved = tmp_path / "checkpoint-6"
    assert (saved / "transformer" / "config.json").is_file() and (saved / "train_config.yaml").is_file()


def test_validation_videos_and_resolved_config_are_written(tiny_models, dataset, tmp_path):
    run(tiny_models, dataset, tmp_path, max_train_steps=2, validation_prompts=["a red square moving right"],
        validation_steps=2, validation_inference_steps=2)
    assert (tmp_path / "sample" / "sample-2-0.mp4").is_file()
    assert "sample_n_frames: 4" in (tmp_path / "train_config.yaml").read_text()


def test_bad_settings_are_refused_with_the_option_named(tiny_models, dataset, tmp_path):
    with pytest.raises(ConfigError, match="sample_size"):
        config_from_sources(None, settings(tiny_models, dataset, tmp_path, sample_size=100))
    with pytest.raises(ConfigError, match="learning_rat"):
        config_from_sources(None, {**settings(tiny_models, dataset, tmp_path), "learning_rat": 1.0})
    with pytest.raises(ConfigError, match="min_train_timestep"):
        config_from_sources(None, settings(tiny_models, dataset, tmp_path, min_train_timestep=1000))
    for band in ({"max_train_timestep": 0}, {"max_train_timestep": 1001},
                 {"min_train_timestep": 700, "max_train_timestep": 700}):
        with pytest.raises(ConfigError, match="max_train_timestep"):
            config_from_sources(None, settings(tiny_models, dataset, tmp_path, **band))
    for bad in ({"train_sampling_steps": 1001}, {"train_sampling_steps": 1, "min_train_timestep": 0},
                {"normal_cdf": "erf"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            config_from_sources(None, settings(tiny_models, dataset, tmp_path, **bad))
    with pytest.raises(ValueError, match="nothing would train"):
        run(tiny_models, dataset, tmp_path, trainable_modules=["no_such_layer"])


def test_flags_override_the_yaml_file(tmp_path):
    yaml = tmp_path / "train.yaml"
    yaml.write_text("pretrained_model_name_or_path: m\nsample_n_frames: 8\nlearning_rate: 0.5\n")
    config = parse_config(["--train_config", str(yaml), "--learning_rate", "0.1", "--use_ema"], "test")
    assert (config.sample_n_frames, config.learning_rate, config.use_ema) == (8, 0.1, True)


def test_lora_flags_leave_the_motion_module_out_unless_asked():
    config = parse_config(["--pretrained_model_name_or_path", "m", "--rank", "8"], "test", lora=True)
    assert (config.lora.rank, config.lora.motion_module) == (8, False)
    config = parse_config(["--pretrained_model_name_or_path", "m", "--lora_motion_module"], "test", lora=True)
    assert config.lora.motion_module is True


def test_unusable_items_are_skipped_and_reported(tiny_models, dataset, tmp_path, capsys):
    meta = json.loads((dataset / "videos_only.json").read_text())
    meta.append({"file_path": "videos/missing.mp4", "text": "gone", "type": "video"})
    (tmp_path / "broken.mp4").write_bytes(os.urandom(2000))
    meta.append({"file_path": str(tmp_path / "broken.mp4"), "text": "corrupt", "type": "video"})
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    result = run(tiny_models, dataset, tmp_path / "out", train_data_meta=str(tmp_path / "meta.json"),
                 validate_data=True, max_train_steps=2)
    assert result.data_summary["missing"] == 1 and result.data_summary["corrupt"] == 1
    assert "skipped" in capsys.readouterr().out


def launch_two_processes(launcher_flags: list[str], options: dict, env: dict | None = None):
    """`accelerate launch` train.py in 2 CPU processes with the given launcher flags; returns the finished run."""
    flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in options.items()]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher_flags, "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), str(ROOT / "train.py"), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_process_accelerate_launch_trains_and_saves(tiny_models, dataset, tmp_path):
    out = tmp_path / "ddp"
    options = settings(tiny_models, dataset, out, max_train_steps=2, checkpointing_steps=2, train_batch_size=1)
    # --multi_gpu selects accelerate's torchrun launcher; without GPUs the trainer uses CPU + gloo.
    done = launch_two_processes(["--multi_gpu"], options)
    assert (out / "checkpoint-2" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "checkpoint-2" / "noise_generator_1.safetensors").is_file()  # one state per process
    assert (out / "motion_module.safetensors").is_file()
    # --precompute: each process encoded its half of the 4 clips; messages not meant per process appear once
    shares = re.findall(r"\[RANK (\d)\] precompute: this process encoded (\d) of 4 items", done.stderr)
    assert sorted(shares) == [("0", "2"), ("1", "2")], done.stderr[-3000:]
    assert done.stderr.count("mixed precision:") == 1 and done.stderr.count("exported motion_module:") == 1


@pytest.mark.slow
def test_deepspeed_zero2_in_two_cpu_processes_trains_saves_and_resumes(tiny_models, dataset, tmp_path):
    out = tmp_path / "zero2"
    zero2 = ["--use_deepspeed", "--zero_stage", "2"]
    cpu = {"DS_ACCELERATOR": "cpu"}  # DeepSpeed's CPU accelerator (it would look for CUDA first)
    options = settings(tiny_models, dataset, out, max_train_steps=2, checkpointing_steps=2, train_batch_size=1)
    done = launch_two_processes(zero2, options, cpu)
    # the two processes train together (one optimizer sharded over both), not two runs of one process each
    assert "1 per device x 2 process(es)" in done.stderr, done.stderr[-3000:]
    shards = {p.name for p in (out / "checkpoint-2" / "pytorch_model").iterdir()}
    assert {f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)} <= shards  # ZeRO: one per rank
    first = load_file(out / "motion_module.safetensors")

    done = launch_two_processes(zero2, {**options, "max_train_steps": 4, "resume_from_checkpoint": "latest"}, cpu)
    assert re.search(r"resumed from \S+checkpoint-2 at step 2", done.stdout), done.stdout[-3000:]
    assert (out / "checkpoint-4" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    again = load_file(out / "motion_module.safetensors")
    assert again.keys() == first.keys() and any(not torch.equal(again[k], first[k]) for k in first)  # it trained on


def wait_for(condition, timeout: float = 120.0, what: str = "") -> None:
    """Poll ``condition`` until it holds (a file the run writes appears), failing after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


@pytest.mark.slow
def test_killing_or_interrupting_the_process_at_any_moment_then_resuming_equals_an_uninterrupted_run(
        tiny_models, dataset, tmp_path):
    """SIGKILL or SIGINT a run that checkpoints every step, at seeded moments it can be seen to reach (a checkpoint
    just published, or one being written), then resume from 'latest': the weights equal an uninterrupted run's."""
    import random
    import signal

    total = 8
    straight = run(tiny_models, dataset, tmp_path / "straight", max_train_steps=total, checkpointing_steps=1000)
    expected = load_file(str(straight.exports["transformer"] / "diffusion_pytorch_model.safetensors"))
    rng = random.Random(1234)
    for trial in range(6):
        kind = [signal.SIGKILL, signal.SIGINT][trial % 2]
        step, moment = rng.randint(1, 5), rng.choice(["published", "being written"])
        out = tmp_path / f"trial{trial}"
        marker = out / (f"checkpoint-{step}" if moment == "published" else f".incomplete-checkpoint-{step}")
        options = settings(tiny_models, dataset, out, max_train_steps=10_000, checkpointing_steps=1)
        flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in options.items()]
        # The same number of threads as this process, whose in-process runs it is compared with bit for bit.
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
        process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *flags], cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda marker=marker, process=process: marker.exists() or process.poll() is not None,
                     what=str(marker))
        finally:
            process.send_signal(kind)
            _, errors = process.communicate(timeout=120)
        assert process.returncode == (-signal.SIGKILL if kind == signal.SIGKILL else 130), errors[-2000:]
        latest = checkpoints.resolve_checkpoint(out, "latest")
        assert (latest / checkpoints.COMPLETE_MARKER).is_file()
        assert checkpoints.step_of(latest) >= step - (moment == "being written")
        result = run(tiny_models, dataset, out, max_train_steps=total, checkpointing_steps=1000,
                     resume_from_checkpoint="latest")
        assert result.global_step == total
        resumed = load_file(str(result.exports["transformer"] / "diffusion_pytorch_model.safetensors"))
        assert all(torch.equal(expected[key], resumed[key]) for key in expected), (trial, kind, step, moment)
        assert not list(out.glob(".incomplete-*")) and not (out / ".lock").exists()


def test_training_draws_timesteps_only_from_the_configured_band(tiny_models, dataset, tmp_path, monkeypatch):
    from easyanimate.training.diffusion import ImprovedDDPM

    drawn = []
    sample = ImprovedDDPM.sample_timesteps

    def recording(self, *args, **kwargs):
        t = sample(self, *args, **kwargs)
        drawn.append(t.clone())
        return t

    monkeypatch.setattr(ImprovedDDPM, "sample_timesteps", recording)
    run(tiny_models, dataset, tmp_path, max_train_steps=6, min_train_timestep=300, max_train_timestep=400)
    t = torch.cat(drawn)
    assert len(t) == 12 and t.min().item() >= 300 and t.max().item() < 400, t


def test_fewer_training_steps_feed_the_model_the_original_timesteps(tiny_models, dataset, tmp_path, monkeypatch):
    """train_sampling_steps 50 respaces the 1000-step process: indices are drawn, the kept steps go to the model."""
    from easyanimate.models import Transformer3DModel
    from easyanimate.training.diffusion import ImprovedDDPM, spaced_timesteps

    drawn, fed = [], []
    sample, forward = ImprovedDDPM.sample_timesteps, Transformer3DModel.forward

    def recording_sample(self, *args, **kwargs):
        drawn.append(sample(self, *args, **kwargs))
        return drawn[-1]

    def recording_forward(self, hidden_states, encoder_hidden_states, encoder_attention_mask, timestep, **kwargs):
        fed.append(timestep.clone())
        return forward(self, hidden_states, encoder_hidden_states, encoder_attention_mask, timestep, **kwargs)

    monkeypatch.setattr(ImprovedDDPM, "sample_timesteps", recording_sample)
    monkeypatch.setattr(Transformer3DModel, "forward", recording_forward)
    run(tiny_models, dataset, tmp_path, max_train_steps=3, train_sampling_steps=50)
    kept = torch.tensor(spaced_timesteps(1000, 50))
    drawn, fed = torch.cat(drawn), torch.cat(fed)
    assert drawn.max().item() < 50 and torch.equal(fed, kept[drawn])


def test_flag_help_comes_from_the_field_metadata():
    import dataclasses

    from easyanimate.training.config import TrainConfig, build_parser

    fields = dataclasses.fields(TrainConfig)
    assert all(f.metadata.get("help") for f in fields), [f.name for f in fields if not f.metadata.get("help")]
    text = " ".join(build_parser("test").format_help().split())
    assert "--learning_rate LEARNING_RATE peak learning rate." in text


def train_py(tiny_models, dataset, out, *extra: str, env: dict | None = None, script: str = "train.py",
             **overrides) -> subprocess.CompletedProcess:
    """Run ``train.py`` (or ``train_lora.py``) as a user does, with the fixture's settings as flags."""
    options = settings(tiny_models, dataset, out, **overrides)
    flags = [f"--{k}" if v is True else f"--{k}={v}" for k, v in options.items()]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *flags, *extra], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)


def test_mixed_precision_follows_the_launcher(tiny_models, dataset, tmp_path):
    """``accelerate launch --mixed_precision bf16`` tells the script through ACCELERATE_MIXED_PRECISION; with no
    --mixed_precision of its own the run uses it (an explicit value still wins: the slow test below)."""
    done = train_py(tiny_models, dataset, tmp_path, env={"ACCELERATE_MIXED_PRECISION": "bf16"}, max_train_steps=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mixed precision: bf16 (the launcher's)" in done.stderr


@pytest.mark.slow
def test_an_explicit_mixed_precision_wins_over_the_launcher(tiny_models, dataset, tmp_path):
    done = train_py(tiny_models, dataset, tmp_path, env={"ACCELERATE_MIXED_PRECISION": "bf16"}, max_train_steps=1,
                    mixed_precision="no")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mixed precision: no (--mixed_precision)" in done.stderr


def test_a_tracker_that_is_not_installed_fails_at_start(tiny_models, dataset, tmp_path):
    from accelerate.tracking import get_available_trackers

    if "wandb" in {str(t) for t in get_available_trackers()}:
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError, match=r"report_to=wandb needs the wandb package.*pip install wandb"):
        run(tiny_models, dataset, tmp_path / "out", report_to="wandb")
    assert not (tmp_path / "out").exists()  # refused before anything was loaded or written
    with pytest.raises(ConfigError, match="report_to must be one of"):
        run(tiny_models, dataset, tmp_path / "out", report_to="wandbb")


def test_validation_samples_reach_tensorboard(tiny_models, dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny_models, dataset, tmp_path, max_train_steps=2, report_to="tensorboard",
        validation_prompts=["a red square moving right"], validation_steps=2, validation_inference_steps=2)
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent),
                              size_guidance={"images": 0})
    events.Reload()
    assert "validation/0" in events.Tags()["images"]
    (image,) = events.Images("validation/0")
    assert (image.step, image.width, image.height) == (2, 4 * 64, 64)  # the 4 frames side by side


def test_a_text_encoder_lora_under_deepspeed_is_refused_with_the_alternative(tiny_models, dataset, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what accelerate launch sets for a DeepSpeed config
    with pytest.raises(ConfigError, match="no-train_text_encoder"):
        run(tiny_models, dataset, tmp_path, lora={"rank": 4, "train_text_encoder": True}, precompute=False)
    config = parse_config(["--pretrained_model_name_or_path", "m", "--train_text_encoder", "--no-train_text_encoder"],
                          "test", lora=True)
    assert config.lora.train_text_encoder is False


def test_the_multinode_accelerate_example_is_a_valid_accelerate_config():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "config" / "accelerate_multinode_example.yaml"))
    assert (config.num_machines, config.num_processes, config.machine_rank) == (2, 16, 0)


@pytest.mark.parametrize("option, value, allowed", [
    ("learning_rate", float("nan"), "a finite number > 0"), ("learning_rate", float("inf"), "a finite number > 0"),
    ("learning_rate", 0.0, "a finite number > 0"), ("learning_rate", -1e-4, "a finite number > 0"),
    ("max_train_steps", 0, "a whole number >= 1 or unset"), ("max_train_steps", -5, "a whole number >= 1 or unset"),
    ("checkpointing_steps", 0, "a whole number >= 1"), ("num_train_epochs", 0, "a whole number >= 1"),
    ("max_grad_norm", float("nan"), "a finite number > 0"), ("max_grad_norm", float("inf"), "a finite number > 0"),
    ("validation_steps", 0, "a whole number >= 1"), ("checkpoints_total_limit", 0, "a whole number >= 1 or unset"),
    ("adam_beta2", 1.0, "a number in [0, 1)"), ("caption_dropout", 1.5, "a number in [0, 1]"),
    ("lr_warmup_steps", -1, "a whole number >= 0"), ("seed", -1, "a whole number from 0 to 4294967295"),
    ("lr_scheduler", "cosine_annealing", "one of constant, constant_with_warmup"),
    ("train_data_format", "csv", "one of webvid, normal, diffusers"),
])
def test_settings_out_of_range_are_refused_at_start_naming_the_option_and_range(tiny_models, dataset, tmp_path,
                                                                                 option, value, allowed):
    with pytest.raises(ConfigError, match=rf"^{option} must be {re.escape(allowed)}"):
        run(tiny_models, dataset, tmp_path / "out", **{option: value})
    assert not (tmp_path / "out").exists()  # before anything was loaded or written


def test_a_lora_setting_out_of_range_is_refused(tiny_models, dataset, tmp_path):
    with pytest.raises(ConfigError, match="^rank must be a whole number >= 1, got 0"):
        run(tiny_models, dataset, tmp_path, lora={"rank": 0})
    with pytest.raises(ConfigError, match="^network_alpha must be a finite number > 0, got nan"):
        run(tiny_models, dataset, tmp_path, lora={"network_alpha": float("nan")})


def test_train_py_says_what_is_wrong_in_one_line_and_exits_2(tiny_models, dataset, tmp_path):
    done = train_py(tiny_models, dataset, tmp_path / "out", "--learning_rate", "nan")
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: learning_rate must be a finite number > 0, got nan"]
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_one_line_and_tracebacks_are_opt_in(tiny_models, dataset, tmp_path, capsys, monkeypatch):
    from easyanimate.cli.train import main

    flags = [f"--{k}={v}" for k, v in settings(tiny_models, dataset, tmp_path / "out").items() if v is not True]
    assert main([*flags, "--max_train_steps", "0"]) == 2
    expected = "error: max_train_steps must be a whole number >= 1 or unset, got 0"
    assert capsys.readouterr().err.splitlines() == [expected]
    with pytest.raises(ConfigError):
        main([*flags, "--max_train_steps", "0", "--debug"])
    monkeypatch.setenv("EASYANIMATE_DEBUG", "1")
    with pytest.raises(ConfigError):
        main([*flags, "--checkpointing_steps", "0"])


def test_resume_latest_without_a_checkpoint_starts_fresh_with_a_notice(tiny_models, dataset, tmp_path, caplog):
    caplog.set_level("INFO")
    result = run(tiny_models, dataset, tmp_path, max_train_steps=2, resume_from_checkpoint="latest")
    assert result.global_step == 2
    messages = [record.getMessage() for record in caplog.records]
    assert any("no checkpoint in" in message and "starting from step 0" in message for message in messages)
    with pytest.raises(FileNotFoundError, match="checkpoint-7"):
        run(tiny_models, dataset, tmp_path, resume_from_checkpoint="checkpoint-7")


def test_a_second_training_into_a_live_runs_folder_is_refused(tiny_models, dataset, tmp_path, monkeypatch):
    """Run B starts into run A's folder while A trains (from inside A's first step): B is refused, A goes on."""
    from easyanimate.training import trainer
    from easyanimate.training.output_dir import OutputDirError

    real_step, refusals = trainer.training_step, []

    def start_a_second_run(*args, **kwargs):
        if not refusals:
            with pytest.raises(OutputDirError) as refused:
                run(tiny_models, dataset, tmp_path, max_train_steps=1, overwrite_output_dir=True)
            refusals.append(str(refused.value))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "training_step", start_a_second_run)
    result = run(tiny_models, dataset, tmp_path, max_train_steps=2, checkpointing_steps=1)
    assert result.global_step == 2 and (tmp_path / "motion_module.safetensors").is_file()
    assert f"is in use by another training (pid {os.getpid()} on" in refusals[0]
    assert not (tmp_path / ".lock").exists()  # released at the end


def test_a_finished_runs_folder_is_reused_only_to_resume_or_when_told(tiny_models, dataset, tmp_path, caplog):
    from easyanimate.training.output_dir import OutputDirError

    run(tiny_models, dataset, tmp_path, max_train_steps=2, checkpointing_steps=1)
    with pytest.raises(OutputDirError, match=r"holds a previous run .*--resume_from_checkpoint latest.*"
                                             r"--overwrite_output_dir"):
        run(tiny_models, dataset, tmp_path, max_train_steps=2)
    assert run(tiny_models, dataset, tmp_path, max_train_steps=3, resume_from_checkpoint="latest").global_step == 3
    caplog.set_level("INFO")
    run(tiny_models, dataset, tmp_path, max_train_steps=1, checkpointing_steps=1000, overwrite_output_dir=True)
    assert checkpoints.list_checkpoints(tmp_path) == []  # the previous run's, which 'latest' would have found
    assert any("removing the previous run's 2 checkpoints" in r.getMessage() for r in caplog.records)


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_notice(tiny_models, dataset, tmp_path, caplog):
    import socket

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    caplog.set_level("INFO")
    assert run(tiny_models, dataset, tmp_path, max_train_steps=1).global_step == 1
    assert any("no longer runs; taking it over" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / ".lock").exists()


def interrupt_at(monkeypatch, call: int, how: str) -> None:
    """Make the ``call``-th training_step (1-based) end in an interrupt: ``raise`` a KeyboardInterrupt after the step
    drew its noise (as a second Ctrl-C or an interrupting exception would), or send this process a real SIGINT."""
    import signal

    from easyanimate.training import trainer

    real_step, calls = trainer.training_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        loss = real_step(*args, **kwargs)
        if calls["n"] == call and how == "raise":
            raise KeyboardInterrupt
        if calls["n"] == call and how == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(trainer, "training_step", step)


@pytest.mark.parametrize("how, accumulation, call, saved", [
    ("raise", 1, 4, 3),  # inside step 4: the state after step 3 is saved
    ("raise", 2, 5, 2),  # in the first micro-batch of step 3: the state after step 2
    ("sigint", 1, 4, 4),  # Ctrl-C inside step 4: step 4 finishes, then it is saved
])
def test_ctrl_c_saves_a_checkpoint_that_resumes_like_an_uninterrupted_run(tiny_models, dataset, tmp_path, monkeypatch,
                                                                          how, accumulation, call, saved):
    common = dict(precompute=False, use_ema=True, checkpointing_steps=1000, gradient_accumulation_steps=accumulation,
                  train_batch_size=1, train_data_meta=str(dataset / "meta.json"))
    run(tiny_models, dataset, tmp_path / "straight", max_train_steps=6, **common)
    interrupt_at(monkeypatch, call, how)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_models, dataset, tmp_path / "resumed", max_train_steps=6, **common)
    monkeypatch.undo()
    assert [step for step, _ in checkpoints.list_checkpoints(tmp_path / "resumed")] == [saved]
    result = run(tiny_models, dataset, tmp_path / "resumed", max_train_steps=6, resume_from_checkpoint="latest",
                 **common)
    assert result.global_step == 6
    straight = load_file(str(tmp_path / "straight" / "transformer" / "diffusion_pytorch_model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


def test_a_full_disk_while_saving_is_one_clear_error_and_the_previous_checkpoint_stays_latest(
        tiny_models, dataset, tmp_path):
    """On a tmpfs with room for about one and a half checkpoints (made here as root; skipped otherwise)."""
    from easyanimate.training.checkpoints import DiskFullError

    run(tiny_models, dataset, tmp_path / "measure", max_train_steps=1, checkpointing_steps=1)
    size = sum(p.stat().st_size for p in (tmp_path / "measure" / "checkpoint-1").rglob("*") if p.is_file())
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.6) + 65536}", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a small filesystem here (needs root): {mounted.stderr.strip()}")
    try:
        with pytest.raises(DiskFullError) as full:
            run(tiny_models, dataset, small / "out", max_train_steps=4, checkpointing_steps=2)
        message = str(full.value)
        del full  # its traceback keeps the failed writer's open file alive
        assert "no space left for checkpoint-4 in " + str(small / "out") in message
        assert " free, a checkpoint needs about " in message and "checkpoint-2 is still the latest" in message
        assert [p.name for p in (small / "out").iterdir() if "checkpoint" in p.name] == ["checkpoint-2"]
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=True)


def test_a_metadata_file_that_is_not_utf8_is_named(tiny_models, dataset, tmp_path):
    meta = json.loads((dataset / "videos_only.json").read_text())
    meta[0]["text"] = "un carré rouge"
    (tmp_path / "latin1.json").write_bytes(json.dumps(meta, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json is not UTF-8 text .*save the metadata file as UTF-8"):
        run(tiny_models, dataset, tmp_path / "out", train_data_meta=str(tmp_path / "latin1.json"))


def test_a_model_folders_own_yaml_is_used_unless_config_path_says_otherwise(tiny_models, dataset, tmp_path, caplog):
    """The tiny folder carries its yaml (2 motion-module heads, a 256-frame table); the v1 yaml has 8 and 4096."""
    from easyanimate.models import MotionModuleSpec, WeightLoadError

    result = run(tiny_models, dataset, tmp_path / "own", max_train_steps=1, config_path=None)
    assert MotionModuleSpec.of_file(result.exports["motion_module"]) == MotionModuleSpec(2, 1, 256, "VanillaGrid", 32)
    pipe = load_pipeline(select_model(tiny_models["root"], model=tiny_models["model"],
                                      motion_module=result.exports["motion_module"]), device="cpu")
    assert pipe.transformer is not None  # loads with the folder's own yaml, as generation reads it

    caplog.set_level("WARNING")
    v1 = ROOT / "config" / "easyanimate_video_motion_module_v1.yaml"
    result = run(tiny_models, dataset, tmp_path / "v1", max_train_steps=1, config_path=str(v1))
    assert MotionModuleSpec.of_file(result.exports["motion_module"]).num_attention_heads == 8
    assert any("the model folder's own easyanimate_config.yaml has 2 heads" in r.getMessage() for r in caplog.records)
    with pytest.raises(WeightLoadError, match="was built with 8 heads"):
        load_pipeline(select_model(tiny_models["root"], model=tiny_models["model"],
                                   motion_module=result.exports["motion_module"]), device="cpu")


def test_a_yaml_that_does_not_fit_the_transformer_is_an_error_at_start(tiny_models, dataset, tmp_path):
    yaml = tmp_path / "three_heads.yaml"
    yaml.write_text(tiny_models["config"].read_text().replace("num_attention_heads: 2", "num_attention_heads: 3"))
    with pytest.raises(ConfigError, match=r"3 motion-module heads .* must divide the transformer's width 32"):
        run(tiny_models, dataset, tmp_path / "out", config_path=str(yaml))
    assert not (tmp_path / "out").exists()


def test_a_motion_module_built_with_other_settings_is_an_error_at_start(tiny_models, dataset, tmp_path):
    from easyanimate.models import WeightLoadError

    four_heads = tmp_path / "four_heads.yaml"
    four_heads.write_text(tiny_models["config"].read_text().replace("num_attention_heads: 2", "num_attention_heads: 4"))
    with pytest.raises(WeightLoadError,
                       match="was built with 2 heads.*four_heads.yaml has motion modules with 4 heads"):
        run(tiny_models, dataset, tmp_path / "out", config_path=str(four_heads),
            motion_module_path=str(tiny_models["motion_module"]))
    bare = tmp_path / "bare_mm.safetensors"  # no metadata, 256-frame tables (as a file saved elsewhere)
    save_file(load_file(str(tiny_models["motion_module"])), str(bare))
    long_table = tmp_path / "long_table.yaml"
    long_table.write_text(tiny_models["config"].read_text().replace("max_len: 256", "max_len: 4096"))
    with pytest.raises(ConfigError, match="has 256-frame position tables; .*long_table.yaml builds 4096-frame ones"):
        run(tiny_models, dataset, tmp_path / "out", config_path=str(long_table), motion_module_path=str(bare))
    assert not (tmp_path / "out").exists()


def test_a_start_header_says_what_the_run_will_do_once(tiny_models, dataset, tmp_path, caplog):
    caplog.set_level("INFO")
    run(tiny_models, dataset, tmp_path, max_train_steps=4, trainable_modules_low_learning_rate=["attn2"])
    headers = [r.getMessage() for r in caplog.records if "***** training *****" in r.getMessage()]
    assert len(headers) == 1
    lines = [line.strip() for line in headers[0].splitlines()]
    assert "examples: 4 (4 listed)" in lines
    assert "epochs: 2, 2 optimizer steps each" in lines and "total optimizer steps: 4" in lines
    assert "batch: 2 per device x 1 process(es) x 1 accumulation step(s) = 2 per optimizer step" in lines
    trains = next(line for line in lines if line.startswith("trains: "))
    assert "transformer parameters in" in trains and "names containing attn_temporal (at lr/10: attn2)" in trains
    assert "mixed precision: no (the launcher's)" in lines
    assert f"model yaml: {tiny_models['config']} (--config_path)" in lines
    assert f"output: {tmp_path.resolve()}" in lines

    caplog.clear()
    run(tiny_models, dataset, tmp_path / "lora", max_train_steps=1, precompute=False,
        lora={"rank": 4, "network_alpha": 2.0, "train_text_encoder": True})
    (header,) = [r.getMessage() for r in caplog.records if "***** training *****" in r.getMessage()]
    assert "trains: a LoRA of rank 4, alpha 2 on the transformer and T5: " in header
