"""The model card of a published run: metadata the hub indexes, and what a reader needs.

The metadata is ``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData` (license, base model,
tags, and, when a leaderboard scored the run, ``model-index`` with one entry per number), so the
hub shows the results and the card parses back to the same values. The text says what trained
the tower, how to load it in transformers, open_clip and LLaVA, and what to cite.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Licences of the base towers the presets name (the enhanced tower inherits its base's).
BASE_LICENSES = {
    "openai/": "mit",
    "google/siglip": "apache-2.0",
    "facebook/metaclip": "cc-by-nc-4.0",
}

#: Benchmark names as the leaderboard records them -> (hub task type, readable dataset name).
BENCHMARKS = {
    "mmvp_vlm": ("zero-shot-image-classification", "MMVP-VLM"),
    "zeroshot": ("zero-shot-image-classification", "zero-shot classification and retrieval"),
    "probe": ("image-classification", "linear probe"),
    "clustering": ("image-feature-extraction", "zero-shot clustering"),
}

METHOD_TITLES = {
    "genhancer": "GenHancer",
    "diva": "DIVA",
    "dcr": "DCR",
    "naive-contrastive": "a naive reconstruction + contrastive baseline",
}

CITATIONS = {
    "genhancer": """@article{ma2025genhancer,
  title={GenHancer: Imperfect Generative Models are Secretly Strong Vision-Centric Enhancers},
  author={Ma, Shijie and Ge, Yuying and Wang, Teng and Guo, Yuxin and Ge, Yixiao and Shan, Ying},
  journal={arXiv preprint arXiv:2503.19480},
  year={2025}
}""",
    "diva": """@article{wang2024diffusion,
  title={Diffusion Feedback Helps CLIP See Better},
  author={Wang, Wenxuan and Sun, Quan and Zhang, Fan and Tang, Yepeng and Liu, Jing and Wang, Xinlong},
  journal={arXiv preprint arXiv:2407.20171},
  year={2024}
}""",
    "dcr": """@inproceedings{han2026dcr,
  title={Guiding Diffusion-based Reconstruction with Contrastive Signals for Balanced Visual Representation},
  author={Han, Boyu and Xu, Qianqian and Bao, Shilong and Yang, Zhiyong and Cui, Ruochen and Zhao, Xilin and Huang, Qingming},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  year={2026}
}""",
}


@dataclass
class CardInputs:
    """What the card is made from (read from the run folder and the board by :mod:`.upload`)."""

    repo_id: str
    method: str
    base: str
    model_type: str  # clip | siglip
    export_meta: dict
    config_yaml: str
    records: list[dict] = field(default_factory=list)
    has_open_clip: bool = False
    run_name: str = ""


def license_of(base: str) -> str | None:
    for prefix, lic in BASE_LICENSES.items():
        if base.startswith(prefix):
            return lic
    return None


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~")) and ":" not in name


def _dataset_name(title: str, dataset) -> str:
    """The benchmark's name, with the hub dataset it was read from; a local folder is not named
    (its path means nothing to a reader, and the revision field keeps its content hash)."""
    if (
        isinstance(dataset, str)
        and dataset
        and not dataset.startswith(("/", ".", "~"))
        and ":" not in dataset
    ):
        return f"{title} ({dataset})"
    return f"{title} (local copy)" if dataset else title


def eval_results(records: list[dict]):
    """One ``EvalResult`` per numeric record (values as the board printed them)."""
    from huggingface_hub import EvalResult

    out = []
    for r in records:
        if not isinstance(r.get("value"), int | float) or r.get("model_kind", "clip") != "clip":
            continue
        task, title = BENCHMARKS.get(r["benchmark"], ("image-feature-extraction", r["benchmark"]))
        out.append(
            EvalResult(
                task_type=task,
                dataset_type=r["benchmark"],
                dataset_name=_dataset_name(title, r.get("dataset")),
                dataset_revision=str(r["revision"]) if r.get("revision") else None,
                metric_type=r["metric"],
                metric_name=r["metric"],
                metric_value=float(r["value"]),
            )
        )
    return out


def card_data(inputs: CardInputs):
    """The card's metadata."""
    from huggingface_hub import ModelCardData

    tags = ["vision", inputs.model_type, inputs.method, "genhancer-toolkit"]
    if inputs.has_open_clip:
        tags.append("open_clip")
    results = eval_results(inputs.records)
    return ModelCardData(
        license=license_of(inputs.base),
        library_name="transformers",
        pipeline_tag="zero-shot-image-classification",
        base_model=inputs.base if _is_hub_id(inputs.base) else None,
        tags=tags,
        model_name=inputs.repo_id.split("/")[1] if results else None,
        eval_results=results or None,
    )


def _results_table(records: list[dict]) -> str:
    rows = [r for r in records if isinstance(r.get("value"), int | float)]
    if not rows:
        return ""
    lines = ["| benchmark | metric | value | 95% interval (unit) | dataset |", "|---|---|---|---|---|"]
    for r in rows:
        ci = r.get("ci") or {}
        interval = f"[{ci['low']:.1f}, {ci['high']:.1f}] ({ci.get('unit', '')})" if ci else "n/a"
        dataset = _dataset_name(BENCHMARKS.get(r["benchmark"], ("", r["benchmark"]))[1], r.get("dataset"))
        lines.append(f"| {r['benchmark']} | {r['metric']} | {r['value']:.2f} | {interval} | {dataset} |")
    return "\n".join(lines) + "\n"


def card_text(inputs: CardInputs) -> str:
    """The card's body (markdown)."""
    repo, title = inputs.repo_id, METHOD_TITLES.get(inputs.method, inputs.method)
    meta = inputs.export_meta
    cls = "SiglipModel" if inputs.model_type == "siglip" else "CLIPModel"
    step = meta.get("stage2_step")
    parts = [
        f"# {repo.split('/')[1]}\n",
        f"`{inputs.base}` enhanced with {title} (method `{inputs.method}`), trained and exported with the "
        f"GenHancer toolkit{f' (run `{inputs.run_name}`)' if inputs.run_name else ''}. The image tower was "
        "fine-tuned; the text tower is the base's.\n",
        "| | |\n|---|---|\n"
        f"| base model | `{inputs.base}` |\n| method | `{inputs.method}` |\n"
        f"| stage-2 step | {step if step is not None else 'final'} |\n"
        f"| LoRA | targets `{meta.get('lora_targets') or '-'}`, bias `{meta.get('lora_bias') or '-'}` (merged) |\n"
        f"| weights dtype | {meta.get('dtype', '')} |\n",
    ]
    table = _results_table(inputs.records)
    if table:
        parts += [
            "## Results\n",
            "Scored with the toolkit's `leaderboard`; the interval is a 95 % bootstrap over the named unit.\n",
            table,
        ]
    parts += [
        "## Use\n",
        "transformers:\n",
        f"```python\nfrom transformers import AutoProcessor, {cls}\n\n"
        f'model = {cls}.from_pretrained("{repo}")\nprocessor = AutoProcessor.from_pretrained("{repo}")\n```\n',
    ]
    if inputs.has_open_clip:
        parts += [
            "open_clip:\n",
            f'```python\nimport open_clip\n\nmodel, _, preprocess = open_clip.create_model_and_transforms("hf-hub:{repo}")\n'
            f'tokenizer = open_clip.get_tokenizer("hf-hub:{repo}")\n```\n',
        ]
    parts += [
        "LLaVA-1.5 with this tower (the toolkit's recipe, or the original LLaVA code, which reads the "
        "vision side of this repository):\n",
        f"```bash\nllava-train --preset llava15-7b --vision-tower hf:{repo} --data-root /data/llava --output-dir runs/llava\n"
        f"# original LLaVA: --vision_tower {repo}\n```\n",
        "Score it beside its base:\n",
        f"```bash\nleaderboard --clip original={inputs.base} enhanced=hf:{repo} --benchmarks mmvp_vlm "
        "--data-root /data/bench --output-dir runs/board\n```\n",
        "## Training configuration\n",
        "<details><summary>config.yaml (resolved)</summary>\n\n```yaml\n"
        + inputs.config_yaml.strip()
        + "\n```\n</details>\n",
        "## Citation\n",
        "```bibtex\n" + CITATIONS["genhancer"] + "\n```\n",
    ]
    if CITATIONS.get(inputs.method, CITATIONS["genhancer"]) != CITATIONS["genhancer"]:
        parts.append("```bibtex\n" + CITATIONS[inputs.method] + "\n```\n")
    return "\n".join(parts)


def build_card(inputs: CardInputs):
    """The :class:`huggingface_hub.ModelCard` (metadata + text); parsing it back validates the
    YAML and the ``model-index``."""
    from huggingface_hub import ModelCard

    data = card_data(inputs)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_text(inputs)}")
