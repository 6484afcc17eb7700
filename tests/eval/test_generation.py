"""The generation metric (``eval.generation``) by hand on a tiny ``enhance`` export, its response to a
perturbed denoiser, and its column on the leaderboard (only for towers whose export carries one)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from eval import generation as gen
from eval.cli import main
from eval.flow_heldout import sample_latent
from genhancer.runtime.seeding import derive_seed

SETTINGS = gen.GenerationSettings(draws=2, steps=2, seed=3, batch_size=4)


def _tiny_run(dirs, out, *extra: str):
    """A tiny ``enhance --preset tiny`` run (2 + 2 steps), its export carrying the denoiser."""
    from testkit import root_conftest

    from enhance.train import run

    sets = ["logging.preview_count=0", "stage2.export_every=0", *extra]
    run(root_conftest().build_tiny_enhance_config(dirs, sets), out)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_model_dirs, tmp_path_factory):
    return _tiny_run(tmp_model_dirs, tmp_path_factory.mktemp("gen") / "run")


@pytest.fixture(scope="module")
def local_run_dir(tmp_model_dirs, tmp_path_factory):
    """The same run with a quarter of the patch tokens in the condition (paper Fig. 1 iii)."""
    return _tiny_run(
        tmp_model_dirs, tmp_path_factory.mktemp("gen") / "local", "backbone.local_token_ratio=0.25"
    )


@pytest.fixture(scope="module")
def data():
    return gen.toy_captioned(seed=5, n=6, image_size=32)


@pytest.fixture(scope="module")
def judge(tmp_model_dirs):
    """The judge class the real presets load with openai/clip-vit-large-patch14, at tiny size."""
    return gen.Judge(str(tmp_model_dirs.clip))


def _score(run_dir, data, judge, denoiser=None):
    return gen.evaluate_generation(
        denoiser or run_dir / "export" / "denoiser", run_dir / "export" / "hf", data, judge, SETTINGS
    )


def _by_hand_inputs(run_dir, data, judge):
    """The score under test, and what recomputing it by hand starts from: the run's parts, the
    images in [0, 1] and the tower's view of them (normalised here, not by the code under test)."""
    score = _score(run_dir, data, judge)
    model, _ = gen.load_generator(run_dir / "export" / "denoiser", run_dir / "export" / "hf")
    unit = gen.to_unit(data.images, model.backbone.image_size)
    mean_px = torch.tensor(model.backbone.image_mean).view(1, 3, 1, 1)
    std_px = torch.tensor(model.backbone.image_std).view(1, 3, 1, 1)
    return score, model, unit, (unit - mean_px) / std_px


def test_finds_the_denoiser_of_an_export_and_none_for_a_plain_tower(run_dir, tmp_model_dirs):
    want = run_dir / "export" / "denoiser"
    for p in (run_dir, run_dir / "export", run_dir / "export" / "hf"):
        assert gen.continuous_denoiser_dir(p) == want
    assert gen.continuous_denoiser_dir(tmp_model_dirs.clip) is None


def test_recon_loss_by_hand(run_dir, data, judge):
    score, model, unit, pixels = _by_hand_inputs(run_dir, data, judge)
    with torch.no_grad():
        dist = model.codec.vae.encode(unit * 2 - 1).latent_dist
        pooled, context = model.projector(model.backbone(pixels).global_token)
        per_draw = []
        for d in range(SETTINGS.draws):
            g = torch.Generator().manual_seed(derive_seed("sensitivity_heldout", SETTINGS.seed, d))
            eps = torch.randn(dist.mean.shape, generator=g)
            noise = torch.randn(dist.mean.shape, generator=g)
            t = torch.sigmoid(torch.randn(len(unit), generator=g))  # logit-normal, scale 1
            c = model.codec
            z = sample_latent(
                dist.mean, dist.logvar, eps, c.sample_posterior, c.shift_factor, c.scaling_factor
            )
            tt = t.view(-1, 1, 1, 1)
            pred = model.denoiser((1 - tt) * z + tt * noise, t, pooled, context)
            per_draw.append((pred - (noise - z)).pow(2).flatten(1).mean(1))
    per_image = torch.stack(per_draw).mean(0)
    assert score.per_image_loss == pytest.approx(per_image.tolist(), rel=1e-5)
    assert score.recon_loss == pytest.approx(float(per_image.mean()), rel=1e-5)


def test_clip_score_by_hand(run_dir, data, judge):
    score, model, unit, pixels = _by_hand_inputs(run_dir, data, judge)
    cosines = []
    with torch.no_grad():
        for start in range(0, len(unit), SETTINGS.batch_size):
            px = pixels[start : start + SETTINGS.batch_size]
            pooled, context = model.projector(model.backbone(px).global_token)
            g = torch.Generator().manual_seed(derive_seed("generation_sample", SETTINGS.seed, start))
            size = unit.shape[-1] // model.codec.downsample
            x = torch.randn((len(px), model.codec.latent_channels, size, size), generator=g)
            for t0, t1 in ((1.0, 0.5), (0.5, 0.0)):  # two Euler steps from noise to data
                x = x + (t1 - t0) * model.denoiser(x, torch.full((len(x),), t0), pooled, context)
            images = gen.to_images(model.codec.decode(x))
            caps = data.captions[start : start + SETTINGS.batch_size]
            img = torch.nn.functional.normalize(judge.encoder.encode_images(images), dim=-1)
            txt = torch.nn.functional.normalize(judge.encoder.encode_texts(caps), dim=-1)
            cosines += (img * txt).sum(-1).tolist()
    assert score.per_image_cosine == pytest.approx(cosines, abs=1e-5)
    assert score.clip_score == pytest.approx(100 * sum(cosines) / len(cosines), abs=1e-3)
    assert score.steps == 2


def test_a_bfloat16_export_is_scored_in_float32(tmp_model_dirs, tmp_path, data, judge):
    run = _tiny_run(tmp_model_dirs, tmp_path / "bf16", "stage2.export_dtype=bfloat16")
    score = _score(run, data, judge)
    assert 0 < score.recon_loss < 10 and -100 <= score.clip_score <= 100


def test_the_metric_is_paired_and_moves_with_the_denoiser(run_dir, data, judge, tmp_path):
    a, b = _score(run_dir, data, judge), _score(run_dir, data, judge)
    assert (a.recon_loss, a.clip_score) == (b.recon_loss, b.clip_score)  # the same draws and noise
    perturbed = tmp_path / "denoiser"
    shutil.copytree(run_dir / "export" / "denoiser", perturbed)
    weights = perturbed / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    g = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    save_file(state, weights)
    c = _score(run_dir, data, judge, perturbed)
    assert c.recon_loss != pytest.approx(a.recon_loss, rel=1e-4)
    assert c.clip_score != pytest.approx(a.clip_score, abs=1e-4)


SMALL = [
    "--set", "progress=false",
    "--set", "probe.train_size=40",
    "--set", "probe.test_size=20",
    "--set", "probe.image_size=32",
    "--set", "probe.max_iter=20",
    "--set", "generation.images=6",
    "--set", "generation.steps=2",
]  # fmt: skip


def test_leaderboard_has_the_column_for_a_denoiser_export_only(
    run_dir, local_run_dir, tmp_model_dirs, tmp_path, capsys
):
    out = tmp_path / "board"
    argv = ["--preset", "tiny", "--clip", f"plain={tmp_model_dirs.clip}", f"enh={run_dir}/export/hf"]
    argv += [f"local={local_run_dir}"]  # a run folder names its export too
    argv += ["--benchmarks", "probe,generation", "--output-dir", str(out), *SMALL]
    argv += ["--set", f"generation.judge={tmp_model_dirs.clip}", "--set", f"cache_dir={tmp_model_dirs.cache}"]
    assert main(argv) == 0
    records = json.loads((out / "results.json").read_text())
    rows = {(r["model"], r["metric"]): r for r in records if r["benchmark"] == "generation"}
    assert {m for m, _ in rows} == {"enh", "local"}  # no column for the plain tower
    assert {r["model"] for r in records if r["benchmark"] == "probe"} == {"plain", "enh", "local"}
    loss = rows["enh", "recon_loss"]
    assert loss["judge"] == str(tmp_model_dirs.clip) and loss["steps"] == 2 and loss["method"] == "genhancer"
    assert loss["ci"]["low"] <= loss["value"] <= loss["ci"]["high"]  # the negated items read back right
    md = (out / "leaderboard.md").read_text()
    section = md.split("## generation")[1].split("\n## ")[0]
    assert "| plain |" not in section
    best = min(rows["enh", "recon_loss"]["value"], rows["local", "recon_loss"]["value"])
    assert f"**{best:.4f}**" in section  # lower is better: the lowest loss is bold
    capsys.readouterr()
    assert main(argv) == 0  # a rerun reuses the numbers
    assert "enh/generation" in capsys.readouterr().err


def test_leaderboard_refuses_generation_without_a_denoiser_fast(tmp_model_dirs, tmp_path, capsys):
    argv = ["--preset", "tiny", "--clip", f"plain={tmp_model_dirs.clip}", "--benchmarks", "generation"]
    assert main([*argv, "--output-dir", str(tmp_path / "b"), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "'generation' applies to none of the models" in err and err.count("\n") == 1


def test_a_missing_judge_names_its_key(run_dir, tmp_path, capsys):
    argv = ["--preset", "tiny", "--clip", f"enh={run_dir}", "--benchmarks", "generation"]
    argv += ["--set", "generation.judge=/nope/judge", "--output-dir", str(tmp_path / "b"), *SMALL]
    assert main(argv) == 2
    assert "generation.judge" in capsys.readouterr().err


def test_a_retrieval_set_gives_each_image_its_first_caption(tmp_path):
    from PIL import Image

    from eval.clip.zeroshot import RetrievalSet

    images = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    path = tmp_path / "b.png"
    images[1].save(path)
    ret = RetrievalSet(
        "caps", [images[0], path, images[2]], ["r0", "r1", "g0", "b0", "b1"], [0, 0, 1, 2, 2], "v1"
    )
    got = gen.retrieval_captioned(ret, 2)
    assert got.captions == ["r0", "g0"] and got.source == "caps" and got.revision == "v1"
    assert [im.getpixel((0, 0)) for im in got.images] == [(255, 0, 0), (0, 128, 0)]  # a path is opened
