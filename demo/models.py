"""Lazy, load-once access to the demo's models, with messages a page can show.

A demo should open at once and keep working when one of its models is missing: each model is
loaded on first use (on the best device), kept for the life of the process, and a failure
becomes a :class:`Unavailable` whose text names the flag to fix, instead of a stack trace. The
failure is remembered too, so a broken path does not cost a reload on every click.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from demo.common import FINAL, SIDES, TITLES, Unavailable
from demo.config import DemoConfig
from demo.reconstruct import Reconstructor
from enhance.layout import DENOISER_META, find_denoiser_dir, find_run_dir, step_exports
from eval.clip.encoders import load_encoder
from genhancer.runtime.errors import UserError, first_line
from llava_integration.inference import LlavaRunner

__all__ = ["FINAL", "SIDES", "TITLES", "ModelRegistry", "Unavailable", "best_device", "find_denoiser_dir"]


def best_device(device: str = "auto") -> str:
    """``auto`` -> CUDA, then Apple MPS, then CPU; anything else is kept."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def run_cache_dir(denoiser_dir: Path | None) -> str | None:
    """The ``cache_dir`` the run was trained with (where its genhancer-tiny:* models live)."""
    run_dir = find_run_dir(denoiser_dir)
    if run_dir is None:
        return None
    cfg_file = run_dir / "config.yaml"
    try:
        import yaml

        value = (yaml.safe_load(cfg_file.read_text()) or {}).get("cache_dir")
    except Exception:  # a damaged run config only loses this hint
        return None
    return value or None


class ModelRegistry:
    """Loads each model once, lazily; thread-safe (the Gradio queue runs requests in threads).

    Args:
        cfg: the resolved demo configuration (which paths, which device).
        loaders: optional replacements for the loading functions, keyed ``encoder``,
            ``reconstructor``, ``llava`` (tests use them to count loads).
    """

    def __init__(self, cfg: DemoConfig, loaders: dict[str, Callable[..., Any]] | None = None):
        self.cfg = cfg
        self.device = best_device(cfg.device)
        self.denoiser_dir = find_denoiser_dir(cfg.denoiser or cfg.enhanced)
        self.cache_dir = cfg.cache_dir or run_cache_dir(self.denoiser_dir)
        self._loaders = {
            "encoder": _load_encoder,
            "reconstructor": _load_reconstructor,
            "llava": _load_llava,
            **(loaders or {}),
        }
        self._done: dict[str, Any] = {}
        self._failed: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.run_dir = find_run_dir(cfg.enhanced) or find_run_dir(cfg.denoiser)
        self.variant = FINAL

    # --- the enhanced run's exports ------------------------------------------------------------
    def variants(self) -> list[str]:
        """The model picker's choices: ``final``, then ``step N`` for every per-step export."""
        return [FINAL, *(f"step {n}" for n, _ in step_exports(self.run_dir))]

    def at(self, variant: str | None) -> ModelRegistry:
        """This registry with the enhanced side at ``variant`` (a :meth:`variants` entry; None or
        ``final``: the final export). Loaded models are shared: each export loads once."""
        variant = variant or FINAL
        if variant == self.variant:
            return self
        if variant not in self.variants():
            raise Unavailable(f"the enhanced run has no export '{variant}' (choose one of {self.variants()})")
        view = copy.copy(self)  # the caches (dicts, locks) are the same objects
        view.variant = variant
        return view

    def _step_dir(self) -> Path | None:
        if self.variant == FINAL:
            return None
        return dict(step_exports(self.run_dir))[int(self.variant.removeprefix("step "))]

    # --- what is configured ------------------------------------------------------------------
    def encoder_spec(self, side: str) -> str:
        step = self._step_dir() if side == "enhanced" else None
        return str(step) if step is not None else getattr(self.cfg, side)

    def llava_dir(self, side: str) -> str:
        return getattr(self.cfg, f"llava_{side}")

    def has_chat(self) -> bool:
        return any(self.llava_dir(s) for s in SIDES)

    def status(self) -> list[tuple[str, str, str]]:
        """``(role, where, state)`` rows for the page header; states: loaded / failed / not loaded yet / not given."""
        rows = []
        for key, label, where in (
            *((f"encoder:{s}", f"{TITLES[s]} encoder", self.encoder_spec(s)) for s in SIDES),
            ("reconstructor", "Denoiser", str(self.denoiser_dir or "")),
            *((f"llava:{s}", f"{TITLES[s]} LLaVA", self.llava_dir(s)) for s in SIDES),
        ):
            if not where:
                state = "not given"
            elif key in self._done:
                state = "loaded"
            elif key in self._failed:
                state = "failed: " + self._failed[key]
            else:
                state = "loads on first use"
            rows.append((label, where, state))
        return rows

    # --- loading -------------------------------------------------------------------------------
    def _get(self, key: str, build: Callable[[], Any]) -> Any:
        if key in self._done:
            return self._done[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._done:
                return self._done[key]
            if key in self._failed:
                raise Unavailable(self._failed[key])
            try:
                value = build()
            except Unavailable as exc:
                self._failed[key] = str(exc)
                raise
            except UserError as exc:
                self._failed[key] = str(exc)
                raise Unavailable(str(exc)) from None
            except Exception as exc:  # any loader failure becomes a one-line page message
                msg = f"{type(exc).__name__}: {first_line(exc)}"
                self._failed[key] = msg
                raise Unavailable(msg) from None
            self._done[key] = value
            return value

    def encoder(self, side: str):
        """The dual encoder for ``side`` (an :class:`eval.clip.encoders.DualEncoder`)."""
        spec = self.encoder_spec(side)
        if not spec:
            raise Unavailable(f"no {side} encoder was given (start the demo with --{side} ID_OR_DIR)")

        def build():
            try:
                return self._loaders["encoder"](spec, self.device, self.cache_dir)
            except UserError as exc:
                raise Unavailable(f"{TITLES[side]} encoder ({spec}): {exc}") from None

        key = (
            f"encoder:{side}"
            if side != "enhanced" or self.variant == FINAL
            else f"encoder:{side}@{self.variant}"
        )
        return self._get(key, build)

    def reconstructor(self):
        """The exported projector + denoiser + VAE (a :class:`demo.reconstruct.Reconstructor`) of
        the picked export: a per-step export brings its own ``denoiser/``."""
        step = self._step_dir()
        if step is not None:
            folder = step / "denoiser"
            if not (folder / DENOISER_META).is_file():
                raise Unavailable(
                    f"the {self.variant} export ({step}) holds no denoiser/: the run was trained with "
                    "stage2.export_denoiser=false; pick 'final' or train with it on"
                )
            return self._get(
                f"reconstructor@{self.variant}",
                lambda: self._loaders["reconstructor"](folder, self.device, self.cache_dir),
            )
        if self.denoiser_dir is None:
            given = self.cfg.denoiser or self.cfg.enhanced
            where = f" ('{given}' has no export/denoiser/genhancer.json)" if given else ""
            raise Unavailable(
                "reconstruction needs the enhanced run's denoiser: pass --enhanced RUN_DIR "
                f"(a folder written by `enhance`){where}"
            )
        return self._get(
            "reconstructor",
            lambda: self._loaders["reconstructor"](self.denoiser_dir, self.device, self.cache_dir),
        )

    def llava(self, side: str):
        """The LLaVA runner for ``side`` (a :class:`llava_integration.inference.LlavaRunner`)."""
        path = self.llava_dir(side)
        if not path:
            raise Unavailable(
                f"no {side} LLaVA was given (start the demo with --llava-{side} DIR, a llava-train DIR/final)"
            )

        def build():
            if not Path(path).expanduser().is_dir():
                raise Unavailable(f"{TITLES[side]} LLaVA: folder not found: {path}")
            try:
                return self._loaders["llava"](path, self.device)
            except UserError as exc:
                raise Unavailable(f"{TITLES[side]} LLaVA ({path}): {exc}") from None

        return self._get(f"llava:{side}", build)


# --- default loaders ----------------------------------------------------------------------------


def _load_encoder(spec: str, device: str, cache_dir: str | None):

    return load_encoder(spec, device=device, cache_dir=cache_dir, batch_size=8)


def _load_reconstructor(denoiser_dir: Path, device: str, cache_dir: str | None):

    return Reconstructor.load(denoiser_dir, device=device, cache_dir=cache_dir)


def _load_llava(path: str, device: str):

    return LlavaRunner.load(Path(path).expanduser(), device=device)
