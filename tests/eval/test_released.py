"""``leaderboard --preset released-<backbone>`` on tiny stand-ins in the layouts the authors
released (GenHancer: an HF folder in a per-backbone subfolder of one hub repository; DIVA: a
``.pth`` in its library's layout on the hub; DCR: a local folder), read offline from a hub cache."""

from __future__ import annotations

import json
import re

import pytest
from testkit import load_test_module, set_flags

from eval.cli import main as leaderboard
from eval.config import load_config
from eval.paper_numbers import BACKBONES
from eval.released import Comparison, released_models

kit = load_test_module("towerkit.py", "_genhancer_towerkit")
PRESETS = [f"released-{n}" for n in ("openai-clip-l14-224", "openai-clip-l14-336", "metaclip-l14-224",
                                     "metaclip-h14-224", "siglip-so400m-224", "siglip-so400m-384")]  # fmt: skip


def test_the_flag_is_the_published_number_outside_our_interval():
    """By hand: interval [25, 35] over pairs, printed numbers to 0.1 (half a digit of slack)."""
    c = Comparison("diva", "diva", "average", 30.0, 25.0, 35.0, "pair", "GenHancer", "t", 31.9)
    assert c.outside is False
    assert Comparison(**{**c.__dict__, "published": 19.3}).outside is True
    assert Comparison(**{**c.__dict__, "published": 35.04}).outside is False
    assert Comparison(**{**c.__dict__, "published": 35.06}).outside is True
    assert Comparison(**{**c.__dict__, "low": None, "high": None}).outside is None


@pytest.mark.parametrize("preset", PRESETS)
def test_every_released_preset_names_the_published_towers(preset):
    cfg = load_config(preset, None, [])
    assert cfg.released.backbone in BACKBONES and cfg.benchmarks == ["mmvp_vlm"]
    towers = cfg.released.towers
    assert towers["original"] == cfg.released.backbone
    assert re.fullmatch(r"hf:msj9817/GenHancer/(OpenAICLIP|MetaCLIP|SigLIP)/[\w.-]+", towers["genhancer"])
    assert towers["genhancer"].endswith(
        cfg.released.backbone.split("/")[1]
    )  # the subfolder is the base's name
    assert re.fullmatch(rf"hf:BAAI/DIVA/\w+/[\w.-]+\.pth::{re.escape(cfg.released.backbone)}", towers["diva"])
    models, notes = released_models(cfg)
    assert [m.name for m in models] == ["original", "genhancer", "diva"] and notes[0].startswith(
        "dcr: no tower"
    )
    assert all(m.extra == {"method": m.name, "released_backbone": cfg.released.backbone} for m in models)


@pytest.fixture
def released_hub(tmp_path, monkeypatch):
    """The hub as the authors left it, for OpenAI ViT-L/14@224 (tiny stand-ins), offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    base = kit.build_clip_base(tmp_path / "base", act="quick_gelu", seed=1)
    kit.populate_hub_cache(cache, "openai/clip-vit-large-patch14", kit.folder_files(base))
    gen = kit.build_clip_base(tmp_path / "gen", act="quick_gelu", seed=2)
    kit.populate_hub_cache(
        cache, "msj9817/GenHancer", kit.folder_files(gen, "OpenAICLIP/clip-vit-large-patch14")
    )
    state, _ = kit.openai_layout(seed=3)
    pth = kit.save_state(state, tmp_path / "OpenAI-ViT-L-14-224.pth")
    kit.populate_hub_cache(cache, "BAAI/DIVA", {"OpenAICLIP/OpenAI-ViT-L-14-224.pth": pth})
    dcr = kit.build_clip_base(tmp_path / "dcr" / "OpenAICLIP-224", act="quick_gelu", seed=4)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return {"dcr": dcr, "cache": cache}


def test_the_released_board_sets_each_tower_beside_its_papers_numbers(
    released_hub, toy_data_root, tmp_path, capsys
):
    out = tmp_path / "board"
    argv = [
        "--preset",
        "released-openai-clip-l14-224",
        "--data-root",
        str(toy_data_root),
        "--output-dir",
        str(out),
    ]
    sets = ["--set", f"released.towers.dcr={released_hub['dcr']}", "--set", f"cache_dir={tmp_path / 'gc'}"]
    assert leaderboard([*argv, *sets, "--set", "device=cpu"]) == 0
    records = json.loads((out / "results.json").read_text())
    avg = {r["model"]: r for r in records if r["metric"] == "average"}
    assert set(avg) == {"original", "genhancer", "diva", "dcr"}
    assert all(
        avg[m]["method"] == m and avg[m]["released_backbone"] == "openai/clip-vit-large-patch14" for m in avg
    )
    assert avg["diva"]["model_spec"].startswith("hf:BAAI/DIVA/")
    text = (out / "released.md").read_text()
    assert text in (out / "leaderboard.md").read_text() and text in capsys.readouterr().out
    published = {  # (tower) -> (GenHancer paper Tab. 1, DCR paper Tab. 1) MMVP-VLM averages
        "original": (19.3, 19.2),
        "genhancer": (31.9, 31.8),
        "diva": (25.9, 25.9),
        "dcr": (None, 33.3),
    }
    for model, papers in published.items():
        r = avg[model]
        lo, hi = r["ci"]["low"], r["ci"]["high"]
        cells = []
        for p in papers:
            if p is None:
                cells.append("–")
            else:
                flag = " **outside**" if not (lo - 0.05 <= p <= hi + 0.05) else ""
                cells.append(f"{p:.1f} ({p - r['value']:+.1f}){flag}")
        row = (
            f"| {model} | {model} | {r['value']:.1f} [{lo:.1f}, {hi:.1f}] (pair) | {cells[0]} | {cells[1]} |"
        )
        assert row in text, (row, text)
    assert "Note (diva): DIVA's own MMVP-VLM script scores its OpenAI towers" in text


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["released.towers.foo=x"], "config key 'released.towers.foo': unknown method"),
        (["released.backbone=org/other"], "'org/other' has no published rows"),
        (
            ["released.towers.diva=hf:BAAI/DIVA/x.pth"],
            "released.towers.diva: 'hf:BAAI/DIVA/x.pth' names a state dict",
        ),
        (
            ["released.towers.dcr=/no/such.pth::openai/clip-vit-large-patch14"],
            "state dict not found: /no/such.pth",
        ),
        (
            ["released.towers.dcr=/no/dcr/OpenAICLIP-224"],
            "released.towers.dcr: /no/dcr/OpenAICLIP-224 does not exist",
        ),
    ],
)
def test_bad_released_configs_are_exit_2_one_line(sets, message, tmp_path, capsys):
    argv = ["--preset", "released-openai-clip-l14-224", "--output-dir", str(tmp_path / "b")]
    assert leaderboard([*argv, *set_flags(sets)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.slow  # three SigLIP towers loaded (one converted): ~45 s on the shared 2-core machine
def test_the_siglip_preset_resolves_its_released_layouts(tmp_path, monkeypatch):
    """SigLIP @224: GenHancer's SiglipModel folder and DIVA's open_clip SigLIP .pth (timm trunk)
    on the base read from the hub cache, through the preset's own specs."""
    import torch
    from huggingface_hub import constants

    from eval.clip.encoders import load_encoder

    base_id = "google/siglip-so400m-patch14-224"
    cache = tmp_path / "hub"
    kit.populate_hub_cache(cache, base_id, kit.folder_files(kit.build_siglip_base(tmp_path / "base")))
    gen = kit.build_siglip_base(tmp_path / "gen", seed=3)
    kit.populate_hub_cache(
        cache, "msj9817/GenHancer", kit.folder_files(gen, "SigLIP/siglip-so400m-patch14-224")
    )
    original = kit.open_clip_siglip(seed=8)
    pth = kit.save_state(original.state_dict(), tmp_path / "SigLIP-ViT-SO-14-224.pth")
    kit.populate_hub_cache(cache, "BAAI/DIVA", {"SigLIP/SigLIP-ViT-SO-14-224.pth": pth})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = load_config("released-siglip-so400m-224", None, [f"cache_dir={tmp_path / 'gc'}"])
    models, _ = released_models(cfg)
    px = torch.randn(2, 3, kit.IMAGE, kit.IMAGE, generator=torch.Generator().manual_seed(0))
    encoders = {m.name: load_encoder(m.spec, device="cpu", cache_dir=cfg.cache_dir) for m in models}
    assert {e.kind for e in encoders.values()} == {"siglip"}
    with torch.no_grad():
        diva = encoders["diva"].global_token(px)
        assert float((diva - original.encode_image(px)).abs().max()) < 1e-5
        assert not torch.allclose(
            encoders["genhancer"].global_token(px), encoders["original"].global_token(px)
        )
