"""Time evalkit's one-pass scoring against torchmetrics' one-network-pass-per-metric, with one extractor.

    python benchmarks/bench_metrics.py [--n 2000] [--extractor judge] [--batch-size 64] [--repeat 1]

Data: N reference shapes renders (a LAION-format subset: parquet + shards) and N generated images
(other renders, Gaussian noise level 1, in a folder with manifest.jsonl and prompts). The extractor is
loaded once, before any timing, and the same module serves every contestant; the libraries each side
imports (``datasets`` for evalkit's readers, torchmetrics' image and multimodal modules, which pull in
transformers) are imported before any timing too, as the extractor's kernels are warmed up:

  (a) ``evalkit.score.score`` computing clip + fid + kid + cmmd: read, decode, preprocess, one forward per
      image, text embeddings, metrics. Cold: empty feature and datasets caches. Warm: the same call again in
      a fresh ``FeatureCache`` over the same folder (features come from disk: no network runs, and images are
      found by the digest of their file bytes, so none is decoded).
  (b) torchmetrics: ``FrechetInceptionDistance(feature=M)`` and ``KernelInceptionDistance(feature=M)``
      (M = the extractor wrapped to take uint8 images), each with its own forward passes, plus
      ``CLIPScore`` through its callable route with the same open_clip model; images are decoded once, in
      batches of the same size, in the same process (same torch threads).
  (c) the extractor's raw forward over the same preprocessed tensors (2N images, same batch size); printed
      also with the text encoder's raw forward over the distinct prompts (what (a)'s CLIP score runs).

Prints wall and CPU times (the minimum over ``--repeat`` runs of each), the ratios b/a (cold, warm), a_cold/c
and a_cold/(c + text), and the metric values side by side. Targets: b/a >= 3 cold, >= 20 warm; a_cold <= 1.25 c.
On a shared machine wall time follows the load; CPU time (this process, all threads) is the steadier figure.
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
    """Wall, process CPU and calling-thread CPU seconds of a block (CPU time is steadier on a shared machine).

    ``main`` leaves out other threads: evalkit's reader thread (decoding, hashing, preprocessing) and, with more
    than one torch thread, the intra-op workers. With one torch thread it is the work on the network's thread,
    which is what wall time comes down to when the reader has a core of its own.
    """

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0, self.main0 = time.perf_counter(), time.process_time(), time.thread_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0
        self.main = time.thread_time() - self.main0


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

TEXT_BATCH = 256  # encode_texts' batch size


def import_libraries() -> None:
    """What each contestant imports on first use, loaded before timing (a one-off process cost, not scoring)."""
    import datasets  # noqa: F401  (evalkit's LAION-format reader)
    import torchmetrics.image.fid  # noqa: F401
    import torchmetrics.image.kid  # noqa: F401
    import torchmetrics.multimodal.clip_score  # noqa: F401  (imports transformers)


def best(timers: list) -> SimpleNamespace:
    """The least disturbed of repeated runs: the minimum of each figure."""
    return SimpleNamespace(**{k: min(getattr(t, k) for t in timers) for k in ("wall", "cpu", "main")})


def plus(a: SimpleNamespace, b: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(**{k: getattr(a, k) + getattr(b, k) for k in ("wall", "cpu", "main")})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="generated and reference images each (default 2000)")
    p.add_argument("--extractor", default="judge", help="feature extractor spec (default judge)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1, help="runs of each contestant; the fastest counts (default 1)")
    p.add_argument("--workdir", default=None, help="keep data and caches here (default: a temp folder)")
    args = p.parse_args(argv)
    os.environ.setdefault("EVALKIT_PROGRESS", "0")
    warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save")

    with contextlib.ExitStack() as stack:
        root = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        load0 = os.getloadavg()
        print(f"n={args.n} per side, extractor {args.extractor}, batch {args.batch_size}, "
              f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
              f"repeat {args.repeat}, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")  # fmt: skip
        gen, ref = make_data(root / f"data{args.n}", args.n)
        ext = get_extractor(args.extractor)
        with_clip = ext.text_dim is not None
        metrics = [m for m in METRICS if with_clip or m != "clip"]
        ext.encode(torch.zeros(2, 3, ext.preprocess.size, ext.preprocess.size))  # warm up kernels, untimed
        if with_clip:
            ext.encode_text(["warm up"])
        import_libraries()

        # (c) raw forward over preprocessed tensors; the text encoder over the distinct prompts
        fake_u8, prompts, real_u8 = decode_uint8(gen, ref)
        pre = torch.stack(
            [ext.preprocess(Image.fromarray(x.permute(1, 2, 0).numpy())) for x in torch.cat([fake_u8, real_u8])]
        )
        distinct = list(dict.fromkeys(prompts))
        c_runs, t_runs = [], []
        for _ in range(args.repeat):
            with Timer() as c:
                for batch in pre.split(args.batch_size):
                    ext.encode(batch)
            c_runs.append(c)
            if with_clip:
                with Timer() as t:
                    for start in range(0, len(distinct), TEXT_BATCH):
                        ext.encode_text(distinct[start : start + TEXT_BATCH])
                t_runs.append(t)
        del pre

        # (a) evalkit, cold then warm; each repeat starts from empty feature and datasets caches
        cold_runs, warm_runs = [], []
        for _ in range(args.repeat):
            cache_root = Path(tempfile.mkdtemp(dir=root, prefix="cache-"))
            os.environ["EVALKIT_CACHE"] = str(cache_root)  # fresh datasets + feature caches: a real cold start
            cache_dir = cache_root / "features"
            kw = dict(extractor=ext, batch_size=args.batch_size)
            with Timer() as a_cold:
                cold = score(gen, ref, metrics, cache=FeatureCache(cache_dir), **kw)
            with Timer() as a_warm:
                warm = score(gen, ref, metrics, cache=FeatureCache(cache_dir), **kw)
            assert warm.cache["misses"] == 0, warm.cache
            assert warm.cache.get("decoded_hits", 0) == 2 * args.n, warm.cache  # no image decoded when warm
            cold_runs.append(a_cold)
            warm_runs.append(a_warm)

        # (b) torchmetrics, images decoded once
        decode_runs, tm_runs = [], []
        for _ in range(args.repeat):
            with Timer() as b_decode:
                fake_u8, prompts, real_u8 = decode_uint8(gen, ref)
            with Timer() as b_metrics:
                tm = run_torchmetrics(ext, fake_u8, prompts, real_u8, args.batch_size, with_clip)
            decode_runs.append(b_decode)
            tm_runs.append(b_metrics)
        load1 = os.getloadavg()

    c, a_cold, a_warm = best(c_runs), best(cold_runs), best(warm_runs)
    b_decode, b_metrics = best(decode_runs), best(tm_runs)
    b = best([plus(d, m) for d, m in zip(decode_runs, tm_runs)])
    text = best(t_runs) if t_runs else SimpleNamespace(wall=0.0, cpu=0.0, main=0.0)
    c_text = plus(c, text)
    print()
    print(f"{'':40}{'wall s':>9}{'cpu s':>9}{'main-thread cpu s':>19}")
    rows = [
        ("(a) evalkit, cold cache", a_cold),
        ("(a) evalkit, warm cache", a_warm),
        ("(b) torchmetrics: decode once", b_decode),
        ("(b) torchmetrics: FID + KID + CLIP", b_metrics),
        ("(b) torchmetrics, total", b),
        ("(c) raw forward, 2N images", c),
    ]
    if with_clip:
        rows += [(f"    text forward, {len(distinct)} distinct prompts", text), ("(c) + text forward", c_text)]
    for label, t in rows:
        print(f"{label:40}{t.wall:9.2f}{t.cpu:9.2f}{t.main:19.2f}")
    print()
    ratios = [
        ("b / a_cold", b.wall / a_cold.wall, b.cpu / a_cold.cpu, ">= 3"),
        ("b / a_warm", b.wall / a_warm.wall, b.cpu / a_warm.cpu, ">= 20"),
        ("a_cold / c", a_cold.wall / c.wall, a_cold.cpu / c.cpu, "<= 1.25"),
    ]
    if with_clip:
        ratios.append(
            ("a_cold / (c + text)", a_cold.wall / c_text.wall, a_cold.cpu / c_text.cpu, "(c with the text forward)")
        )
    print(f"{'ratio':20}{'wall':>9}{'cpu':>9}   target")
    for name, w, cpu, target in ratios:
        print(f"{name:20}{w:9.2f}{cpu:9.2f}   {target}")
    if torch.get_num_threads() == 1:
        print(f"a_cold / c on the network's thread (wall given a free core for the reader): "
              f"{a_cold.main / c.main:.2f}, with the text forward {a_cold.main / c_text.main:.2f}")  # fmt: skip
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
