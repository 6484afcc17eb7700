"""Hub folders and files through ``huggingface_hub``, its cache and its offline mode.

``huggingface_hub`` decides where files live (``HF_HUB_CACHE`` / ``HF_HOME``) and whether the
network may be used (``HF_HUB_OFFLINE``); we only ask it for a subfolder or a file at a revision.
On an air-gapped cluster a cache copied from another machine is used as it is. A spec that
cannot be resolved becomes one line naming the spec and what was expected.
"""

from __future__ import annotations

from pathlib import Path

from enhance.towers.spec import HubRef
from genhancer.runtime.errors import UserError, first_line


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _why(ref: HubRef, exc: BaseException) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, RevisionNotFoundError):
        return f"revision '{ref.revision}' does not exist in {ref.repo_id}"
    if isinstance(exc, GatedRepoError):
        return f"{ref.repo_id} is gated: log in (`hf auth login`) with an account that accepted its terms"
    if isinstance(exc, RepositoryNotFoundError):
        return f"repository {ref.repo_id} not found (or private)"
    if isinstance(exc, LocalEntryNotFoundError):
        where = "with HF_HUB_OFFLINE=1" if _offline() else "and the hub cannot be reached"
        return (
            f"not in the local hub cache {where}; download it on a connected machine "
            f"(`hf download {ref.repo_id}`) and copy the cache (HF_HUB_CACHE)"
        )
    return first_line(exc)


def hub_folder(ref: HubRef, option: str = "tower") -> Path:
    """The local folder of ``ref`` (a subfolder of a repository snapshot, or its root)."""
    from huggingface_hub import snapshot_download

    patterns = [f"{ref.path}/*"] if ref.path else None
    try:
        root = snapshot_download(ref.repo_id, revision=ref.revision or None, allow_patterns=patterns)
    except Exception as exc:  # the hub's errors are many; each becomes one line
        raise UserError(f"{option}: cannot resolve '{ref}': {_why(ref, exc)}") from None
    folder = Path(root) / ref.path if ref.path else Path(root)
    if not folder.is_dir():
        raise UserError(f"{option}: '{ref}': the repository has no folder '{ref.path}'")
    if not (folder / "config.json").is_file() and not (folder / "open_clip_config.json").is_file():
        found = sorted(p.name for p in folder.iterdir())[:6]
        raise UserError(
            f"{option}: '{ref}' holds no model (no config.json in {ref.path or 'the repository root'}; "
            f"found: {', '.join(found) or 'nothing'})"
        )
    return folder


def hub_file(ref: HubRef, option: str = "tower") -> Path:
    """The local path of the file ``ref`` names."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(ref.repo_id, ref.path, revision=ref.revision or None))
    except Exception as exc:
        from huggingface_hub.errors import EntryNotFoundError

        if isinstance(exc, EntryNotFoundError) and not _offline():
            raise UserError(f"{option}: '{ref}': {ref.repo_id} has no file {ref.path}") from None
        raise UserError(f"{option}: cannot resolve '{ref}': {_why(ref, exc)}") from None
