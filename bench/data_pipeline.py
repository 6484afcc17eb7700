"""How fast one CPU worker feeds a GPU: images/s of the training data path, and LLaVA's JSON.

Images: img2dataset-style webdataset shards (``{key}.jpg`` + ``.txt`` + ``.json`` per sample)
of real-sized JPEGs (short side 300-500 px, aspect 3:4 to 16:9, quality 95 as img2dataset
encodes), cut from the photographs scikit-learn ships (real photo statistics, not noise). One
worker is one process running the project's own path, :class:`enhance.data.ImageStream` over
:class:`~enhance.data.sources.WebDatasetSource` with :class:`~enhance.data.transforms.PairTransform`
(RandomResizedCrop, bicubic, both views: CLIP-normalised tower view + [-1, 1] VAE view), at 224,
336 and 384 px; then the same with the tower view only, the per-phase split (read, decode, crop,
views), and the latent-cache read path (:class:`~enhance.latent_cache.CachedCropTransform`: decode,
crop, tower view, stored posterior). Workers per GPU = ceil(target / images/s of one worker).

LLaVA: a generated llava_v1_5_mix665k-shaped JSON (665,298 rows in the published schema: image
rows from coco/gqa/ocr_vqa/textvqa/vg with multi-turn conversations, ~6 % text-only rows), then
the start-up cost of :func:`llava_integration.data.load_records` (seconds, peak RSS) in a fresh
interpreter, and rows/s of :func:`~llava_integration.data.encode` with a 32k byte-level BPE
trained on the generated text (Vicuna's SentencePiece tokenizer is not available offline)::

    python bench/data_pipeline.py                       # everything (several minutes on 2 cores)
    python bench/data_pipeline.py --part images --images 300
    python bench/data_pipeline.py --part llava --rows 665298
    python bench/data_pipeline.py --json out.json       # also write every number as JSON
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESOLUTIONS = (224, 336, 384)
TARGETS = (100, 450)  # img/s per GPU: stage 2's target, and stage 2's compute bound on one H100
MIX665K_ROWS = 665_298


# ------------------------------------------------------------------------------------ images


def photo_sources():
    from PIL import Image
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(a) for a in load_sample_images().images]


def real_sized_jpeg(photos, rng: random.Random) -> bytes:
    """A JPEG of a random region of a real photograph, short side 300-500 px, aspect 3:4-16:9."""
    from PIL import Image

    photo = photos[rng.randrange(len(photos))]
    short = rng.randint(300, 500)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(16 / 9)))
    w, h = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    # a random crop of the photo scaled to (w, h): content and JPEG statistics of a real image
    scale = rng.uniform(0.5, 1.0)
    cw, ch = min(photo.width, round(photo.height * scale * w / h)), round(photo.height * scale)
    cw, ch = max(cw, 16), min(ch, photo.height)
    left, top = rng.randint(0, photo.width - cw), rng.randint(0, photo.height - ch)
    img = photo.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_shards(out: Path, n: int, shard_size: int = 500, seed: int = 0) -> dict:
    """img2dataset's layout: ``{shard:05d}.tar`` holding ``{key:09d}.jpg/.txt/.json``."""
    rng, photos = random.Random(seed), photo_sources()
    out.mkdir(parents=True, exist_ok=True)
    sizes = []
    for s in range(0, n, shard_size):
        with tarfile.open(out / f"{s // shard_size:05d}.tar", "w") as tar:
            for k in range(s, min(n, s + shard_size)):
                key = f"{k:09d}"
                jpg = real_sized_jpeg(photos, rng)
                sizes.append(len(jpg))
                meta = json.dumps({"key": key, "status": "success", "caption": "a photo"}).encode()
                for ext, data in (("jpg", jpg), ("txt", b"a photo"), ("json", meta)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return {"images": n, "mean_jpeg_kb": round(sum(sizes) / len(sizes) / 1024, 1)}


def stream_rate(source, transform, n: int) -> float:
    """Images/s of one worker: the project's ImageStream (read, decode, crop, views), no torch
    DataLoader around it (a DataLoader worker runs exactly this loop)."""
    from enhance.data.loading import ImageStream

    stream = ImageStream(source, transform, seed=0, max_epochs=None)
    it = iter(stream)
    for _ in range(min(20, n)):  # warm-up: file handles, first shard index
        next(it)
    start = time.process_time()  # CPU seconds of this worker: a shared machine's load does not count
    for _ in range(n):
        next(it)
    return n / (time.process_time() - start)


def phase_split(source, transform, n: int) -> dict:
    """Seconds per image of each phase, run by hand with the same functions the stream calls."""
    from enhance.data.sources import decode_image

    def refs():  # fetched while the segment's shard is open, as the stream does
        for seg in source.segments(0, 0, 0, 1, True):
            yield from seg.items(0)

    times = {"read": 0.0, "decode": 0.0, "crop": 0.0, "views": 0.0}
    rng = random.Random(0)
    done = 0
    for ref in refs():
        if done == n:
            break
        done += 1
        t0 = time.process_time()
        _, data = ref.fetch()
        t1 = time.process_time()
        img = decode_image(data)
        t2 = time.process_time()
        crop = transform.crop(img, rng)
        t3 = time.process_time()
        transform.views(crop)
        t4 = time.process_time()
        for k, a, b in (("read", t0, t1), ("decode", t1, t2), ("crop", t2, t3), ("views", t3, t4)):
            times[k] += b - a
    n = done
    total = sum(times.values())
    return {k: {"ms": round(1000 * v / n, 2), "share": round(v / total, 3)} for k, v in times.items()}


class TowerOnly:
    """One view (methods whose VAE input comes from a latent cache or that need no VAE view)."""

    def __init__(self, transform):
        self.t = transform
        self.output_shapes = {"pixel_values": transform.output_shapes["pixel_values"]}

    def __call__(self, img, rng):
        return {"pixel_values": self.t.normalise(self.t.crop(img, rng))}


class StubCodec:
    """Stands in for the FLUX VAE when building a latent cache for the read benchmark: the posterior
    has the real shape (16 channels at 1/8 resolution); only the read path is timed."""

    def __init__(self):
        import torch

        class Dist:
            def __init__(self, x):
                pooled = torch.nn.functional.avg_pool2d(x, 8)
                self.mean = pooled.repeat(1, 6, 1, 1)[:, :16]
                self.logvar = self.mean * 0 - 4

        class Vae(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))

            @property
            def dtype(self):
                return torch.float32

            def encode(self, x):
                return type("Out", (), {"latent_dist": Dist(x)})()

        self.vae = Vae()


def latent_cache_rate(source, res: int, n: int, out: Path) -> float:
    from enhance.data.transforms import make_transform
    from enhance.latent_cache import (
        FORMAT_VERSION,
        CachedCropTransform,
        LatentCache,
        build_shards,
        finish_latent_cache,
    )

    spec = {
        "format": FORMAT_VERSION,
        "source": {"kind": "webdataset", "path": source.path},
        "vae": {"name_or_path": "stub", "subfolder": ""},
        "resolution": res,
        "crop_scale": [0.9, 1.0],
        "crop_ratio": [3 / 4, 4 / 3],
        "crops": 4,
        "dtype": "bfloat16",
        "seed": 0,
    }
    shards, total = build_shards(StubCodec(), source, out, spec, shard_size=256, workers=2, progress=False)
    finish_latent_cache(out, spec, shards, total)
    view = CachedCropTransform(make_transform(res), LatentCache(out, spec))
    return stream_rate(source, view, n)


def bench_images(n: int, workdir: Path) -> dict:
    from enhance.data.sources import WebDatasetSource, resolve_shards
    from enhance.data.transforms import make_transform

    shards = workdir / "shards"
    made = write_shards(shards, n)
    source = WebDatasetSource(resolve_shards(str(shards)), str(shards))
    rows = []
    for res in RESOLUTIONS:
        t = make_transform(res)
        both = stream_rate(source, t, n)
        one = stream_rate(source, TowerOnly(t), n)
        cached = latent_cache_rate(source, res, n, workdir / f"latents-{res}")
        row = {
            "resolution": res,
            "both_views_img_s": round(both, 1),
            "tower_view_img_s": round(one, 1),
            "latent_cache_img_s": round(cached, 1),
            "phases_both_views": phase_split(source, t, min(n, 200)),
        }
        for target in TARGETS:
            row[f"workers_for_{target}"] = {
                "both_views": math.ceil(target / both),
                "latent_cache": math.ceil(target / cached),
            }
        rows.append(row)
    return {"shards": made, "per_worker": rows}


# ------------------------------------------------------------------------------------ LLaVA

_QUESTIONS = [
    "What is the man on the left holding in his hand?",
    "How many people are visible in this picture?",
    "What color is the bus parked near the building?",
    "Is there a dog in the image? Answer the question using a single word or phrase.",
    "Describe the scene in detail.",
    "What is written on the sign above the door?",
    "Who is the author of this book?",
    "What type of room is shown in the photo?",
]
_WORDS = (
    "the a man woman dog cat table chair street car bus sign red blue green white black two three "
    "standing sitting holding near left right of in on with behind front large small wooden metal "
    "window door building tree sky water picture image shows appears there is are"
).split()


def mix665k_row(i: int, rng: random.Random) -> dict:
    """One row in llava_v1_5_mix665k's schema; ~6 % text-only (ShareGPT-like), the rest image rows
    with 1-8 QA turns (the published file averages ~2.4 human turns per row)."""
    if rng.random() < 0.06:
        turns = []
        for _ in range(rng.randint(1, 4)):
            turns.append({"from": "human", "value": " ".join(rng.choices(_WORDS, k=rng.randint(10, 60)))})
            turns.append({"from": "gpt", "value": " ".join(rng.choices(_WORDS, k=rng.randint(40, 300)))})
        return {"id": f"sharegpt_{i}", "model": "", "conversations": turns}
    folder = rng.choice(
        ["coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images", "vg/VG_100K"]
    )
    turns = []
    for j in range(min(8, max(1, round(rng.expovariate(1 / 2.4))))):
        q = rng.choice(_QUESTIONS)
        turns.append({"from": "human", "value": ("<image>\n" + q) if j == 0 else q})
        turns.append({"from": "gpt", "value": " ".join(rng.choices(_WORDS, k=rng.randint(1, 40)))})
    return {"id": f"{i:012d}", "image": f"{folder}/{i:012d}.jpg", "conversations": turns}


def write_mix665k(path: Path, rows: int) -> dict:
    rng = random.Random(0)
    with open(path, "w") as f:
        f.write("[")
        for i in range(rows):
            if i:
                f.write(", ")
            json.dump(mix665k_row(i, rng), f)
        f.write("]")
    return {"rows": rows, "file_mb": round(path.stat().st_size / 2**20, 1)}


_LOAD_CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
def status(f):
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(f + ':'):
            return int(line.split()[1]) * 1024
from llava_integration.data import RowReport, load_records
rss0 = status('VmRSS')
t0, c0 = time.perf_counter(), time.process_time()
report = RowReport()
records = load_records(sys.argv[1], 576, report)
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "rows": report.rows, "kept": report.kept,
                  "peak_rss_mb": (status('VmHWM') - rss0) / 2**20,
                  "resident_after_mb": (status('VmRSS') - rss0) / 2**20}))
"""


def train_bpe(path: Path, vocab: int = 32000):
    """A byte-level BPE of Llama's vocabulary size on the generated text, as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(1)
    texts = [" ".join(t["value"] for t in mix665k_row(i, rng)["conversations"]) for i in range(5000)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>", "<image>"])
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def bench_llava(rows: int, workdir: Path, encode_rows: int = 3000) -> dict:
    from llava_integration.data import encode, parse_records
    from llava_integration.templates import get_template

    path = workdir / "llava_v1_5_mix665k.json"
    t0 = time.perf_counter()
    made = write_mix665k(path, rows)
    made["write_seconds"] = round(time.perf_counter() - t0, 1)
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_CHILD, str(path), repo], capture_output=True, text=True, check=True
    )
    load = json.loads(proc.stdout.strip().splitlines()[-1])
    load["rows_per_cpu_s"] = round(load["rows"] / load["cpu_seconds"])
    # the index alone (parse_records over parsed JSON), and the tokenisation per worker
    rng = random.Random(2)
    sample = [mix665k_row(i, rng) for i in range(20000)]
    t0 = time.process_time()
    records = parse_records(sample, "sample", 576)
    index_rate = len(sample) / (time.process_time() - t0)
    tokenizer = train_bpe(path)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    template = get_template("vicuna_v1")
    t0 = time.process_time()
    tokens = 0
    for r in records[:encode_rows]:
        e = encode(r, tokenizer, template, image_id, 576, 2048)
        tokens += len(e.input_ids) if e else 0
    dt = time.process_time() - t0
    return {
        "file": made,
        "load_records": {k: round(v, 2) if isinstance(v, float) else v for k, v in load.items()},
        "index_rows_per_s": round(index_rate),
        "encode_rows_per_s_per_worker": round(encode_rows / dt),
        "encode_tokens_per_row": round(tokens / encode_rows),
    }


# ------------------------------------------------------------------------------------ report


def markdown(result: dict) -> str:
    out = []
    if "images" in result:
        out += [
            f"JPEGs: {result['images']['shards']['images']} in img2dataset shards, mean "
            f"{result['images']['shards']['mean_jpeg_kb']} KB, short side 300-500 px.",
            "",
            "| px | both views img/s per worker (CPU s) | tower view only | latent-cache read | phases (both views): read / decode / crop / views ms | workers for 100 img/s (both / cache) | workers for 450 img/s (both / cache) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in result["images"]["per_worker"]:
            ph = r["phases_both_views"]
            phases = " / ".join(f"{ph[k]['ms']}" for k in ("read", "decode", "crop", "views"))
            out.append(
                f"| {r['resolution']} | {r['both_views_img_s']} | {r['tower_view_img_s']} | {r['latent_cache_img_s']} | "
                f"{phases} | {r['workers_for_100']['both_views']} / {r['workers_for_100']['latent_cache']} | "
                f"{r['workers_for_450']['both_views']} / {r['workers_for_450']['latent_cache']} |"
            )
    if "llava" in result:
        r = result["llava"]
        out += [
            "",
            "| LLaVA JSON | rows | file MB | load_records s (wall / CPU) | rows per CPU s | peak RSS MB | resident after MB | index rows/s (parse only) | encode rows/s/worker | tokens/row |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| mix665k-shaped | {r['file']['rows']} | {r['file']['file_mb']} | {r['load_records']['seconds']} / "
            f"{r['load_records']['cpu_seconds']} | {r['load_records']['rows_per_cpu_s']} | {round(r['load_records']['peak_rss_mb'])} | "
            f"{round(r['load_records']['resident_after_mb'])} | {r['index_rows_per_s']} | "
            f"{r['encode_rows_per_s_per_worker']} | {r['encode_tokens_per_row']} |",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "images", "llava"], default="all")
    p.add_argument("--images", type=int, default=500, help="JPEGs generated and streamed per measurement")
    p.add_argument("--rows", type=int, default=MIX665K_ROWS, help="rows of the generated LLaVA JSON")
    p.add_argument("--workdir", default="", help="where the data is generated (default: a temp folder)")
    p.add_argument("--json", default="", help="also write the numbers here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result: dict = {}
        if args.part in ("all", "images"):
            result["images"] = bench_images(args.images, work)
        if args.part in ("all", "llava"):
            result["llava"] = bench_llava(args.rows, work)
    print(json.dumps(result, indent=1))
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
