"""Zero-shot clustering: NMI / ACC / ARI by hand, k-means, the loaders on every layout, bad input,
and the feature cache (reuse, a killed run resumed, a folder without a manifest ignored)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eval.clip.clustering import (
    ClusterSource,
    KMeansSettings,
    average_scores,
    balanced_subset,
    cluster_accuracy,
    clustering_scores,
    encode_cached,
    evaluate_clustering,
    load_cluster_set,
    run_kmeans,
)
from eval.clip.fixtures import write_toy_clustering
from genhancer.runtime.errors import UserError
from genhancer.toyworld.world import SHAPES

# --- metrics by hand ----------------------------------------------------------------------------


def test_scores_by_hand():
    # classes 0 0 0 | 1 1 1; clusters 0 0 1 | 1 1 1: contingency [[2, 1], [0, 3]]
    y = [0, 0, 0, 1, 1, 1]
    p = [0, 0, 1, 1, 1, 1]
    # ACC: map 0->0, 1->1: 2 + 3 right of 6
    # ARI: sum C(n_ij, 2) = 1 + 3 = 4; rows C(3,2)*2 = 6; columns C(2,2) + C(4,2) = 7; C(6,2) = 15
    expected_index = 6 * 7 / 15
    ari = (4 - expected_index) / ((6 + 7) / 2 - expected_index)
    # NMI (arithmetic): MI / mean(H(y), H(p)), natural logs
    mi = (
        (2 / 6) * math.log((2 / 6) / (3 / 6 * 2 / 6))
        + (1 / 6) * math.log((1 / 6) / (3 / 6 * 4 / 6))
        + (3 / 6) * math.log((3 / 6) / (3 / 6 * 4 / 6))
    )
    h_y = math.log(2)
    h_p = -(2 / 6) * math.log(2 / 6) - (4 / 6) * math.log(4 / 6)
    want = {"nmi": mi / ((h_y + h_p) / 2), "acc": 5 / 6, "ari": ari}
    assert clustering_scores(y, p) == pytest.approx(want)
    assert ari == pytest.approx(1.2 / 3.7)
    # renaming the clusters changes nothing (ACC included: the matching sees through it)
    assert clustering_scores(y, [5 if c == 0 else 9 for c in p]) == pytest.approx(want)


def test_a_permuted_perfect_clustering_scores_one():
    y = [0, 0, 1, 1, 2, 2]
    assert clustering_scores(y, [2, 2, 0, 0, 1, 1]) == pytest.approx({"nmi": 1.0, "acc": 1.0, "ari": 1.0})
    # plain agreement (cluster id == label) would be 0 here
    assert np.mean(np.array(y) == np.array([2, 2, 0, 0, 1, 1])) == 0.0


def test_accuracy_matches_one_to_one_not_by_majority():
    # clusters 0 and 1 both hold class 0; majority voting would say 6/6, a bijection allows 4/6
    assert cluster_accuracy([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(4 / 6)


def test_average_is_per_metric_mean():
    avg = average_scores(
        {"a": {"nmi": 0.2, "acc": 0.4, "ari": 0.0}, "b": {"nmi": 0.6, "acc": 0.8, "ari": 1.0}}
    )
    assert avg == pytest.approx({"nmi": 0.4, "acc": 0.6, "ari": 0.5})


def test_kmeans_finds_separated_blobs_and_is_seeded():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:4] * 10
    labels = np.repeat(np.arange(4), 25)
    x = centres[labels] + rng.standard_normal((100, 8)).astype(np.float32)
    settings = KMeansSettings(n_init=2, seed=1)
    pred = run_kmeans(x, 4, settings)
    assert clustering_scores(labels, pred) == pytest.approx({"nmi": 1.0, "acc": 1.0, "ari": 1.0})
    assert (run_kmeans(x, 4, settings) == pred).all()


def test_balanced_subset_spreads_over_classes():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    keep = balanced_subset(labels, 6, seed=0)
    assert sorted(np.bincount(labels[keep]).tolist()) == [2, 2, 2]
    assert (keep == np.sort(keep)).all() and (balanced_subset(labels, 6, seed=0) == keep).all()
    assert balanced_subset(labels, 0, 0).size == 20 and balanced_subset(labels, 50, 0).size == 20


# --- loaders ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    """The toy shapes in both layouts (4 classes x 3 images, 32 px) and as a save_to_disk folder."""
    import datasets

    root = tmp_path_factory.mktemp("clustering")
    write_toy_clustering(root / "parquet", seed=3, image_size=32, per_class=3)
    write_toy_clustering(root / "folder", seed=3, image_size=32, per_class=3, layout="imagefolder")
    ds = datasets.load_dataset(str(root / "parquet"), split="test")
    datasets.DatasetDict({"validation": ds.rename_column("label", "fine_label")}).save_to_disk(
        str(root / "saved")
    )
    return root


def _src(path, split="test", **kw):
    return ClusterSource("shapes", str(path), split, key="clustering.datasets[1]", **kw)


def test_every_layout_reads_the_same_labels(shapes_root):
    want = np.repeat(np.arange(4), 3)
    parquet = load_cluster_set(_src(shapes_root / "parquet"))
    folder = load_cluster_set(_src(shapes_root / "folder"))
    saved = load_cluster_set(_src(shapes_root / "saved", "validation", label_column="fine_label"))
    for s in (parquet, folder, saved):
        assert s.n == 12 and s.k == 4 and s.class_count == len(SHAPES)
        assert (s.labels == want).all()
        images = s.read([0, 11])
        assert [im.size for im in images] == [(32, 32), (32, 32)] and images[0].mode == "RGB"


def test_sklearn_digits_is_a_real_labelled_set():
    s = load_cluster_set(ClusterSource("digits", "sklearn:digits", ""))
    assert s.n == 1797 and s.k == 10 and np.bincount(s.labels).min() >= 170
    im = s.read([0])[0]
    from sklearn.datasets import load_digits

    raw = load_digits().images[0]  # ink 0..16 -> 0..255, grey in all three channels
    assert im.size == (8, 8) and im.mode == "RGB"
    assert (np.asarray(im)[..., 0] == np.rint(raw * 255 / 16)).all() and (
        np.asarray(im)[..., 2] == np.asarray(im)[..., 0]
    ).all()
    sub = load_cluster_set(ClusterSource("digits", "sklearn:digits", "", max_images=50))
    assert sub.n == 50 and np.bincount(sub.labels).tolist() == [5] * 10
    assert (
        "subset50" in sub.revision
        and load_cluster_set(ClusterSource("d", "sklearn:digits", ""), limit=20).n == 20
    )
    # --limit never drops below one image per class (a quick check must still cluster)
    assert load_cluster_set(ClusterSource("d", "sklearn:digits", ""), limit=3).n == 10


@pytest.mark.parametrize(
    "kwargs, key, text",
    [
        ({"path": "missing"}, "clustering.datasets[1].path", "does not exist"),
        ({"split": "train"}, "clustering.datasets[1].split", "split 'train' not found"),
        ({"label_column": "fine"}, "clustering.datasets[1].label_column", "column 'fine' not in"),
        ({"image_column": "img"}, "clustering.datasets[1].image_column", "column 'img' not in"),
        ({"max_images": 3}, "clustering.datasets[1].max_images", "3 images for 4 classes"),
    ],
)
def test_bad_input_names_the_dataset_and_the_key(shapes_root, kwargs, key, text):
    kw = {"split": "test", **kwargs}
    path = shapes_root / kw.pop("path", "parquet")
    with pytest.raises(UserError) as exc:
        load_cluster_set(_src(path, **kw))
    msg = str(exc.value)
    assert msg.startswith(f"clustering dataset 'shapes' ({key}): ") and text in msg and "\n" not in msg


def test_image_folder_split_errors(shapes_root):
    with pytest.raises(UserError, match=r"\.split\): split 'val' not found: .* has split folders \['test'\]"):
        load_cluster_set(_src(shapes_root / "folder", "val"))
    with pytest.raises(UserError, match=r"split 'nope' not in .*'validation'"):
        load_cluster_set(_src(shapes_root / "saved", "nope"))


def test_fewer_images_than_classes_is_refused(tmp_path):
    write_toy_clustering(tmp_path / "one", per_class=1, image_size=16)  # 4 images, 4 classes: fine
    assert load_cluster_set(_src(tmp_path / "one")).k == 4
    with pytest.raises(UserError, match=r"\.max_images\): 2 images for 4 classes"):
        load_cluster_set(_src(tmp_path / "one", max_images=2))


# --- features and the cache ------------------------------------------------------------------------


_PRIMARIES = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230), "yellow": (230, 230, 20)}
_PRIMARIES.update({"purple": (230, 20, 230), "cyan": (20, 230, 230)})


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    """6 colour classes x 4 flat images (small per-image jitter) as an image folder: the mean
    colour separates them, so k-means on it must be perfect."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours") / "colours"
    rng = np.random.default_rng(0)
    for name, rgb in _PRIMARIES.items():
        (root / name).mkdir(parents=True)
        for i in range(4):
            c = tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-15, 16, 3), 0, 255))
            Image.new("RGB", (16, 16), c).save(root / name / f"{i}.png")
    return load_cluster_set(ClusterSource("colours", str(root), ""))


def _mean_rgb(im):
    return (np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) / 255.0).tolist()


class Counting:
    """Wraps a FakeEncoder: counts encoded images, optionally fails after ``fail_after`` calls."""

    def __init__(self, fake, fail_after=None):
        self.fake, self.fail_after, self.images, self.calls = fake, fail_after, 0, 0

    def __getattr__(self, name):
        return getattr(self.fake, name)

    def __setattr__(self, name, value):
        if name in ("fake", "fail_after", "images", "calls"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.fake, name, value)

    def encode_images(self, images, desc="images"):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        self.images += len(images)
        return self.fake.encode_images(images, desc)


@pytest.fixture()
def colour_encoder(fake_encoder):
    def make(fail_after=None):
        enc = fake_encoder(_mean_rgb, lambda t: [0.0, 0.0, 0.0])
        enc.batch_size = 4
        return Counting(enc, fail_after)

    return make


def test_mean_colour_features_cluster_the_colour_set_perfectly(colour_set, colour_encoder, tmp_path):
    assert colour_set.k == len(_PRIMARIES)
    scores = evaluate_clustering(colour_encoder(), colour_set, KMeansSettings(n_init=3), tmp_path)
    assert scores == pytest.approx({"nmi": 1.0, "acc": 1.0, "ari": 1.0})


def test_features_are_cached_and_reused(colour_set, colour_encoder, tmp_path):
    first = colour_encoder()
    a = encode_cached(first, colour_set, tmp_path, shard_size=8)
    assert first.images == 24 and a.shape == (24, 3) and a.dtype == np.float32
    again = colour_encoder()
    assert (encode_cached(again, colour_set, tmp_path, shard_size=8) == a).all() and again.images == 0
    (folder,) = [p for p in (tmp_path / "colours").iterdir()]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (
        manifest["n"] == 24
        and manifest["dim"] == 3
        and (np.load(folder / "labels.npy") == colour_set.labels).all()
    )


def test_a_killed_run_resumes_from_its_last_shard_and_is_never_read_as_complete(
    colour_set, colour_encoder, tmp_path
):
    clean = encode_cached(colour_encoder(), colour_set, tmp_path / "clean", shard_size=8)
    killed = colour_encoder(fail_after=3)  # batches of 4, shards of 8: shard 0 written, shard 1 half
    with pytest.raises(KeyboardInterrupt):
        encode_cached(killed, colour_set, tmp_path / "c", shard_size=8)
    (partial,) = (tmp_path / "c" / "colours").iterdir()
    assert partial.name.endswith(".partial") and sorted(f.name for f in partial.iterdir()) == [
        "shard_00000.npy"
    ]
    resumed = colour_encoder()
    out = encode_cached(resumed, colour_set, tmp_path / "c", shard_size=8)
    assert resumed.images == 16 and (out == clean).all()
    assert [p.name.endswith(".partial") for p in (tmp_path / "c" / "colours").iterdir()] == [False]


def test_a_cache_folder_without_its_manifest_is_recomputed(colour_set, colour_encoder, tmp_path):
    encode_cached(colour_encoder(), colour_set, tmp_path, shard_size=8)
    (folder,) = (tmp_path / "colours").iterdir()
    (folder / "manifest.json").unlink()
    (folder / "features.npy").write_bytes(b"truncated")
    again = colour_encoder()
    encode_cached(again, colour_set, tmp_path, shard_size=8)
    assert again.images == 24 and (folder / "manifest.json").is_file()


def test_another_encoder_or_subset_gets_its_own_cache(colour_set, colour_encoder, fake_encoder, tmp_path):
    encode_cached(colour_encoder(), colour_set, tmp_path)
    other = fake_encoder(lambda im: _mean_rgb(im)[::-1], lambda t: [0.0, 0.0, 0.0])
    other.revision = "other-weights"
    flipped = encode_cached(Counting(other), colour_set, tmp_path)
    assert flipped[0].tolist() == encode_cached(colour_encoder(), colour_set, tmp_path)[0].tolist()[::-1]
    assert len(list((tmp_path / "colours").iterdir())) == 2


def test_real_encoders_of_every_kind_give_their_global_token(
    colour_set, open_clip_export, tmp_model_dirs, tmp_path
):
    from eval.clip.encoders import load_encoder

    for spec, dim in (
        (str(open_clip_export), 16),
        (str(tmp_model_dirs.clip), 24),
        (str(tmp_model_dirs.siglip), None),
    ):
        enc = load_encoder(spec, "cpu", batch_size=8)
        feats = encode_cached(enc, colour_set, tmp_path)
        want = enc.encode_images(colour_set.read(range(colour_set.n)))
        assert feats.shape == tuple(want.shape) and np.allclose(feats, want.numpy(), atol=1e-5)
        assert dim is None or feats.shape[1] == dim  # open_clip embed_dim; CLIP: the projected width
        scores = evaluate_clustering(enc, colour_set, KMeansSettings(n_init=1), tmp_path)
        assert all(0.0 <= v <= 1.0 for k, v in scores.items() if k != "ari")
