"""Write the folder a run is published from, and upload it with ``huggingface_hub``.

The folder is the repository as users will see it: the transformers model and processor at the
root (``CLIPModel.from_pretrained("ORG/NAME")``), open_clip's two files beside them
(``open_clip.create_model_and_transforms("hf-hub:ORG/NAME")``) for CLIP towers, the run's
``genhancer_export.json`` and resolved ``config.yaml``, and the model card (``README.md``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from enhance.publish.card import CardInputs, build_card
from genhancer.runtime.errors import UserError
from genhancer.runtime.jsonfile import read_json

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_repo_id(repo_id: str) -> str:
    """``ORG/NAME`` as the hub accepts it; the error names ``--repo-id`` and what was expected."""
    parts = repo_id.split("/")
    ok = (
        len(parts) == 2
        and all(_PART.match(p) for p in parts)
        and not any(s in repo_id for s in ("--", ".."))
        and not repo_id.endswith((".", "-"))
    )
    if not ok:
        raise UserError(
            f"--repo-id '{repo_id}' is not ORG/NAME (a hub namespace and a repository name of letters, "
            "digits, '-', '_' or '.', e.g. my-lab/genhancer-clip-l14)"
        )
    return repo_id


def run_parts(run: str | Path) -> dict:
    """The files of an ``enhance`` run a publication needs; refuses a folder without them."""
    run = Path(run).expanduser()
    export = run / "export"
    hf = export / "hf"
    if not (hf / "config.json").is_file():
        raise UserError(
            f"RUN {run}: no export/hf/config.json (give an `enhance` run folder with a final export)"
        )
    if not (run / "config.yaml").is_file():
        raise UserError(f"RUN {run}: no config.yaml (the resolved config the run saved)")
    meta_file = export / "genhancer_export.json"
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        model_type = json.loads((hf / "config.json").read_text()).get("model_type", "")
        config_text = (run / "config.yaml").read_text()
        config = yaml.safe_load(config_text) or {}
    except (ValueError, yaml.YAMLError) as exc:
        raise UserError(f"RUN {run}: unreadable metadata ({exc})") from None
    base = str((config.get("backbone") or {}).get("name_or_path", ""))
    method = str(meta.get("method") or (config.get("method") or {}).get("name") or "genhancer")
    return {
        "run": run,
        "hf": hf,
        "open_clip": export / "open_clip"
        if (export / "open_clip" / "open_clip_config.json").is_file()
        else None,
        "meta": meta,
        "meta_file": meta_file if meta_file.is_file() else None,
        "model_type": model_type,
        "config_text": config_text,
        "base": base,
        "method": method,
    }


def _same_place(spec: str, run: Path) -> bool:
    spec = spec[len("run:") :] if spec.startswith("run:") else spec
    try:
        target = Path(spec).expanduser().resolve()
    except (OSError, ValueError):
        return False
    return target in {
        p.resolve() for p in (run, run / "export", run / "export" / "hf", run / "export" / "open_clip")
    }


def board_records(results_dir: str | Path, run: Path, model: str = "") -> list[dict]:
    """This run's records on a leaderboard (``DIR/results.json``): the model whose spec is the run
    (or its exports), or ``model`` by name."""
    path = Path(results_dir).expanduser() / "results.json"
    if not path.is_file():
        raise UserError(f"--results {results_dir}: no results.json (a `leaderboard --output-dir` folder)")
    records = read_json(path, list, "a list of records", label="--results")
    if model:
        mine = [r for r in records if r.get("model") == model]
    else:
        mine = [
            r for r in records if isinstance(r.get("model_spec"), str) and _same_place(r["model_spec"], run)
        ]
    if not mine:
        names = sorted({str(r.get("model")) for r in records})
        what = f"model '{model}'" if model else f"a model whose spec is {run} or its exports"
        raise UserError(
            f"--results {results_dir}: the board has no {what} (models: {', '.join(names)}); use --board-model NAME"
        )
    return mine


def write_folder(
    run: str | Path, repo_id: str, out: str | Path, results: str | Path | None = None, board_model: str = ""
) -> Path:
    """Write the upload folder ``out`` (replaced if present) and return it."""
    check_repo_id(repo_id)
    parts = run_parts(run)
    records = board_records(results, parts["run"], board_model) if results else []
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(parts["hf"], tmp)
    has_open_clip = False
    if parts["open_clip"] is not None:  # an open_clip run: its own export
        for f in parts["open_clip"].iterdir():
            shutil.copy2(f, tmp / f.name)
        has_open_clip = True
    elif parts["model_type"] == "clip":  # a transformers CLIP run: written for open_clip too
        from enhance.towers.to_open_clip import write_open_clip  # torch: kept out of bad-input checks

        write_open_clip(parts["hf"], tmp, "genhancer-" + repo_id.split("/")[1])
        has_open_clip = True
    if parts["meta_file"] is not None:
        shutil.copy2(parts["meta_file"], tmp / "genhancer_export.json")
    (tmp / "config.yaml").write_text(parts["config_text"])
    card = build_card(
        CardInputs(
            repo_id=repo_id,
            method=parts["method"],
            base=parts["base"],
            model_type=parts["model_type"] or "clip",
            export_meta=parts["meta"],
            config_yaml=parts["config_text"],
            records=records,
            has_open_clip=has_open_clip,
            run_name=parts["run"].name,
        )
    )
    card.save(tmp / "README.md")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def upload(folder: Path, repo_id: str, private: bool = False) -> str:
    """Validate the card with the hub, create the repository if needed and upload ``folder``."""
    from huggingface_hub import HfApi, ModelCard

    ModelCard.load(folder / "README.md").validate()
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="genhancer-publish")
    return str(getattr(info, "commit_url", info))
