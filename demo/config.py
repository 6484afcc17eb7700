"""The ``genhancer-demo`` configuration tree and its presets.

Resolved like every command's (``genhancer.runtime.configtools``): dataclass defaults < a preset < a
``--config`` YAML file < ``--set key=value`` < the explicit flags (``--original`` ...). Presets
are plain dicts here rather than YAML package data, so an installed wheel carries them without
a packaging rule. Unknown keys fail naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genhancer.runtime import configtools
from genhancer.runtime.configtools import doc
from genhancer.runtime.errors import UserError

#: Where ``make quickstart`` writes its run (Makefile ``OUT``).
QUICKSTART = "runs/quickstart"


@dataclass
class DemoConfig:
    original: str = doc("", "original dual encoder: HF id, model dir, open_clip spec or genhancer-tiny:clip")
    enhanced: str = doc("", "enhanced dual encoder: an `enhance` run dir or its export/hf")
    denoiser: str = doc(
        "",
        "dir holding export/denoiser (or that folder itself); empty: taken from --enhanced when it has one",
    )
    llava_original: str = doc("", "LLaVA dir (llava-train DIR/final) built on the original tower")
    llava_enhanced: str = doc("", "LLaVA dir built on the enhanced tower")
    results: str = doc("", "leaderboard output dir (leaderboard.md, *.png)")
    data_root: str = doc("", "benchmark data root; DIR/mmvp_vlm in the published layout feeds the gallery")
    host: str = doc("127.0.0.1", "interface to bind (0.0.0.0 exposes the demo to the network)")
    port: int = doc(7860, "TCP port")
    share: bool = doc(False, "ask Gradio for a public share link")
    device: str = doc("auto", "auto (CUDA, then MPS, then CPU) or a torch device string")
    cache_dir: str = doc("", "cache of genhancer-tiny:* models (empty: ~/.cache/genhancer or the run's)")
    prompt_prefix: str = doc("a photo of ", "text before each statement (the MMVP-VLM protocol)")
    gallery_size: int = doc(9, "examples in the gallery (one per visual pattern first)")
    max_upload_mb: float = doc(10.0, "largest uploaded file, in MB")
    max_image_pixels: int = doc(25_000_000, "largest image (width x height) the demo decodes")
    concurrency: int = doc(2, "requests of one kind that run at once (others wait in the queue)")
    queue_size: int = doc(32, "waiting requests before new ones are turned away")
    max_new_tokens: int = doc(48, "chat answer length limit")
    reconstruction_steps: int = doc(0, "Euler steps for reconstructions (0: the run's flow.preview_steps)")
    seed: int = doc(0, "seed of the reconstruction noise (same input, same picture)")

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise UserError(f"config key 'port': {self.port} is not a TCP port (1-65535)")
        for key in ("gallery_size", "concurrency", "queue_size", "max_new_tokens", "max_image_pixels"):
            if getattr(self, key) < 1:
                raise UserError(f"config key '{key}' must be >= 1, got {getattr(self, key)}")
        if self.max_upload_mb <= 0:
            raise UserError(f"config key 'max_upload_mb' must be > 0, got {self.max_upload_mb}")
        if self.reconstruction_steps < 0:
            raise UserError("config key 'reconstruction_steps' must be >= 0")


def _tiny_preset() -> dict:
    """Everything ``make quickstart`` produced; LLaVA dirs only when they exist (the quickstart
    does not train LLaVA yet), so the chat tab says what is missing instead of failing."""
    out: dict = {
        "original": "genhancer-tiny:clip",
        "enhanced": f"{QUICKSTART}/enhance",
        "results": f"{QUICKSTART}/board",
    }
    for side in ("original", "enhanced"):
        path = f"{QUICKSTART}/llava-{side}/final"
        if Path(path).is_dir():
            out[f"llava_{side}"] = path
    return out


PRESETS = {
    "tiny": (_tiny_preset, "offline CPU demo of `make quickstart`: tiny base tower vs its enhanced run"),
}


def list_presets() -> list[tuple[str, str]]:
    return [(name, text) for name, (_, text) in sorted(PRESETS.items())]


def load_config(
    preset: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | tuple = (),
    flags: dict | None = None,
) -> DemoConfig:
    """defaults < preset < config file < ``--set`` < explicit flags, validated as one tree."""
    data: dict = {}
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; choose one of {sorted(PRESETS)}")
        data = PRESETS[preset][0]()
    if config_file:
        file_data = configtools.load_yaml(config_file)
        base = file_data.pop("preset", None)
        if base and not preset:
            return load_config(base, config_file, overrides, flags)
        data = configtools.deep_merge(data, file_data)
    data = configtools.apply_overrides(data, overrides, DemoConfig)
    data.update({k: v for k, v in (flags or {}).items() if v is not None})
    cfg = configtools.from_dict(DemoConfig, data)
    cfg.validate()
    return cfg
