"""``genhancer-publish``: the upload folder loads from a hub cache in transformers and open_clip,
and its card parses back in ``huggingface_hub`` with the board's numbers as ``model-index``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from testkit import load_test_module

from enhance.publish.cli import main as publish
from eval.cli import main as leaderboard

kit = load_test_module("towerkit.py", "_genhancer_towerkit")
REPO = "my-lab/tiny-enhanced"


@pytest.fixture(scope="module")
def published(tmp_path_factory, toy_data_root):
    """A run folder in the ``enhance`` layout, a board that scored it, and a dry-run publication."""
    root = tmp_path_factory.mktemp("publish")
    run = root / "runs" / "oai-tiny"
    kit.build_clip_base(run / "export" / "hf", act="quick_gelu", seed=4)
    meta = {
        "method": "genhancer",
        "stage2_step": 60,
        "final": True,
        "dtype": "float32",
        "lora_targets": "all-linear",
    }
    (run / "export" / "genhancer_export.json").write_text(json.dumps(meta))
    config = {
        "backbone": {
            "family": "openai-clip",
            "name_or_path": "openai/clip-vit-large-patch14",
            "image_size": 32,
        }
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    base = kit.build_clip_base(root / "base", act="quick_gelu", seed=5)
    board = root / "board"
    argv = ["--preset", "tiny", "--clip", f"original={base}", f"enh={run}", "--benchmarks", "mmvp_vlm"]
    assert leaderboard([*argv, "--data-root", str(toy_data_root), "--output-dir", str(board)]) == 0
    out = root / "upload"
    assert (
        publish([str(run), "--repo-id", REPO, "--results", str(board), "--out", str(out), "--dry-run"]) == 0
    )
    return {"run": run, "board": board, "out": out}


def test_the_card_parses_back_with_the_boards_numbers(published):
    from huggingface_hub import ModelCard

    card = ModelCard.load(published["out"] / "README.md")
    data = card.data
    assert data.license == "mit" and data.base_model == "openai/clip-vit-large-patch14"
    assert data.library_name == "transformers" and "genhancer" in data.tags and "open_clip" in data.tags
    records = json.loads((published["board"] / "results.json").read_text())
    mine = {(r["benchmark"], r["metric"]): r["value"] for r in records if r["model"] == "enh"}
    assert {(e.dataset_type, e.metric_type): e.metric_value for e in data.eval_results} == pytest.approx(mine)
    assert ("mmvp_vlm", "average") in mine and data.model_name == "tiny-enhanced"
    again = ModelCard(str(card))  # the metadata round-trips through the text
    assert again.data.to_dict() == data.to_dict()
    assert data.to_dict()["model-index"][0]["results"][0]["task"]["type"] == "zero-shot-image-classification"
    text = card.text
    assert str(published["run"].parents[2]) not in str(card)  # no local path of this machine
    for needle in (
        f'CLIPModel.from_pretrained("{REPO}")',
        f'create_model_and_transforms("hf-hub:{REPO}")',
        f"--vision-tower hf:{REPO}",
        f"--vision_tower {REPO}",
        "@article{ma2025genhancer",
        "stage-2 step | 60",
        "name_or_path: openai/clip-vit-large-patch14",
    ):
        assert needle in text, needle


def test_the_folder_loads_from_the_hub_in_transformers_and_open_clip(published, tmp_path, monkeypatch):
    import open_clip
    from huggingface_hub import constants
    from transformers import CLIPModel

    cache = tmp_path / "hub"
    kit.populate_hub_cache(cache, REPO, kit.folder_files(published["out"]))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hf = CLIPModel.from_pretrained(REPO).eval()
    oc, _, preprocess = open_clip.create_model_and_transforms(f"hf-hub:{REPO}")
    px = torch.randn(2, 3, kit.IMAGE, kit.IMAGE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf.get_image_features(pixel_values=px)
        want = want if isinstance(want, torch.Tensor) else want.pooler_output
        assert float((oc.eval().encode_image(px) - want).abs().max()) < 1e-5
    exported = CLIPModel.from_pretrained(published["run"] / "export" / "hf")
    assert all(torch.equal(a, b) for a, b in zip(hf.state_dict().values(), exported.state_dict().values()))
    assert (published["out"] / "genhancer_export.json").is_file() and (
        published["out"] / "config.yaml"
    ).is_file()


@pytest.mark.parametrize(
    "repo_id", ["noslash", "a/b/c", "org/", "org/-name", "org/na me", "org/a--b", "org/name."]
)
def test_a_bad_repo_id_is_exit_2_one_line(published, repo_id, capsys, tmp_path):
    assert (
        publish([str(published["run"]), "--repo-id", repo_id, "--dry-run", "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith(f"genhancer-publish: error: --repo-id '{repo_id}' is not ORG/NAME")
        and err.count("\n") == 1
    )
    assert not (tmp_path / "o").exists()


def test_other_bad_input_is_exit_2_one_line(published, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "none")], "RUN "),
        ([str(published["run"]), "--results", str(tmp_path)], "no results.json"),
        (
            [str(published["run"]), "--results", str(published["board"]), "--board-model", "x"],
            "the board has no model 'x' (models: enh, original)",
        ),
    ]
    for args, message in cases:
        assert publish([*args, "--repo-id", REPO, "--dry-run", "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_without_dry_run_the_card_is_validated_and_the_folder_uploaded(
    published, tmp_path, monkeypatch, capsys
):
    """The upload path with the hub replaced by a recorder (no network here): the card goes to the
    hub's validator, the repository is created, the written folder uploaded."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, repo_id, folder_path, **kw):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(
        huggingface_hub.ModelCard, "validate", lambda self, repo_type=None: calls.append(("validate",))
    )
    out = tmp_path / "up"
    assert publish([str(published["run"]), "--repo-id", REPO, "--out", str(out), "--private"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["uploaded"] and result["commit"].endswith("/commit/abc")
    assert calls[0] == ("validate",)
    assert calls[1] == ("create_repo", REPO, {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[2][0] == "upload_folder" and {"README.md", "config.json", "open_clip_config.json"} <= set(
        calls[2][2]
    )


@pytest.mark.slow  # a real tiny `enhance` run (two steps a stage) before publishing it
def test_a_real_enhance_run_publishes_and_loads(tmp_model_dirs, tmp_path, monkeypatch, capsys):
    import open_clip
    from huggingface_hub import ModelCard, constants
    from testkit import tiny_enhance_flags
    from transformers import CLIPModel

    from enhance.cli import main as enhance

    run = tmp_path / "run"
    flags = tiny_enhance_flags(tmp_model_dirs, "stage1.steps=2", "stage2.steps=2", "logging.progress=false")
    assert enhance([*flags, "--output-dir", str(run)]) == 0
    out = tmp_path / "up"
    assert publish([str(run), "--repo-id", REPO, "--out", str(out), "--dry-run"]) == 0
    card = ModelCard.load(out / "README.md")
    assert "genhancer" in card.data.tags and "stage-2 step | 2" in card.text
    assert card.data.base_model is None  # a local tiny base is not a hub id
    cache = tmp_path / "hub"
    kit.populate_hub_cache(cache, REPO, kit.folder_files(out))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hf = CLIPModel.from_pretrained(REPO).float().eval()
    oc = open_clip.create_model(f"hf-hub:{REPO}").float().eval()
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf.get_image_features(pixel_values=px)
        want = want if isinstance(want, torch.Tensor) else want.pooler_output
        assert float((oc.encode_image(px) - want).abs().max()) < 1e-5
