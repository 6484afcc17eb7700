"""Zero-shot clustering of image features: how well does the global token keep classes apart?

Reconstruction-based enhancement may buy fine-grained perception (MMVP-VLM) at the cost of class
separability. This benchmark measures the second: the encoder's global image embedding (the
same token :meth:`eval.clip.encoders.DualEncoder.encode_images` returns and the enhancer
conditions on), L2-normalised, clustered by k-means with k = the number of classes in the
evaluated images, scored against the labels with

* NMI: normalised mutual information (scikit-learn, arithmetic normalisation);
* ACC: the fraction of images right under the best one-to-one map from clusters to classes
  (Hungarian matching, :func:`scipy.optimize.linear_sum_assignment`);
* ARI: the adjusted Rand index (scikit-learn).

Values are fractions in [0, 1], as the published tables print them.

Data (one :class:`ClusterSet` per dataset), always from local files:

* a folder saved by ``datasets`` (``save_to_disk``) or holding a dataset's data files as the hub
  publishes them (``data/test-*.parquet``), read with ``datasets``, a split and two columns;
* an image folder, ``root/<class>/*.jpg`` or ``root/<split>/<class>/*.jpg`` (torchvision's
  ``ImageFolder`` layout);
* ``sklearn:digits``: scikit-learn's bundled 1,797 handwritten 8x8 digits (10 classes; real
  images that install offline; the tower's processor upscales them to its resolution).

Features are computed in batches and cached per (encoder, dataset, split, subset) under a key
that includes the encoder's weights fingerprint. The cache is written in shards, each
atomically (temporary file, then rename), and finished by writing every array and then
``manifest.json`` into a temporary folder that is renamed into place: a run killed mid-way
resumes from its last complete shard and is never read as a complete cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from genhancer.runtime.errors import UserError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SKLEARN_DIGITS = "sklearn:digits"
#: Bump when the feature definition changes (invalidates every cached feature file).
FEATURE_VERSION = 1
METRICS = ("nmi", "acc", "ari")
MANIFEST = "manifest.json"


# --- pure metrics -------------------------------------------------------------------------------


def cluster_accuracy(labels: Sequence[int] | np.ndarray, clusters: Sequence[int] | np.ndarray) -> float:
    """Fraction of items right under the best one-to-one cluster -> class map (Hungarian).

    With more clusters than classes (or the reverse) the unmatched ones count as wrong.
    """
    from scipy.optimize import linear_sum_assignment

    y = np.asarray(labels)
    p = np.asarray(clusters)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"labels and clusters must be 1-d of equal length, got {y.shape} and {p.shape}")
    if y.size == 0:
        return 0.0
    _, yi = np.unique(y, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    counts = np.zeros((pi.max() + 1, yi.max() + 1), dtype=np.int64)
    np.add.at(counts, (pi, yi), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum()) / y.size


def clustering_scores(
    labels: Sequence[int] | np.ndarray, clusters: Sequence[int] | np.ndarray
) -> dict[str, float]:
    """``{"nmi", "acc", "ari"}`` of a clustering against the true labels (fractions)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    y, p = np.asarray(labels), np.asarray(clusters)
    return {
        "nmi": float(normalized_mutual_info_score(y, p)),
        "acc": cluster_accuracy(y, p),
        "ari": float(adjusted_rand_score(y, p)),
    }


# --- k-means ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KMeansSettings:
    """scikit-learn ``KMeans`` settings: k-means++ init, Lloyd iterations, best of ``n_init``."""

    n_init: int = 3
    max_iter: int = 300
    tol: float = 1e-4
    seed: int = 0


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.float32(1e-12))


def make_kmeans(k: int, settings: KMeansSettings = KMeansSettings()):
    """The scikit-learn estimator :func:`run_kmeans` fits (``bench/clustering_kmeans.py`` times it)."""
    from sklearn.cluster import KMeans

    return KMeans(
        n_clusters=k,
        init="k-means++",
        n_init=settings.n_init,
        max_iter=settings.max_iter,
        tol=settings.tol,
        random_state=settings.seed,
        algorithm="lloyd",
        copy_x=False,
    )


def run_kmeans(x: np.ndarray, k: int, settings: KMeansSettings = KMeansSettings()) -> np.ndarray:
    """Cluster ids ``[N]`` from k-means on ``x`` (float32 kept: 50k x 1024 is 200 MB, no copy)."""
    return make_kmeans(k, settings).fit_predict(np.ascontiguousarray(x, dtype=np.float32))


# --- data ---------------------------------------------------------------------------------------


@dataclass
class ClusterSet:
    """One dataset to cluster: labels of the chosen images and a way to read them in batches.

    ``read(indices)`` returns RGB PIL images for positions ``indices`` of this set (0..n-1).
    """

    name: str
    source: str
    split: str
    labels: np.ndarray
    revision: str
    read: Callable[[Sequence[int]], list[Image.Image]]
    class_count: int  # classes the dataset declares (may exceed those in a subset)

    @property
    def n(self) -> int:
        return int(self.labels.size)

    @property
    def k(self) -> int:
        """Clusters to ask k-means for: the classes present in the evaluated images."""
        return int(np.unique(self.labels).size)

    def describe(self) -> str:
        split = f":{self.split}" if self.split else ""
        return f"{self.name} ({self.source}{split}, {self.n} images, {self.k} classes)"


def balanced_subset(labels: np.ndarray, max_images: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_images`` items, spread evenly over the classes (each
    class shuffled with ``seed``, then one of each class in turn)."""
    labels = np.asarray(labels)
    if not max_images or max_images >= labels.size:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = [idx[j] for j in range(max(len(p) for p in per_class)) for idx in per_class if j < len(idx)]
    return np.sort(np.asarray(order[:max_images], dtype=np.int64))


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _class_dirs(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that hold at least one image."""
    if not root.is_dir():
        return []
    return sorted(
        d
        for d in root.iterdir()
        if d.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir() if f.is_file())
    )


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _data_files(path: Path) -> bool:
    return any(path.rglob("*.parquet")) or any(path.rglob("*.arrow"))


@dataclass(frozen=True)
class ClusterSource:
    """Where one dataset is and how to read it (the ``clustering.datasets[i]`` config entry)."""

    name: str
    path: str
    split: str = "test"
    image_column: str = "image"
    label_column: str = "label"
    max_images: int = 0
    key: str = ""  # the config key of this entry, named in errors


def _fail(src: ClusterSource, field: str, text: str) -> UserError:
    where = f"{src.key}.{field}" if src.key else field
    return UserError(f"clustering dataset '{src.name}' ({where}): {text}")


def load_cluster_set(src: ClusterSource, seed: int = 0, limit: int | None = None) -> ClusterSet:
    """Resolve ``src`` to a :class:`ClusterSet` (labels read, images not); bad input raises a
    one-line :class:`UserError` naming the dataset and the config key. ``limit`` caps the images
    (class-balanced) but never below the class count."""
    if src.path == SKLEARN_DIGITS:
        labels, read, revision, classes = _digits()
        source = src.path
    else:
        path = Path(src.path).expanduser()
        if not src.path or not path.exists():
            raise _fail(src, "path", f"path does not exist: {path}")
        if not path.is_dir():
            raise _fail(src, "path", f"{path} is a file; give the dataset folder")
        source = str(path)
        if _is_saved_dataset(path):
            labels, read, revision, classes = _hf(src, path, saved=True)
        elif src.split and _class_dirs(path / src.split):
            labels, read, revision, classes = _image_folder(path / src.split)
        elif not src.split and _class_dirs(path):
            labels, read, revision, classes = _image_folder(path)
        elif _data_files(path):
            labels, read, revision, classes = _hf(src, path, saved=False)
        elif splits := [d.name for d in sorted(path.iterdir()) if _class_dirs(d)]:
            raise _fail(src, "split", f"split '{src.split}' not found: {path} has split folders {splits}")
        elif _class_dirs(path):
            raise _fail(
                src,
                "split",
                f"split '{src.split}' not found: {path} is an image folder of classes without a "
                f"'{src.split}' folder (set split='' to use the folder itself)",
            )
        else:
            raise _fail(
                src, "path", f"{path} is neither an image folder (<class>/*.jpg) nor a `datasets` folder"
            )
    cap = src.max_images
    if limit:  # --limit (quick checks) shrinks a set, but keeps at least one image per class
        cap = min(cap or labels.size, max(limit, classes))
    keep = balanced_subset(labels, cap, seed)
    if keep.size != labels.size:
        revision = f"{revision}+subset{keep.size}@{seed}"
    sub_labels = labels[keep]
    k = int(np.unique(sub_labels).size)
    if sub_labels.size < max(classes, k) or k < 2:
        what = "max_images" if src.max_images else "split"
        raise _fail(
            src,
            what,
            f"{sub_labels.size} images for {max(classes, k)} classes: k-means needs at least one image "
            "per class and at least two classes",
        )

    def read_subset(idx: Sequence[int]) -> list[Image.Image]:
        return read([int(keep[i]) for i in idx])

    return ClusterSet(src.name, source, src.split, sub_labels, revision, read_subset, classes)


def _digits():
    import sklearn
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # 0..16 ink -> 0..255
    labels = np.asarray(d.target, dtype=np.int64)

    def read(idx: Sequence[int]) -> list[Image.Image]:
        return [Image.fromarray(pixels[i], mode="L").convert("RGB") for i in idx]

    return labels, read, f"sklearn-{sklearn.__version__}:digits", int(np.unique(labels).size)


def _image_folder(root: Path):
    classes = _class_dirs(root)
    files, labels = [], []
    for c, d in enumerate(classes):
        for f in sorted(d.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
                labels.append(c)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()}:{f.stat().st_size}".encode())

    def read(idx: Sequence[int]) -> list[Image.Image]:
        return [_open_rgb(files[i]) for i in idx]

    return np.asarray(labels, dtype=np.int64), read, "files:" + h.hexdigest()[:12], len(classes)


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No ``datasets`` progress bars inside (an error must stay the only line on stderr)."""
    import datasets

    was = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was:
            datasets.enable_progress_bars()


def _hf(src: ClusterSource, path: Path, saved: bool):
    import datasets

    try:
        with quiet_datasets():
            ds = _hf_open(datasets, src, path, saved)
    except UserError:
        raise
    except ValueError as exc:
        text = first_line(exc)
        if "split" in text.lower():
            raise _fail(src, "split", f"split '{src.split}' not found in {path}: {text}") from None
        raise _fail(src, "path", f"cannot read {path}: {text}") from None
    except Exception as exc:  # datasets raises many types for unreadable folders
        raise _fail(src, "path", f"cannot read {path}: {first_line(exc)}") from None
    return _hf_columns(src, path, ds)


def _hf_open(datasets, src: ClusterSource, path: Path, saved: bool):
    if saved:
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if src.split not in ds:
                raise _fail(src, "split", f"split '{src.split}' not in {path} (has {sorted(ds)})")
            ds = ds[src.split]
        return ds
    ds = datasets.load_dataset(str(path), split=src.split or None)
    if isinstance(ds, datasets.DatasetDict):
        raise _fail(src, "split", f"{path} has splits {sorted(ds)}: name one")
    return ds


def _hf_columns(src: ClusterSource, path: Path, ds):
    for field_name, column in (("image_column", src.image_column), ("label_column", src.label_column)):
        if column not in ds.column_names:
            raise _fail(src, field_name, f"column '{column}' not in {path} (columns: {ds.column_names})")
    labels = np.asarray(ds.select_columns([src.label_column]).with_format("numpy")[src.label_column])
    if labels.dtype.kind not in "iu":
        raise _fail(src, "label_column", f"column '{src.label_column}' is not integer class ids")
    names = getattr(ds.features[src.label_column], "names", None)
    images = ds.select_columns([src.image_column])

    def read(idx: Sequence[int]) -> list[Image.Image]:
        rows = images.select(list(idx))[src.image_column]
        return [im.convert("RGB") for im in rows]

    fp = getattr(ds, "_fingerprint", "") or ""
    classes = len(names) if names else int(np.unique(labels).size)
    return labels.astype(np.int64), read, f"datasets@{fp}" if fp else "datasets", classes


# --- features (cached) ----------------------------------------------------------------------------


def _spec_id(spec: str) -> str:
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec


def features_key(encoder, data: ClusterSet) -> str:
    """Cache key of ``encoder``'s features on ``data``: weights fingerprint, input size, dtype,
    dataset source/split/revision and the exact images (subset) chosen."""
    blob = {
        "v": FEATURE_VERSION,
        "encoder": {
            "spec": _spec_id(encoder.spec),
            "kind": encoder.kind,
            "revision": encoder.revision,
            "image_size": encoder.image_size,
            "eval_dtype": getattr(encoder, "eval_dtype", ""),
        },
        "data": {"source": data.source, "split": data.split, "revision": data.revision, "n": data.n},
        "labels": hashlib.sha256(np.ascontiguousarray(data.labels).tobytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load_npy(path: Path, rows: int) -> np.ndarray | None:
    """The array at ``path`` if it is complete and has ``rows`` rows, else None."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return arr if arr.ndim == 2 and arr.shape[0] == rows else None


def read_feature_cache(folder: Path, key: str, n: int) -> np.ndarray | None:
    """Features of a complete cache folder (its manifest names ``key`` and ``n`` rows), else None."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        meta = json.loads(manifest.read_text())
    except ValueError:
        return None
    if meta.get("key") != key or meta.get("n") != n:
        return None
    feats = _load_npy(folder / "features.npy", n)
    if feats is None or feats.shape[1] != meta.get("dim"):
        return None
    return feats


def encode_cached(
    encoder,
    data: ClusterSet,
    cache_root: str | Path,
    shard_size: int = 4096,
    progress: bool = False,
) -> np.ndarray:
    """Raw global tokens ``[N, D]`` (float32) of ``data``'s images, from the cache when complete.

    Layout under ``cache_root/<dataset>/``: ``<key>/`` (``features.npy``, ``labels.npy``,
    ``manifest.json``) once complete; ``<key>.partial/shard_NNNNN.npy`` while being computed.
    """
    from tqdm.auto import tqdm

    key = features_key(encoder, data)
    base = Path(cache_root) / data.name
    final = base / key
    cached = read_feature_cache(final, key, data.n)
    if cached is not None:
        return cached
    partial = base / f"{key}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=data.n, unit="img", desc=f"clustering {data.name}", disable=not progress)
    shards = []
    was = getattr(encoder, "progress", False)
    encoder.progress = False  # one bar for the whole dataset instead of one per batch
    try:
        for lo in range(0, data.n, shard_size):
            hi = min(data.n, lo + shard_size)
            f = partial / f"shard_{lo // shard_size:05d}.npy"
            arr = _load_npy(f, hi - lo)
            if arr is None:
                parts = []
                for b in range(lo, hi, encoder.batch_size):
                    idx = range(b, min(hi, b + encoder.batch_size))
                    parts.append(encoder.encode_images(data.read(idx)).numpy().astype(np.float32))
                    bar.update(len(idx))
                arr = np.concatenate(parts)
                _save_npy_atomic(f, arr)
            else:
                bar.update(hi - lo)
            shards.append(arr)
    finally:
        encoder.progress = was
        bar.close()
    feats = np.concatenate(shards)
    tmp = base / f"{key}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_npy_atomic(tmp / "features.npy", feats)
    _save_npy_atomic(tmp / "labels.npy", data.labels)
    manifest = {
        "key": key,
        "n": data.n,
        "dim": int(feats.shape[1]),
        "dataset": data.describe(),
        "revision": data.revision,
        "encoder": encoder.spec,
        "encoder_revision": encoder.revision,
        "feature": "global image embedding (DualEncoder.encode_images), float32, not normalised",
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks it complete
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    shutil.rmtree(partial, ignore_errors=True)
    return feats


def evaluate_clustering(
    encoder,
    data: ClusterSet,
    settings: KMeansSettings,
    cache_root: str | Path,
    shard_size: int = 4096,
    progress: bool = False,
) -> dict[str, float]:
    """NMI / ACC / ARI of k-means (k = classes present) on the L2-normalised global tokens."""
    feats = l2_normalise(encode_cached(encoder, data, cache_root, shard_size, progress))
    return clustering_scores(data.labels, run_kmeans(feats, data.k, settings))


def average_scores(per_dataset: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the datasets (the published tables' "Avg" column)."""
    if not per_dataset:
        return {}
    return {m: float(np.mean([s[m] for s in per_dataset.values()])) for m in METRICS}
