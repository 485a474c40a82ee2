"""Time evalkit's one-pass scoring against torchmetrics' one-network-pass-per-metric, with one extractor.

    python benchmarks/bench_metrics.py [--n 2000] [--extractor judge] [--batch-size 64]

Data: N reference shapes renders (a LAION-format subset: parquet + shards) and N generated images
(other renders, Gaussian noise level 1, in a folder with manifest.jsonl and prompts). The extractor is
loaded once, before any timing, and the same module serves every contestant:

  (a) ``evalkit.score.score`` computing clip + fid + kid + cmmd: decode, preprocess, one forward per image,
      text embeddings, metrics. Cold: empty feature and datasets caches. Warm: the same call again in a
      fresh ``FeatureCache`` over the same folder (features come from disk, no network runs).
  (b) torchmetrics: ``FrechetInceptionDistance(feature=M)`` and ``KernelInceptionDistance(feature=M)``
      (M = the extractor wrapped to take uint8 images), each with its own forward passes, plus
      ``CLIPScore`` through its callable route with the same open_clip model; images are decoded once.
  (c) the extractor's raw forward over the same preprocessed tensors (2N images, same batch size).

Prints wall and CPU times, the ratios b/a (cold, warm) and a_cold/c, and the metric values side by side.
Targets: b/a >= 3 cold, >= 20 warm; a_cold <= 1.25 c.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evalkit.disturb import apply  # noqa: E402
from evalkit.features import FeatureCache, FeatureExtractor, get_extractor  # noqa: E402
from evalkit.score import score  # noqa: E402
from evalkit.shapes import render, sample  # noqa: E402
from evalkit.shapes.subset import make_subset  # noqa: E402

METRICS = ("clip", "fid", "kid", "cmmd")
KID_SUBSETS = 100


class Timer:
    """Wall and process CPU seconds of a block (CPU time is steadier on a shared machine)."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0


# ---------------------------------------------------------------------------- data


def make_data(root: Path, n: int) -> tuple[Path, Path]:
    """Reference subset and generated folder under ``root`` (reused when a previous run made them)."""
    ref, gen = root / "ref", root / "gen"
    if (gen / "manifest.jsonl").is_file() and (ref / "shapes.parquet").is_file():
        return gen, ref
    make_subset(n, seed=1, out=ref)
    gen.mkdir(parents=True, exist_ok=True)
    samples = sample(n, seed=2)
    images = apply("gaussian_noise", [render(s.scene) for s in samples], 1, seed=0)
    with open(gen / "manifest.jsonl", "w", encoding="utf-8") as f:
        for i, (s, im) in enumerate(zip(samples, images)):
            im.save(gen / f"{i:06d}.png")
            f.write(json.dumps({"file": f"{i:06d}.png", "prompt": s.caption, "spec": s.spec.to_dict()}) + "\n")
    return gen, ref


def decode_uint8(gen: Path, ref: Path) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Generated images + prompts and reference images as uint8 ``N×3×H×W`` (what torchmetrics takes)."""
    import pyarrow.parquet as pq

    def to_tensor(im: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)

    rows = [json.loads(line) for line in (gen / "manifest.jsonl").read_text().splitlines() if line.strip()]
    fake = torch.stack([to_tensor(Image.open(gen / r["file"])) for r in rows])
    table = pq.read_table(ref / "shapes.parquet", columns=["image"]).column("image").to_pylist()
    real = torch.stack([to_tensor(Image.open(io.BytesIO(b))) for b in table])
    return fake, [r["prompt"] for r in rows], real


# ---------------------------------------------------------------------------- torchmetrics side


class Uint8Features(torch.nn.Module):
    """The extractor's network behind torchmetrics' image interface: uint8 ``N×3×H×W`` in, features out.

    Resizes with torch (bicubic, antialiased) only when the size differs, then normalizes as the extractor
    declares; shapes renders are already square at the judge's size, so the network sees the same tensors.
    """

    def __init__(self, ext: FeatureExtractor, key: str) -> None:
        super().__init__()
        self.ext, self.key = ext, key
        self.net = ext.module  # registered, so torchmetrics sees a real module
        pp = ext.preprocess
        self.size = pp.size
        self.register_buffer("mean", torch.tensor(pp.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(pp.std).view(1, 3, 1, 1))
        self.num_features = ext.features[key]

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
        return (x / 255.0 - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ext.encode(self.pixels(x))[self.key]


class OpenCLIPForCLIPScore(torch.nn.Module):
    """``get_image_features`` / ``get_text_features`` over an open_clip model, for CLIPScore's callable route."""

    def __init__(self, ext: FeatureExtractor, images: Uint8Features) -> None:
        super().__init__()
        self.ext, self.images = ext, images
        self.config = SimpleNamespace()  # CLIPScore looks for config.text_config (a transformers CLIPModel's)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.ext.encode(pixel_values)["image"]

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        with torch.inference_mode():
            return self.ext.model.encode_text(input_ids).float()


class OpenCLIPProcessor:
    """A CLIPProcessor stand-in: uint8 image tensors → ``pixel_values``; texts → open_clip token ids."""

    def __init__(self, ext: FeatureExtractor, images: Uint8Features) -> None:
        self.ext, self.images = ext, images

    def __call__(self, images=None, text=None, **_):
        if images is not None:
            return {"pixel_values": self.images.pixels(torch.stack(list(images)))}
        ids = self.ext.tokenizer(list(text))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def run_torchmetrics(ext, fake, prompts, real, batch_size: int, with_clip: bool) -> dict[str, float]:
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance
    from torchmetrics.multimodal.clip_score import CLIPScore

    key = "image" if "image" in ext.features else "pool"
    net = Uint8Features(ext, key)
    out = {}
    fid = FrechetInceptionDistance(feature=net)
    for side, images in ((True, real), (False, fake)):
        for batch in images.split(batch_size):
            fid.update(batch, real=side)
    out["fid"] = float(fid.compute())
    kid = KernelInceptionDistance(feature=net, subsets=KID_SUBSETS, subset_size=min(1000, len(real), len(fake)))
    for side, images in ((True, real), (False, fake)):
        for batch in images.split(batch_size):
            kid.update(batch, real=side)
    torch.manual_seed(0)
    out["kid"] = float(kid.compute()[0])
    if with_clip:
        clip = CLIPScore(model_name_or_path=lambda: (OpenCLIPForCLIPScore(ext, net), OpenCLIPProcessor(ext, net)))
        for start in range(0, len(fake), batch_size):
            clip.update(fake[start : start + batch_size], prompts[start : start + batch_size])
        out["clip"] = float(clip.compute())
    return out


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="generated and reference images each (default 2000)")
    p.add_argument("--extractor", default="judge", help="feature extractor spec (default judge)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workdir", default=None, help="keep data and caches here (default: a temp folder)")
    args = p.parse_args(argv)
    os.environ.setdefault("EVALKIT_PROGRESS", "0")
    warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save")

    with contextlib.ExitStack() as stack:
        root = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        cache_root = Path(tempfile.mkdtemp(dir=root, prefix="cache-"))
        os.environ["EVALKIT_CACHE"] = str(cache_root)  # fresh datasets + feature caches: a real cold start
        load0 = os.getloadavg()
        print(f"n={args.n} per side, extractor {args.extractor}, batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()}, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")  # fmt: skip
        gen, ref = make_data(root / f"data{args.n}", args.n)
        ext = get_extractor(args.extractor)
        with_clip = ext.text_dim is not None
        metrics = [m for m in METRICS if with_clip or m != "clip"]
        ext.encode(torch.zeros(2, 3, ext.preprocess.size, ext.preprocess.size))  # warm up kernels, untimed

        # (c) raw forward over preprocessed tensors
        fake_u8, prompts, real_u8 = decode_uint8(gen, ref)
        pre = torch.stack(
            [ext.preprocess(Image.fromarray(x.permute(1, 2, 0).numpy())) for x in torch.cat([fake_u8, real_u8])]
        )
        with Timer() as c:
            for batch in pre.split(args.batch_size):
                ext.encode(batch)

        # (a) evalkit, cold then warm
        cache_dir = cache_root / "features"
        with Timer() as a_cold:
            cold = score(gen, ref, metrics, extractor=ext, batch_size=args.batch_size, cache=FeatureCache(cache_dir))
        with Timer() as a_warm:
            warm = score(gen, ref, metrics, extractor=ext, batch_size=args.batch_size, cache=FeatureCache(cache_dir))
        assert warm.cache["misses"] == 0, warm.cache

        # (b) torchmetrics, images decoded once
        with Timer() as b_decode:
            fake_u8, prompts, real_u8 = decode_uint8(gen, ref)
        with Timer() as b_metrics:
            tm = run_torchmetrics(ext, fake_u8, prompts, real_u8, args.batch_size, with_clip)
        b_wall, b_cpu = b_decode.wall + b_metrics.wall, b_decode.cpu + b_metrics.cpu
        load1 = os.getloadavg()

    print()
    print(f"{'':34}{'wall s':>9}{'cpu s':>9}")
    for label, t in (
        ("(a) evalkit, cold cache", a_cold),
        ("(a) evalkit, warm cache", a_warm),
        ("(b) torchmetrics: decode once", b_decode),
        ("(b) torchmetrics: FID + KID + CLIP", b_metrics),
        ("(c) raw forward, 2N images", c),
    ):
        print(f"{label:34}{t.wall:9.2f}{t.cpu:9.2f}")
    print(f"{'(b) torchmetrics, total':34}{b_wall:9.2f}{b_cpu:9.2f}")
    print()
    ratios = [
        ("b / a_cold", b_wall / a_cold.wall, b_cpu / a_cold.cpu, ">= 3"),
        ("b / a_warm", b_wall / a_warm.wall, b_cpu / a_warm.cpu, ">= 20"),
        ("a_cold / c", a_cold.wall / c.wall, a_cold.cpu / c.cpu, "<= 1.25"),
    ]
    print(f"{'ratio':14}{'wall':>9}{'cpu':>9}   target")
    for name, w, cpu, target in ratios:
        print(f"{name:14}{w:9.2f}{cpu:9.2f}   {target}")
    print()
    print(f"{'metric':8}{'evalkit':>14}{'torchmetrics':>14}")
    for m in metrics:
        theirs = f"{tm[m]:14.6g}" if m in tm else f"{'-':>14}"
        print(f"{m:8}{cold[m].value:14.6g}{theirs}")
    print(f"(torchmetrics CLIPScore clamps the mean, evalkit each sample; KID: the same "
          f"{KID_SUBSETS} seeded subsets, float32 features there, float64 here)")  # fmt: skip
    print(f"load average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} (cores: {os.cpu_count()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
