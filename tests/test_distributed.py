"""Scale-out: ``accelerate launch`` on 2 CPU processes gives the images and figures of a 1-process run."""

import hashlib
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evalkit.distributed import shard_slice
from evalkit.errors import UserError
from evalkit.generators import load
from evalkit.generators.manifest import MANIFEST_NAME, read_manifest, shard_manifest_name, shard_manifests
from evalkit.generators.to_folder import generate_to_folder, merge_shard_manifests

ROOT = Path(__file__).resolve().parents[1]
FAST = {"steps": 2, "size": 32}
PROMPTS = ["a small red circle", "a blue square", "a green star", "a pink cross", "a gray ring"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as each launched process gets: on a shared 2-core machine two OpenMP threads that
    wait for a busy core make the tiny pipeline ~100x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd(tiny_sd_dir):
    return load(f"dir:{tiny_sd_dir}")


def _files(folder: Path) -> dict[str, str]:
    """sha256 of each image file on disk, by image id (from the manifest, which must not repeat an id)."""
    rows = read_manifest(folder / MANIFEST_NAME).rows
    assert len({r["id"] for r in rows}) == len(rows), "an image appears twice in the manifest"
    return {r["id"]: hashlib.sha256((folder / r["file"]).read_bytes()).hexdigest() for r in rows}


def test_shard_slices_cover_in_order():
    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            blocks = [list(range(n))[shard_slice(n, r, world)] for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    with pytest.raises(ValueError):
        shard_slice(4, 2, 2)


def test_shards_make_the_same_images_and_merge_into_one_manifest(sd, tmp_path):
    """Two shards written one after the other (as two processes would) equal an unsharded run, byte for byte."""
    whole = generate_to_folder(sd, PROMPTS, tmp_path / "one", n=2, batch_size=3, params=FAST)
    out = tmp_path / "two"
    parts = [generate_to_folder(sd, PROMPTS, out, n=2, batch_size=3, params=FAST, shard=(r, 2)) for r in (0, 1)]
    # 10 images in 4 batches of 3, 3, 3, 1: rank 0 takes the first two batches, rank 1 the rest
    assert [p.generated for p in parts] == [6, 4] and [p.manifest.name for p in parts] == [
        shard_manifest_name(0),
        shard_manifest_name(1),
    ]
    assert [r["id"] for p in parts for r in p.rows] == [r["id"] for r in whole.rows]
    assert not (out / MANIFEST_NAME).exists() and len(shard_manifests(out)) == 2
    assert merge_shard_manifests(out) == {}
    assert shard_manifests(out) == [] and _files(out) == _files(tmp_path / "one")
    assert [r["id"] for r in read_manifest(out / MANIFEST_NAME).rows] == [r["id"] for r in whole.rows]
    again = generate_to_folder(sd, PROMPTS, out, n=2, batch_size=3, params=FAST, shard=(1, 2))
    assert (again.generated, again.reused) == (0, 4)


def test_unsharded_run_absorbs_a_killed_distributed_run(sd, tmp_path):
    """Leftovers of a killed 2-process run: rank 0 done but its manifest's last line torn, rank 1 never started.
    One process picks up every finished image, regenerates the rest and leaves one manifest."""
    clean = generate_to_folder(sd, PROMPTS, tmp_path / "clean", n=2, batch_size=3, params=FAST)
    out = tmp_path / "killed"
    generate_to_folder(sd, PROMPTS, out, n=2, batch_size=3, params=FAST, shard=(0, 2))
    shard0 = out / shard_manifest_name(0)
    shard0.write_bytes(shard0.read_bytes() + b'{"id": "half a ro')
    resumed = generate_to_folder(sd, PROMPTS, out, n=2, batch_size=3, params=FAST)
    assert (resumed.generated, resumed.reused) == (4, 6) and resumed.dropped == {"torn last line": 1}
    assert shard_manifests(out) == [] and _files(out) == _files(tmp_path / "clean")
    assert [r["id"] for r in resumed.rows] == [r["id"] for r in clean.rows]


def test_a_shard_resumes_after_its_torn_line_and_locks_its_folder(sd, tmp_path):
    import fcntl

    generate_to_folder(sd, PROMPTS, tmp_path, n=1, batch_size=2, params=FAST, shard=(1, 2))
    own = tmp_path / shard_manifest_name(1)
    rows = own.read_bytes().splitlines(keepends=True)
    own.write_bytes(b"".join(rows[:-1]) + rows[-1][:10])  # the last batch's line torn by a kill
    again = generate_to_folder(sd, PROMPTS, tmp_path, n=1, batch_size=2, params=FAST, shard=(1, 2))
    assert (again.generated, again.reused) == (1, 2) and own.read_bytes().endswith(b"\n")
    assert len(read_manifest(own).rows) == 3 and not read_manifest(own).dropped
    with open(tmp_path / ".generate.lock", "w") as f:  # a shard writing blocks an unsharded writer...
        fcntl.flock(f, fcntl.LOCK_SH)
        with pytest.raises(UserError, match="another process"):
            generate_to_folder(sd, PROMPTS, tmp_path, n=1, batch_size=2, params=FAST)
        with pytest.raises(UserError, match="another process"):
            merge_shard_manifests(tmp_path)
    with open(tmp_path / ".generate.shard1.lock", "w") as f:  # ...and a second copy of the same shard
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another process"):
            generate_to_folder(sd, PROMPTS, tmp_path, n=1, batch_size=2, params=FAST, shard=(1, 2))


# -- end to end: python -m evalkit run vs accelerate launch --num_processes 2 -m evalkit run ----------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recipe(d: Path, tiny_sd_dir: Path, tiny_clip) -> Path:
    recipe = {
        "name": "dist",
        # more images than the judge's 32 feature dimensions: full-rank covariances, so FID is well conditioned
        "prompts": "shapes:12:0:test",
        "reference": {"source": "shapes:48:1:test"},
        "generators": [{"spec": f"dir:{tiny_sd_dir}", "name": "sd", "params": {"steps": 2, "size": 32}}],
        "metrics": ["fid", "kid", "cmmd", "pr", "clip", "oracle", "speed"],
        "extractors": [f"judge:{tiny_clip.dir}"],
        "images_per_prompt": 3,
        "batch_size": 8,  # 36 images in 5 batches: rank 0 makes 2 batches, rank 1 makes 3
        "output_dir": str(d / "out"),
        "db": str(d / "results.db"),
    }
    path = d / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _results(db: Path) -> tuple[int, list[tuple]]:
    con = sqlite3.connect(db)
    try:
        runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        rows = con.execute("SELECT generator, metric, category, extractor, value, n FROM results").fetchall()
    finally:
        con.close()
    return runs, rows


def test_two_process_launch_matches_one_process_run(tmp_path, tiny_sd_dir, tiny_clip):
    """The 2-process run is first killed on rank 1 after its first batch (rank 0 must not hang: the launch ends),
    then resumed with the same launch; it ends with the images and figures of one uninterrupted process."""
    dirs = {name: tmp_path / name for name in ("one", "two")}

    def launch(name: str, processes: int, **env_extra: str) -> subprocess.CompletedProcess:
        d = dirs[name]
        recipe = _recipe(d, tiny_sd_dir, tiny_clip)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "EVALKIT_CACHE": str(d / "cache"), "EVALKIT_PROGRESS": "0",
               "HF_HOME": str(d / "hf"),  # no user accelerate config can change the launch
               # accelerate gives each process one thread; batched CPU kernels round differently with another
               # thread count, so the one-process run uses one thread too for byte-identical images
               "OMP_NUM_THREADS": "1", **env_extra}  # fmt: skip
        cmd = [sys.executable, "-m", "evalkit", "run", str(recipe)]
        if processes > 1:
            accelerate = Path(sys.executable).parent / "accelerate"
            cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                   "-m", "evalkit", "run", str(recipe)]  # fmt: skip
        return subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=600)

    for d in dirs.values():
        d.mkdir()
    one = launch("one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    folder = {name: d / "out/images/sd" for name, d in dirs.items()}

    killed = launch("two", 2, EVALKIT_KILL_AT="generate:sd:8", EVALKIT_KILL_RANK="1")
    assert killed.returncode != 0
    done = sum(len(read_manifest(p).rows) for p in shard_manifests(folder["two"]))
    assert 8 <= done < 36  # rank 1's first batch, and whatever rank 0 finished before the launcher stopped it

    two = launch("two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count(f"generated {36 - done} images, reused {done};") == 1, two.stdout
    assert "distributed: 2 processes" in two.stdout
    assert shard_manifests(folder["two"]) == []
    assert len(_files(folder["two"])) == 36 and _files(folder["two"]) == _files(folder["one"])

    (runs1, rows1), (runs2, rows2) = _results(dirs["one"] / "results.db"), _results(dirs["two"] / "results.db")
    assert runs1 == runs2 == 1 and len(rows2) == len({r[:4] for r in rows2}) == len(rows1)
    ref = {r[:4]: r[4:] for r in rows1}
    fid_key = next(k for k in ref if k[1] == "fid")
    fid1, fid2 = ref[fid_key][0], {r[:4]: r[4:] for r in rows2}[fid_key][0]
    assert fid1 > 0 and abs(fid2 - fid1) <= 1e-9 * fid1
    timing = {"images_per_s", "latency_p50_s", "latency_p95_s"}
    for *key, value, n in rows2:
        key = tuple(key)
        if key[1] in timing:  # measured per process: present, positive, over all 36 images
            assert value > 0 and n == 36
            continue
        assert n == ref[key][1] and value == pytest.approx(ref[key][0], rel=1e-9, abs=1e-12), key
    reports = [line.split(": ", 1)[1] for line in two.stdout.splitlines() if line.startswith("report: ")]
    assert len(reports) == 1 and Path(dirs["two"], reports[0]).is_file()  # written once, by rank 0
