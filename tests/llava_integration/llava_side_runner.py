"""Run the original LLaVA package's own preprocessing and loss on one batch (side environment only).

Started by ``original_llava.run_original`` in a subprocess whose ``PYTHONPATH`` puts the
``llava-torch`` 1.2.2.post1 / transformers 4.37.2 folder first, so ``import transformers`` and
``import llava`` are those versions while torch is the main environment's. Not a test module:
it imports ``llava`` and must never run under the main environment's pytest.

Usage: ``python llava_side_runner.py JOB.json``; the job names the tokenizer folder (a slow
``tokenizer.model``), the tower folder, the data JSON and image folder, the conversation version
(``plain`` | ``v1``), the image aspect ratio (``square`` | ``pad``), the Llama shape, the LM and
projector weights in LLaVA's key names, and where to write the result (a ``torch.save`` dict of
per-sample ids / labels / images and the batch loss).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# transformers 4.37's Trainer imports datasets, peft and deepspeed when they are installed; the main
# environment's datasets and peft are built for huggingface_hub 1.x and accelerate 1.x and fail to
# import beside 4.37. LLaVA's preprocessing and forward use none of them, so hide them (``import``
# then raises ImportError and ``importlib.util.find_spec`` returns None: "not installed" to 4.37).
for _name in ("datasets", "peft", "deepspeed"):
    sys.modules[_name] = None

import torch  # noqa: E402
import transformers  # noqa: E402
from llava import conversation as conversation_lib  # noqa: E402
from llava.model import LlavaConfig, LlavaLlamaForCausalLM  # noqa: E402
from llava.train import train as llava_train  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


def main(job_path: str) -> None:
    job = json.loads(open(job_path).read())
    # as llava/train/train.py's train() sets them up for the v1 and plain versions
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        job["tokenizer_dir"],
        model_max_length=job["model_max_length"],
        padding_side="right",
        use_fast=False,
    )
    tokenizer.pad_token = tokenizer.unk_token
    conversation_lib.default_conversation = conversation_lib.conv_templates[job["version"]]

    config = LlavaConfig(**job["llama"])
    config.mm_vision_tower = job["tower_dir"]
    config.mm_vision_select_layer = -2
    config.mm_vision_select_feature = "patch"
    config.mm_projector_type = "mlp2x_gelu"
    config.mm_hidden_size = job["mm_hidden_size"]
    config.mm_patch_merge_type = "flat"
    config.mm_use_im_start_end = False
    config.image_aspect_ratio = job["image_aspect_ratio"]
    config.tokenizer_padding_side = "right"
    config.tokenizer_model_max_length = job["model_max_length"]
    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM(config)
    tower = model.get_model().get_vision_tower()
    tower.load_model()
    on_disk = load_file(str(Path(job["tower_dir"]) / "model.safetensors"))
    loaded = tower.vision_tower.state_dict()
    if any(k not in loaded or not torch.equal(loaded[k], v) for k, v in on_disk.items()):
        raise SystemExit(f"{job['tower_dir']}: transformers 4.37 did not load these tower weights (layout?)")
    missing, unexpected = model.load_state_dict(load_file(job["weights"]), strict=False)
    missing = [k for k in missing if not k.startswith("model.vision_tower.")]
    if missing or unexpected:
        raise SystemExit(
            f"weights do not fit LLaVA's model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval()

    data_args = llava_train.DataArguments(
        data_path=job["data_path"],
        lazy_preprocess=True,
        is_multimodal=True,
        image_folder=job["image_folder"],
        image_aspect_ratio=job["image_aspect_ratio"],
    )
    data_args.image_processor = model.get_vision_tower().image_processor
    data_args.mm_use_im_start_end = False
    dataset = llava_train.LazySupervisedDataset(job["data_path"], tokenizer, data_args)
    instances = [dataset[i] for i in range(len(dataset))]
    batch = llava_train.DataCollatorForSupervisedDataset(tokenizer)(instances)
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            images=batch["images"],
        )
    torch.save(
        {
            "input_ids": [x["input_ids"] for x in instances],
            "labels": [x["labels"] for x in instances],
            "images": [x["image"] for x in instances],
            "loss": out.loss.double(),
            "legacy": torch.tensor(bool(tokenizer.legacy)),
            "versions": {"transformers": transformers.__version__, "llava": llava_version()},
        },
        job["out"],
    )


def llava_version() -> str:
    from importlib.metadata import version

    return version("llava-torch")


if __name__ == "__main__":
    main(sys.argv[1])
