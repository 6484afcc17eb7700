"""``leaderboard`` end to end on tiny models and generated fixtures: outputs, caching, bad input."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from eval import benchmarks as bench_mod
from eval.cli import main
from eval.report import render_markdown

SMALL = [
    "--set", "progress=false",
    "--set", "fixtures.image_size=32",
    "--set", "fixtures.pairs_per_pattern=2",
    "--set", "fixtures.class_images=3",
    "--set", "fixtures.retrieval_images=6",
    "--set", "probe.train_size=40",
    "--set", "probe.test_size=20",
    "--set", "probe.image_size=32",
    "--set", "probe.max_iter=20",
    "--set", "fixtures.cluster_images=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def board(tmp_model_dirs, tmp_path_factory):
    """One tiny-preset run over a CLIP and a SigLIP tower; returns (output dir, argv)."""
    out = tmp_path_factory.mktemp("board")
    argv = [
        "--preset",
        "tiny",
        "--clip",
        f"clip={tmp_model_dirs.clip}",
        f"siglip={tmp_model_dirs.siglip}",
        "--output-dir",
        str(out),
        *SMALL,
    ]
    assert main(argv) == 0
    return out, argv


def test_writes_results_markdown_plot_and_config(board, capsys):
    out, _ = board
    records = json.loads((out / "results.json").read_text())
    assert {r["benchmark"] for r in records} == {"mmvp_vlm", "zeroshot", "probe", "clustering"}
    assert {r["model"] for r in records} == {"clip", "siglip"}
    assert {r["method"] for r in records} == {"original"}  # neither tower is an enhance export
    for r in records:
        assert {"model", "benchmark", "metric", "value", "dataset", "revision", "seed", "cache_key"} <= set(r)
    mmvp = {r["metric"] for r in records if r["benchmark"] == "mmvp_vlm" and r["model"] == "clip"}
    assert mmvp == {
        "orientation",
        "presence",
        "state",
        "quantity",
        "position",
        "color",
        "structure",
        "text",
        "viewpoint",
        "average",
    }
    probe = {r["metric"] for r in records if r["benchmark"] == "probe" and r["model"] == "clip"}
    assert probe == {"color", "count", "orientation", "position"}
    md = (out / "leaderboard.md").read_text()
    assert "| clip |" in md and "| siglip |" in md and "## mmvp_vlm" in md
    assert (out / "mmvp_vlm_patterns.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "tradeoff_mmvp_vs_clustering.png").read_bytes()[:4] == b"\x89PNG"
    clustering = {r["metric"]: r for r in records if r["benchmark"] == "clustering" and r["model"] == "clip"}
    assert set(clustering) == {
        f"{d}/{m}" for d in ("digits", "toy_shapes", "average") for m in ("nmi", "acc", "ari")
    }
    assert clustering["digits/acc"]["k"] == 10 and clustering["digits/acc"]["n_images"] == 1797
    assert clustering["toy_shapes/acc"]["k"] == 4 and clustering["toy_shapes/acc"]["n_images"] == 12
    assert "not the paper's MNIST" in clustering["digits/nmi"]["note"]
    for m in ("nmi", "acc", "ari"):
        mean = (clustering[f"digits/{m}"]["value"] + clustering[f"toy_shapes/{m}"]["value"]) / 2
        assert clustering[f"average/{m}"]["value"] == pytest.approx(mean)
    assert "## clustering" in md and "| clip | original | " in md and "clustering as published" in md
    assert "| *paper (DCR): OpenAI ViT-L/14@224* | *DCR* | *0.73* | *0.74* | *0.62* |" in md
    assert list((out / "clustering_features" / "digits").iterdir())  # features cached beside results
    assert "fixtures:" in (out / "config.yaml").read_text()
    assert (out / "fixtures" / "mmvp_vlm" / "Questions.csv").is_file()


def test_every_number_has_its_unit_interval_and_paired_test(board):
    out, _ = board
    records = json.loads((out / "results.json").read_text())
    unit = {
        (r["benchmark"], r["metric"]): (r["ci"] or {}).get("unit") for r in records if r["model"] == "clip"
    }
    assert unit["mmvp_vlm", "average"] == "pair"
    assert (
        unit["zeroshot", "toy_color/top1"] == "image"
        and unit["zeroshot", "toy_captions/t2i_R@1"] == "caption"
    )
    assert unit["probe", "color"] == "image"
    assert unit["clustering", "average/acc"] is None  # not a mean over units: n/a
    probe = next(r for r in records if r["model"] == "siglip" and r["benchmark"] == "probe")
    assert probe["ci"]["n"] == 20 and probe["paired"]["clip"]["n"] == 20  # probe.test_size
    md = (out / "leaderboard.md").read_text()
    assert "| clip → siglip |" in md and "toy_color/top1 (images)" in md and "color (images)" in md


def test_rerun_reuses_cached_results_and_force_recomputes(board, monkeypatch, capsys):
    out, argv = board
    before = (out / "results.json").read_text()

    def boom(*args, **kwargs):
        raise AssertionError("recomputed a cached result")

    monkeypatch.setattr("eval.clip.encoders.load_encoder", boom)
    for name, b in list(bench_mod.BENCHMARKS.items()):
        monkeypatch.setitem(bench_mod.BENCHMARKS, name, dataclasses.replace(b, run=boom, prepare=boom))
    assert main(argv) == 0
    assert (out / "results.json").read_text() == before
    captured = capsys.readouterr()
    assert "reused cached results" in captured.err and "| clip |" in captured.out
    with pytest.raises(AssertionError, match="recomputed"):
        main([*argv, "--force"])
    assert (out / "results.json").read_text() == before  # nothing partial was recorded


def test_a_new_model_is_added_beside_the_cached_ones(board, tmp_model_dirs, tmp_path):
    out, argv = board
    target = tmp_path / "board"
    shutil.copytree(out, target)
    argv = [*argv, "--output-dir", str(target), "--benchmarks", "probe"]
    i = argv.index("--clip")
    argv[i + 1 : i + 3] = [f"third={tmp_model_dirs.clip}"]
    assert main(argv) == 0
    records = json.loads((target / "results.json").read_text())
    assert {r["model"] for r in records} == {"clip", "siglip", "third"}
    assert {r["benchmark"] for r in records if r["model"] == "third"} == {"probe"}


def _run_expect_2(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("leaderboard: error:") and len(err.splitlines()) == 1
    return err


def test_missing_questions_csv_is_exit_2_naming_the_file(tmp_model_dirs, tmp_path, capsys):
    err = _run_expect_2(
        [
            "--clip",
            f"m={tmp_model_dirs.clip}",
            "--benchmarks",
            "mmvp_vlm",
            "--data-root",
            str(tmp_path),
            "--output-dir",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert str(tmp_path / "mmvp_vlm" / "Questions.csv") in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_bad_csv_and_missing_image_are_exit_2(toy_mmvp_root, tmp_model_dirs, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(toy_mmvp_root, root / "mmvp_vlm")
    (root / "mmvp_vlm" / "MLLM_VLM Images" / "Color and Appearance" / "3.jpg").unlink()
    argv = [
        "--clip",
        f"m={tmp_model_dirs.clip}",
        "--benchmarks",
        "mmvp_vlm",
        "--data-root",
        str(root),
        "--output-dir",
        str(tmp_path / "o"),
        "--set",
        "mmvp_vlm.pairs_per_pattern=3",
    ]
    assert "Color and Appearance/3.jpg" in _run_expect_2(argv, capsys)
    csv_path = root / "mmvp_vlm" / "Questions.csv"
    csv_path.write_text(csv_path.read_text().replace("Statement", "Text", 1))
    assert "Questions.csv: columns are" in _run_expect_2(argv, capsys)


def test_bad_model_path_is_exit_2(tmp_path, capsys):
    err = _run_expect_2(
        ["--preset", "tiny", "--clip", "m=./missing/model/dir", "--output-dir", str(tmp_path)], capsys
    )
    assert "./missing/model/dir" in err


def test_other_bad_flags_are_exit_2(tmp_model_dirs, tmp_path, capsys):
    out = ["--output-dir", str(tmp_path)]
    assert "choose from: mmvp_vlm, zeroshot, probe, clustering" in _run_expect_2(
        ["--clip", f"m={tmp_model_dirs.clip}", "--benchmarks", "mmvp_vlm,nope", *out], capsys
    )
    assert "'b' is not a LLaVA checkpoint" in _run_expect_2(["--mllm", "a=b", *out], capsys)
    assert "needs a mllm model" in _run_expect_2(
        ["--clip", f"m={tmp_model_dirs.clip}", "--benchmarks", "pope", *out], capsys
    )
    assert "NAME=PATH_OR_ID" in _run_expect_2(["--clip", "justapath", *out], capsys)
    assert "unknown config key 'nope'" in _run_expect_2(["--preset", "tiny", "--set", "nope=1", *out], capsys)
    assert "unknown preset" in _run_expect_2(["--preset", "huge", *out], capsys)


def test_tiny_preset_skips_a_missing_default_model(monkeypatch, tmp_path):
    from eval.config import load_config
    from eval.leaderboard import default_models

    monkeypatch.chdir(tmp_path)
    models, skipped = default_models(load_config("tiny"))
    assert [m.name for m in models] == ["original"] and skipped == [
        "enhanced=runs/quickstart/enhance/export/hf"
    ]


def test_markdown_bolds_the_best_and_shows_matching_paper_rows(tmp_path):
    export = tmp_path / "run" / "export"
    (export / "denoiser").mkdir(parents=True)
    (export / "denoiser" / "genhancer.json").write_text(
        json.dumps(
            {
                "backbone": {"name_or_path": "openai/clip-vit-large-patch14"},
                "denoiser": {"kind": "continuous"},
            }
        )
    )
    rec = {"benchmark": "mmvp_vlm", "dataset": "MMVP/MMVP_VLM", "revision": "abc"}
    records = [
        {
            **rec,
            "model": "original",
            "model_spec": "openai/clip-vit-large-patch14",
            "metric": "average",
            "value": 19.3,
        },
        {**rec, "model": "enhanced", "model_spec": str(export / "hf"), "metric": "average", "value": 31.1},
    ]
    md = render_markdown(records)
    assert "| original | 19.3 |" in md and "| enhanced | **31.1** |" in md
    assert "| *paper (GenHancer): OpenAI ViT-L/14@224 original* | *19.3* |" in md
    assert "| *paper (DCR): OpenAI ViT-L/14@224 original* | *19.2* |" in md  # DCR's reprint
    assert "| *paper (GenHancer): OpenAI ViT-L/14@224 GenHancer (continuous)* | *31.9* |" in md
    assert "| *paper (DCR): OpenAI ViT-L/14@224 GenHancer* | *31.8* |" in md


def test_help_and_list_presets(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--benchmarks" in capsys.readouterr().out
    assert main(["--list-presets"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "tiny" in names and sum(n.startswith("released-") for n in names) == 6


def test_flag_list_is_pinned():
    # A new knob becomes a config field (--set), not a flag.
    from eval.cli import build_parser

    flags = sorted(o for a in build_parser()._actions for o in a.option_strings if o.startswith("--"))
    assert flags == sorted(
        ["--help", "--clip", "--mllm", "--benchmarks", "--data-root", "--output-dir", "--preset", "--config",
         "--set", "--force", "--limit", "--list-presets", "--threads"]
    )  # fmt: skip


def _clustering_config(tmp_path, datasets: list[dict]) -> str:
    import yaml

    f = tmp_path / "clustering.yaml"
    f.write_text(yaml.safe_dump({"clustering": {"datasets": datasets}}))
    return str(f)


@pytest.mark.parametrize(
    "entry, key",
    [
        ({"name": "mnist", "path": "/no/such/mnist"}, "clustering.datasets[1].path"),
        ({"name": "mnist", "split": "train"}, "clustering.datasets[1].split"),
        ({"name": "mnist", "label_column": "digit"}, "clustering.datasets[1].label_column"),
        ({"name": "mnist", "max_images": 2}, "clustering.datasets[1].max_images"),
    ],
)
def test_bad_clustering_data_is_exit_2_naming_dataset_and_key(tmp_model_dirs, tmp_path, capsys, entry, key):
    from eval.clip.fixtures import write_toy_clustering

    root = tmp_path / "data"
    write_toy_clustering(root / "clustering" / "mnist", image_size=16, per_class=2)  # 'test' split only
    cfg = _clustering_config(tmp_path, [{"name": "digits", "path": "sklearn:digits", "split": ""}, entry])
    argv = ["--clip", f"m={tmp_model_dirs.clip}", "--benchmarks", "clustering", "--config", cfg]
    err = _run_expect_2([*argv, "--data-root", str(root), "--output-dir", str(tmp_path / "o")], capsys)
    assert f"clustering dataset 'mnist' ({key})" in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_method_comes_from_the_export_and_selects_the_paper_rows(tmp_path):
    from eval.leaderboard import tower_method

    export = tmp_path / "run" / "export"
    (export / "hf").mkdir(parents=True)
    (export / "hf" / "config.json").write_text("{}")
    (export / "denoiser").mkdir()
    (export / "denoiser" / "genhancer.json").write_text(
        json.dumps({"backbone": {"name_or_path": "openai/clip-vit-large-patch14"}, "denoiser": {}})
    )
    assert tower_method(str(export / "hf")) == "genhancer"  # an export from before the field
    (export / "genhancer_export.json").write_text(json.dumps({"method": "dcr", "stage2_step": 10}))
    assert tower_method(str(export / "hf")) == tower_method(str(tmp_path / "run")) == "dcr"
    assert tower_method("genhancer-tiny:clip") == "original"
    assert tower_method("openai/clip-vit-large-patch14") == "original"
    rec = {"benchmark": "clustering", "dataset": "x", "revision": "r", "model_spec": str(export / "hf")}
    records = [
        {**rec, "model": "dcr-run", "method": "dcr", "metric": f"{d}/{m}", "value": 0.5}
        for d in ("mnist", "average")
        for m in ("nmi", "acc", "ari")
    ]
    md = render_markdown(records)
    assert "| dcr-run | dcr | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 | 0.50 |" in md
    # the matching published row sits under ours, in the same columns (MNIST, then Avg)
    assert (
        "| *paper (DCR): OpenAI ViT-L/14@224 DCR* | *DCR* | *0.73* | *0.74* | *0.62* | *0.76* | *0.67* | *0.54* |"
        in md
    )


def test_tradeoff_pairs_each_towers_mmvp_average_with_its_clustering_acc(tmp_path):
    from eval.report import plot_tradeoff, tradeoff_points

    def rec(model, bench, metric, value, method):
        return {"model": model, "benchmark": bench, "metric": metric, "value": value, "method": method}

    records = [
        rec("a", "mmvp_vlm", "average", 30.0, "original"),
        rec("a", "clustering", "average/acc", 0.6, "original"),
        rec("a", "clustering", "average/nmi", 0.9, "original"),
        rec("b", "clustering", "average/acc", 0.5, "genhancer"),
        rec("b", "mmvp_vlm", "average", 35.0, "genhancer"),
        rec("c", "mmvp_vlm", "average", 20.0, "dcr"),  # no clustering: not a point
    ]
    assert tradeoff_points(records) == [("a", "original", 0.6, 30.0), ("b", "genhancer", 0.5, 35.0)]
    assert plot_tradeoff(records, tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_tradeoff(records[-1:], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_cached_records_from_before_the_method_field_get_it_without_recomputing(board, monkeypatch):
    out, argv = board  # the same folder: a copy would change the fixture root, hence the cache keys
    results = out / "results.json"
    before = results.read_text()
    old = json.loads(before)
    for r in old:
        r.pop("method")
    results.write_text(json.dumps(old))

    def boom(*args, **kwargs):
        raise AssertionError("recomputed a cached result")

    for name, b in list(bench_mod.BENCHMARKS.items()):
        monkeypatch.setitem(bench_mod.BENCHMARKS, name, dataclasses.replace(b, run=boom, prepare=boom))
    try:
        assert main(argv) == 0
        new = json.loads(results.read_text())
        assert [r.pop("method") for r in new] == ["original"] * len(old) and new == old
    finally:
        results.write_text(before)
