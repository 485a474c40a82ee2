"""evalkit.data.laion: each layout loads through datasets to the same records; filters and sampling."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from evalkit.data.laion import detect_layout, load_subset, sample_indices
from evalkit.errors import UserError
from evalkit.shapes.subset import write_subset
from evalkit.shapes.world import PromptSpec, sample

LAION_META = Path(__file__).resolve().parents[2] / "shared/data/laion_meta"


def png(w: int = 16, h: int = 16, color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def jpg(w: int = 16, h: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 10)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Keep every datasets cache of these tests under tmp_path."""
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "datasets"


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_subset(sample(12, seed=3), out, size=32, shard_size=5)
    return out


def laion_table(upper: bool, images: bool) -> pa.Table:
    names = ["URL", "TEXT", "WIDTH", "HEIGHT"] if upper else ["url", "caption", "width", "height"]
    cols = {
        names[0]: [f"https://example.com/{i}.jpg" for i in range(6)],
        names[1]: ["a red square", "", None, "a dog", "a cat", "a wide banner"],
        names[2]: [640, 32, 300, 1024, 4, 2000],
        names[3]: [480, 32, 300, 768, 4, 100],
        "similarity": [0.31, 0.35, 0.20, 0.33, 0.40, None],
        "punsafe": [0.01, 0.02, 0.9, 0.05, 0.0, 0.1],
        "pwatermark": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "AESTHETIC_SCORE": [5.0, 4.0, 6.0, 5.5, 3.0, 4.5],
        "NSFW": ["UNLIKELY"] * 6,
    }
    if images:
        cols["jpg"] = [png(), png(), png(), None, b"", png(40, 2)]
    return pa.table(cols)


# ---------------------------------------------------------------------------- parquet


@pytest.mark.parametrize("upper", [True, False])
def test_parquet_laion_columns_normalize(tmp_path, cache, upper):
    f = tmp_path / "part-00000.parquet"
    pq.write_table(laion_table(upper, images=False), f)
    sub = load_subset(f)
    assert sub.layout == "parquet" and len(sub) == 6 and not sub.has_images
    r = next(iter(sub.records(with_images=False)))
    assert (r.key, r.caption, r.url, r.width, r.height) == (
        "000000000",
        "a red square",
        "https://example.com/0.jpg",
        640,
        480,
    )
    assert (r.similarity, r.punsafe, r.pwatermark, r.aesthetic) == (0.31, 0.01, 0.1, 5.0)
    assert r.image is None and r.extra == {"NSFW": "UNLIKELY"}
    assert sub.captions() == ["a red square", "a dog", "a cat", "a wide banner"]  # empty and null left out
    with pytest.raises(UserError, match="no images"):
        next(sub.iter_images())
    assert cache.is_dir() and any(cache.iterdir())  # datasets cached under EVALKIT_CACHE, not ~


def test_parquet_with_image_bytes_counts_bad_images(tmp_path, cache):
    f = tmp_path / "with_images.parquet"
    pq.write_table(laion_table(upper=True, images=True), f)
    sub = load_subset(f)
    assert sub.has_images
    got = [(rec.key, im.size) for rec, im in sub.iter_images()]
    assert got == [("000000000", (16, 16)), ("000000001", (16, 16)), ("000000002", (16, 16))]
    assert sub.skipped.as_dict() == {"empty": 1, "missing": 1, "too_small": 1}
    assert [r.image for r in sub][3:5] == [None, b""]


def test_parquet_hf_image_struct_and_shapes_extras(tmp_path, cache, shapes_dir):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(), "path": None}, {"bytes": jpg(24, 12), "path": None}], "caption": ["a", "b"]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    sub = load_subset(tmp_path / "hf.parquet")
    assert [im.size for _, im in sub.iter_images()] == [(16, 16), (24, 12)]

    sub = load_subset(shapes_dir)  # shapes.parquet + shards/: the parquet is preferred
    assert sub.layout == "parquet" and len(sub) == 12
    r = sub[0]
    assert r.key == "train-3-000000" and r.width == r.height == 32
    assert isinstance(r.extra["spec"], dict) and isinstance(r.extra["scene"], dict)
    assert PromptSpec.from_dict(r.extra["spec"]).category == r.extra["category"]
    assert len(list(sub.iter_images())) == 12 and not sub.skipped


def test_real_laion_metadata_file(cache):
    f = LAION_META / "test_10000.parquet"
    if not f.exists():
        pytest.skip(f"real LAION metadata not found at {f} (CI expects ../shared beside the clone)")
    sub = load_subset(f)
    assert len(sub) == 10000 and not sub.has_images and "URL" in sub.columns
    caps = sub.captions()
    assert 9000 < len(caps) <= 10000 and all(c == c.strip() and c for c in caps)
    r = next(iter(sub.records(with_images=False)))
    assert r.url.startswith("http") and r.caption and r.extra == {}  # __index_level_0__ is dropped
    small = load_subset(f, n=100, seed=1)
    assert len(small) == 100 and {r.key for r in small.records(False)} <= {r.key for r in sub.records(False)}
    for name in ("sample_image.parquet", "test_bbox.parquet"):
        other = load_subset(LAION_META / name)
        assert other.captions() and other[0].url.startswith("https://")


# ---------------------------------------------------------------------------- webdataset


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def img2dataset_shard(path: Path, start: int, images: list[bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, data in enumerate(images):
            key = f"{start + i:09d}"
            meta = {
                "url": f"https://example.com/{key}.jpg",
                "caption": f"caption {key}",
                "key": key,
                "status": "success",
                "error_message": None,
                "width": 16,
                "height": 16,
                "original_width": 640,
                "original_height": 480,
                "exif": None if i % 2 else '{"Image Make": "Canon"}',
                "similarity": round(0.3 + i / 100, 2),
                "sha256": "0" * 64,
            }
            add(tar, f"{key}.jpg", data)
            add(tar, f"{key}.txt", f"caption {key}".encode())
            add(tar, f"{key}.json", json.dumps(meta).encode())


def test_img2dataset_shards(tmp_path, cache):
    shards = tmp_path / "shards"
    shards.mkdir()
    img2dataset_shard(shards / "00000.tar", 0, [jpg(), jpg(), b"\xff\xd8\xff\xe0 truncated", jpg()])
    img2dataset_shard(shards / "00001.tar", 10000, [jpg(), png(3, 3)])
    sub = load_subset(shards)
    assert sub.layout == "webdataset" and len(sub) == 6
    r = next(iter(sub.records(with_images=False)))
    assert (r.key, r.caption, r.url, r.width, r.similarity) == (
        "000000000",
        "caption 000000000",
        "https://example.com/000000000.jpg",
        16,
        0.3,
    )
    assert r.extra["original_width"] == 640 and r.extra["status"] == "success"
    keys = [rec.key for rec, _ in sub.iter_images()]
    assert keys == ["000000000", "000000001", "000000003", "000010000"]
    assert sub.skipped.as_dict() == {"too_small": 1, "truncated": 1}
    # one shard, a glob and the filter on similarity from the JSON sidecar
    assert len(load_subset(shards / "00001.tar")) == 2
    assert len(load_subset(str(shards / "*.tar"), min_similarity=0.31)) == 4


def test_shapes_shards_with_nested_json(tmp_path, cache, shapes_dir):
    sub = load_subset(shapes_dir / "shards")
    assert sub.layout == "webdataset" and len(sub) == 12
    assert len(sub.files) == 3  # shard_size=5
    by_key = {r.key: r for r in sub.records(with_images=False)}
    parquet = {r.key: r for r in load_subset(shapes_dir).records(with_images=False)}
    assert by_key.keys() == parquet.keys()
    for key, r in by_key.items():
        assert r.caption == parquet[key].caption
        assert r.extra["spec"] == parquet[key].extra["spec"] and r.extra["scene"] == parquet[key].extra["scene"]
    images = {rec.key: np.asarray(im) for rec, im in sub.iter_images()}
    for rec, im in load_subset(shapes_dir).iter_images():
        assert np.array_equal(images[rec.key], np.asarray(im))


def test_empty_or_broken_shards_are_user_errors(tmp_path, cache):
    (tmp_path / "bad.tar").write_bytes(b"definitely not a tar archive" * 40)
    with pytest.raises(UserError, match="bad.tar"):
        load_subset(tmp_path / "bad.tar")
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(UserError, match="empty"):
        load_subset(tmp_path / "empty.tar")


# ---------------------------------------------------------------------------- folders


def test_image_folder_with_txt_captions(tmp_path, cache):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    (d / "a.png").write_bytes(png(16, 16))
    (d / "a.txt").write_text("a red square\n")
    (d / "b.jpg").write_bytes(jpg(20, 10))
    (d / "sub" / "c.png").write_bytes(png(2, 2))
    (d / "sub" / "c.txt").write_text("tiny")
    (d / "broken.png").write_bytes(b"<html>oops</html>")
    sub = load_subset(d)
    assert sub.layout == "imagefolder" and len(sub) == 4
    recs = {r.key: r for r in sub.records(with_images=False)}
    assert set(recs) == {"a", "b", "broken", "sub/c"}
    assert recs["a"].caption == "a red square" and recs["b"].caption is None and recs["sub/c"].caption == "tiny"
    assert recs["a"].path == str(d / "a.png")
    got = {rec.key: im.size for rec, im in sub.iter_images()}
    assert got == {"a": (16, 16), "b": (20, 10)}
    assert sub.skipped.as_dict() == {"not_image": 1, "too_small": 1}
    assert sorted(sub.captions()) == ["a red square", "tiny"]
    # min_side without size metadata applies at decode time
    sized = load_subset(d, min_side=12)
    assert [rec.key for rec, _ in sized.iter_images()] == ["a"]
    assert sized.skipped.as_dict() == {"too_small": 2, "not_image": 1}
    assert {rec.key for rec, _ in load_subset(d, min_side=2).iter_images()} == {"a", "b", "sub/c"}


def test_image_folder_with_hf_metadata(tmp_path, cache):
    d = tmp_path / "hf"
    d.mkdir()
    for name in ("x.png", "y.png"):
        (d / name).write_bytes(png())
    rows = [{"file_name": "x.png", "text": "an x", "score": 1.5}, {"file_name": "y.png", "text": "a y", "score": 2.5}]
    (d / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sub = load_subset(d)
    assert sub.layout == "imagefolder"
    assert [(r.key, r.caption, r.extra) for r in sub.records(False)] == [
        ("x", "an x", {"score": 1.5}),
        ("y", "a y", {"score": 2.5}),
    ]


def test_manifest_folder(tmp_path, cache):
    d = tmp_path / "gen"
    d.mkdir()
    rows = [
        {"file": "000.png", "prompt": "a red circle", "seed": 0, "generator": "tiny-sd"},
        {"file": "001.png", "prompt": "a blue star", "seed": 1, "generator": "tiny-sd"},
        {"file": "002.png", "prompt": "lost", "seed": 2, "generator": "tiny-sd"},
    ]
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "000.png").write_bytes(png())
    (d / "001.png").write_bytes(png(32, 32))
    (d / "stray.png").write_bytes(png())  # not in the manifest: not part of the set
    assert detect_layout(d)[0] == "manifest"
    sub = load_subset(d)
    assert len(sub) == 3 and sub.captions() == ["a red circle", "a blue star", "lost"]
    r = sub[0]
    assert r.key == "000" and r.image == png() and r.extra == {"seed": 0, "generator": "tiny-sd"}
    assert [rec.key for rec, _ in sub.iter_images()] == ["000", "001"]
    assert sub.skipped.as_dict() == {"missing": 1}


def test_manifest_keeps_nested_and_mixed_values(tmp_path, cache):
    """A generated folder's manifest carries the shapes spec: a mixed-type relation list must come back as
    written (arrow's JSON reader would make it all strings), and a seed that is int or null stays an int."""
    d = tmp_path / "gen"
    d.mkdir()
    spec = {"objects": [{"shape": "circle", "color": "red"}, {"shape": "star"}], "relation": [0, "above", 1]}
    rows = [
        {"file": "000.png", "prompt": "a red circle above a star", "seed": 3, "spec": spec},
        {
            "file": "001.png",
            "prompt": "a star",
            "seed": None,
            "spec": {"objects": [{"shape": "star"}], "relation": None},
        },
        {"file": "002.png", "prompt": "x", "seed": 4, "spec": None, "score": 1},
        {"file": "003.png", "prompt": "y", "seed": 5, "score": 2.5},
    ]
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows:
        (d / r["file"]).write_bytes(png())
    recs = list(load_subset(d).records(False))
    assert recs[0].extra["spec"] == spec and recs[0].extra["seed"] == 3
    assert recs[1].extra["spec"]["relation"] is None and recs[1].extra.get("seed") is None
    assert [r.extra.get("score") for r in recs] == [None, None, 1.0, 2.5]
    (d / "manifest.jsonl").write_text('{"file": "000.png"}\nnot json\n')
    with pytest.raises(UserError, match="manifest.jsonl:2: not a JSON line"):
        load_subset(d)


def test_layout_errors(tmp_path, cache):
    with pytest.raises(UserError, match="no such file"):
        load_subset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no"):
        load_subset(tmp_path / "empty")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="expected a .parquet"):
        load_subset(tmp_path / "x.csv")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(UserError, match="bad.parquet"):
        load_subset(tmp_path / "bad.parquet")


# ---------------------------------------------------------------------------- filters and sampling


def test_filters_on_metadata(tmp_path, cache):
    f = tmp_path / "meta.parquet"
    pq.write_table(laion_table(upper=True, images=False), f)
    keys = lambda sub: [r.key[-1] for r in sub.records(with_images=False)]  # noqa: E731
    assert keys(load_subset(f, min_side=64)) == ["0", "2", "3", "5"]
    assert keys(load_subset(f, max_aspect=2.0)) == ["0", "1", "2", "3", "4"]
    assert keys(load_subset(f, min_similarity=0.32)) == ["1", "3", "4"]  # row 5 has no similarity
    assert keys(load_subset(f, max_punsafe=0.5)) == ["0", "1", "3", "4", "5"]
    both = load_subset(f, min_side=64, max_aspect=2.0, min_similarity=0.3, max_punsafe=0.5)
    assert keys(both) == ["0", "3"]
    assert both.filtered == {"min_side": 2, "min_similarity": 1, "max_aspect": 1} and both.n_rows == 6

    pq.write_table(pa.table({"url": ["u"], "caption": ["c"]}), tmp_path / "plain.parquet")
    with pytest.raises(UserError, match="similarity column"):
        load_subset(tmp_path / "plain.parquet", min_similarity=0.3)
    with pytest.raises(UserError, match="min_side"):
        load_subset(f, min_side=0)


def test_seeded_sample_is_deterministic_and_nested(tmp_path, cache):
    f = tmp_path / "many.parquet"
    sides = [10 + i for i in range(200)]
    pq.write_table(pa.table({"caption": [f"c{i}" for i in range(200)], "width": sides, "height": sides}), f)
    a = [r.key for r in load_subset(f, n=20, seed=5).records(False)]
    assert a == [r.key for r in load_subset(f, n=20, seed=5).records(False)]
    assert a != [r.key for r in load_subset(f, n=20, seed=6).records(False)]
    assert a == sorted(a) and len(set(a)) == 20
    assert set(a) <= {r.key for r in load_subset(f, n=50, seed=5).records(False)}
    assert len(load_subset(f, n=1000)) == 200
    # n applies after filters: all 20 kept rows pass them
    kept = load_subset(f, min_side=100, n=20, seed=0)
    assert len(kept) == 20 and all(r.width >= 100 for r in kept.records(False))
    assert sample_indices(5, None) == [0, 1, 2, 3, 4] and sample_indices(5, 0) == []
