"""Write shapes-world samples as a LAION-format subset: one parquet file and
img2dataset-layout webdataset shards. Same arguments, same bytes."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..utils import atomic_write_bytes, progress
from .render import png_bytes, render
from .world import Sample, sample

PARQUET_NAME = "shapes.parquet"
SHARD_DIR = "shards"
SHARD_SIZE = 1000


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_subset(samples: Iterable[Sample], out: str | Path, size: int = 64, shard_size: int = SHARD_SIZE) -> Path:
    """Render ``samples`` into ``out``; returns the parquet path."""
    out = Path(out)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    cols: dict[str, list] = {
        k: [] for k in ("key", "caption", "width", "height", "image", "category", "split", "spec", "scene")
    }
    samples = list(samples)
    for s in progress(samples, desc="render"):
        cols["key"].append(s.key)
        cols["caption"].append(s.caption)
        cols["width"].append(size)
        cols["height"].append(size)
        cols["image"].append(png_bytes(render(s.scene, size)))
        cols["category"].append(s.spec.category)
        cols["split"].append(s.split)
        cols["spec"].append(json.dumps(s.spec.to_dict(), sort_keys=True))
        cols["scene"].append(json.dumps(s.scene.to_dict(), sort_keys=True))
    schema = pa.schema(
        [("key", pa.string()), ("caption", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
         ("image", pa.binary()), ("category", pa.string()), ("split", pa.string()),
         ("spec", pa.string()), ("scene", pa.string())]
    )  # fmt: skip
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(cols, schema=schema), buf, compression="zstd")
    parquet = out / PARQUET_NAME
    atomic_write_bytes(parquet, buf.getvalue().to_pybytes())

    for start in range(0, len(samples), shard_size):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(start + shard_size, len(samples))):
                key = cols["key"][i]
                # spec/scene stay JSON strings: nested nulls break datasets' type inference
                meta = {
                    k: cols[k][i] for k in ("key", "caption", "width", "height", "category", "split", "spec", "scene")
                }
                meta["status"] = "success"
                _tar_member(tar, f"{key}.png", cols["image"][i])
                _tar_member(tar, f"{key}.txt", cols["caption"][i].encode())
                _tar_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        atomic_write_bytes(out / SHARD_DIR / f"{start // shard_size:05d}.tar", raw.getvalue())
    return parquet


def make_subset(n: int, seed: int, out: str | Path, size: int = 64, split: str = "train", categories=None) -> Path:
    """``python -m evalkit shapes make`` as a function."""
    return write_subset(sample(n, seed=seed, split=split, categories=categories), out, size=size)
