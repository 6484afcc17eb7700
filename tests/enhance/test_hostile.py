"""Hostile model folders: nothing in them runs unless the user asks."""

from __future__ import annotations

import json
import shutil

from enhance.backbones.hf import load_hf_backbone


def test_custom_code_in_a_model_dir_is_not_executed(tmp_path, tmp_model_dirs):
    model_dir = tmp_path / "clip"
    shutil.copytree(tmp_model_dirs.clip, model_dir)
    marker = tmp_path / "pwned"
    (model_dir / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoConfig": "evil.EvilConfig"}
    (model_dir / "config.json").write_text(json.dumps(config))
    backbone = load_hf_backbone("openai-clip", str(model_dir), 32)  # trust_remote_code defaults to False
    assert backbone.global_dim > 0
    assert not marker.exists()
