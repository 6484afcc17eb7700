"""Turn any tower spec into what the loaders read: a local transformers folder, or the spec as given.

``hf:`` specs become the folder in the hub cache; ``WEIGHTS::BASE`` specs are converted once into
``<cache>/towers/<name>-<hash>/`` (the hash covers the weights file's path, size and modification
time, the resolved base and the converter version), so the second use costs nothing and a
retrained file converts again. Everything else passes through unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from enhance.towers.convert import CONVERTER_VERSION, convert
from enhance.towers.hub import hub_file, hub_folder
from enhance.towers.spec import HUB_PREFIX, check_tower_spec, parse_hub
from genhancer.runtime.errors import UserError
from genhancer.toyworld.models import default_cache_dir, resolve_tiny


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def resolve_base(base: str, cache_dir: str | Path | None = None, option: str = "tower") -> str:
    """A base tower: an ``hf:`` folder, a tiny name, a local folder or an HF id."""
    if base.startswith(HUB_PREFIX):
        return str(hub_folder(parse_hub(base, option), option))
    return resolve_tiny(base, cache_dir)


def weights_file(weights: str, option: str = "tower") -> Path:
    """The local path of a state dict given as a file or an ``hf:`` file spec."""
    if weights.startswith(HUB_PREFIX):
        return hub_file(parse_hub(weights, option), option)
    return Path(weights).expanduser().resolve()


def converted_dir(weights: Path, base: str, cache_dir: str | Path | None = None) -> Path:
    """Where the conversion of ``weights`` onto ``base`` is cached."""
    st = weights.stat()
    key = json.dumps(
        [str(weights.resolve()), st.st_size, st.st_mtime_ns, base, CONVERTER_VERSION], sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return _cache_root(cache_dir) / "towers" / f"{weights.stem}-{digest}"


def resolve_tower(spec: str, cache_dir: str | Path | None = None, option: str = "tower") -> str:
    """A local folder for hub and state-dict specs (converting once); other specs unchanged."""
    parsed = check_tower_spec(spec, option)
    if parsed.kind == "plain":
        return spec
    if parsed.kind == "hub":
        return str(hub_folder(parsed.hub, option))
    base = resolve_base(parsed.base, cache_dir, option)
    weights = weights_file(parsed.weights, option)
    out = converted_dir(weights, base, cache_dir)
    if not (out / "config.json").is_file():
        try:
            convert(weights, base, out, source_label=parsed.weights)
        except UserError as exc:
            raise UserError(f"{option}: {spec}: {exc}") from None
    return str(out)
