"""``generate_to_folder``: N images per prompt as PNGs plus ``manifest.jsonl``, batched and resumable.

The runner, the UI and ``python -m evalkit generate`` all call this. Each image is written atomically,
then its manifest row is appended and fsynced, so after a kill every row points at a complete image.
On a rerun, rows whose image still exists with the recorded sha256 are reused; a torn last line,
missing or altered images are dropped from the manifest and regenerated. Rows made with another
generator, params or seed for the same image id are an error, never silently mixed.

Distributed (``shard=(rank, world)``): the batches are cut from the full list as always, and process ``rank``
takes a contiguous block of them (``evalkit.distributed.shard_slice``), so every image comes from the same batch
as in a one-process run. Each process appends to its own ``manifest.shard<rank>.jsonl``; once all are done,
``merge_shard_manifests`` folds the shards into ``manifest.jsonl``. An unsharded call folds leftover shards (of a
killed distributed run) in first, so such a run resumes in one process or in several.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.images import reasons_text
from ..data.prompts import Prompt, PromptSet
from ..distributed import shard_slice
from ..errors import UserError
from ..utils import atomic_write_bytes, progress, sha256_bytes
from .base import Generator
from .manifest import (
    MANIFEST_NAME,
    ManifestAppender,
    png_bytes,
    read_manifest,
    rewrite_manifest,
    row_file_ok,
    shard_manifest_name,
    shard_manifests,
)

LOCK_NAME = ".generate.lock"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def derive_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of image ``image_index`` of prompt ``prompt_index`` under run seed ``seed``: a 32-bit hash, so
    raising N or adding prompts never changes the seeds (hence the images) already made.

    >>> derive_seed(0, 0, 0) == derive_seed(0, 0, 0) != derive_seed(0, 0, 1)
    True
    """
    digest = hashlib.sha256(f"evalkit-seed/{int(seed)}/{int(prompt_index)}/{int(image_index)}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def image_file_name(prompt_id: str, image_index: int) -> str:
    """A file-system-safe, collision-free PNG name for image ``image_index`` of a prompt id."""
    safe = _UNSAFE.sub("_", prompt_id).lstrip(".")[:80] or "prompt"
    if safe != prompt_id:
        safe += "-" + hashlib.sha256(prompt_id.encode()).hexdigest()[:8]
    return f"{safe}_{image_index:03d}.png"


def as_prompts(prompts: str | PromptSet | Sequence[Prompt | str]) -> list[Prompt]:
    """A prompt-set spec (``evalkit.data.prompts.load_prompts``), a PromptSet, Prompts or plain strings
    (ids ``prompt-00000``, ...)."""
    if isinstance(prompts, str):
        from ..data.prompts import load_prompts

        return list(load_prompts(prompts).prompts)
    items = list(prompts)
    return [p if isinstance(p, Prompt) else Prompt(f"prompt-{i:05d}", str(p)) for i, p in enumerate(items)]


@dataclass
class FolderResult:
    """What ``generate_to_folder`` did. ``rows`` are the manifest rows of the requested images, in
    prompt order then image order; ``dropped`` counts stale manifest rows removed, by reason. With ``shard``
    set, ``rows``, ``generated`` and ``reused`` cover that process's block of images only."""

    out: Path
    manifest: Path
    generated: int
    reused: int
    rows: list[dict[str, Any]]
    seconds: float
    dropped: dict[str, int] = field(default_factory=dict)
    shard: tuple[int, int] | None = None
    skipped_prompts: dict[str, int] = field(default_factory=dict)  # source rows without a usable prompt, by reason

    @property
    def total(self) -> int:
        return len(self.rows)

    def summary(self) -> str:
        dropped = sum(self.dropped.values())
        extra = (
            f"; dropped {dropped} stale manifest rows ({reasons_text(dict(sorted(self.dropped.items())))})"
            if dropped
            else ""
        )
        if self.skipped_prompts:
            extra += (
                f"; skipped {sum(self.skipped_prompts.values())} prompt rows ({reasons_text(self.skipped_prompts)})"
            )
        return (
            f"generated {self.generated}, reused {self.reused} of {self.total} images in {self.out} "
            f"({self.seconds:.1f} s){extra}"
        )


class _FolderLock:
    """One writer per folder: a second generate into the same folder fails at once instead of interleaving.

    The shards of a distributed run hold the folder lock shared, plus an exclusive lock of their own shard, so
    they write side by side but never next to an unsharded writer or a second copy of the same shard.
    """

    def __init__(self, out: Path, shard: int | None = None):
        self.paths = [(out / LOCK_NAME, fcntl.LOCK_EX if shard is None else fcntl.LOCK_SH)]
        if shard is not None:
            self.paths.append((out / f".generate.shard{shard}.lock", fcntl.LOCK_EX))
        self.out = out
        self._files: list = []

    def __enter__(self) -> _FolderLock:
        for path, mode in self.paths:
            f = open(path, "w")
            try:
                fcntl.flock(f, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                self.__exit__()
                raise UserError(
                    f"another process is generating into {self.out}; wait for it or use another --out"
                ) from None
            self._files.append(f)
        return self

    def __exit__(self, *exc) -> None:
        for f in reversed(self._files):
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
        self._files.clear()


def _canonical(value: Any) -> Any:
    """How a value reads back from the manifest (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


def _conflict(row: dict[str, Any], want: dict[str, Any]) -> str | None:
    for key in ("prompt", "seed", "generator", "params"):
        if row.get(key) != want[key]:
            return f"{key} {row.get(key)!r} there, {want[key]!r} now"
    return None


def _torn_tail(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")


def _load_existing(
    out: Path, manifest: Path, own: Path | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Valid rows by id (last one wins) of ``manifest`` and any shard manifests, after dropping torn lines and
    rows whose image is gone or altered.

    Unsharded (``own`` None, the caller holds the folder exclusively): everything is folded into ``manifest``,
    rewritten without the dropped rows so new rows append after complete lines only, and the shard files are
    removed. Sharded: the other files are only read (other processes may be appending to them); ``own``, this
    process's shard manifest, is rewritten when it needs it.
    """
    shards = shard_manifests(out)
    dropped: dict[str, int] = {}
    kept: dict[str, dict[str, Any]] = {}  # insertion order = manifest order; a superseding row moves to the end
    for path in [manifest, *shards]:
        read = read_manifest(path)
        for reason, count in read.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + count
        valid = []
        for row in read.rows:
            reason = row_file_ok(out, row)
            if reason is None and not isinstance(row.get("id"), str):
                reason = "row without id"
            if reason:
                dropped[reason] = dropped.get(reason, 0) + 1
            else:
                valid.append(row)
        if path == own and (len(valid) < len(read.rows) or read.dropped or _torn_tail(path)):
            rewrite_manifest(path, valid)
        for row in valid:
            if kept.pop(row["id"], None) is not None:
                dropped["superseded row"] = dropped.get("superseded row", 0) + 1
            kept[row["id"]] = row
    if own is None and (dropped or shards or _torn_tail(manifest)):
        rewrite_manifest(manifest, list(kept.values()))
        for path in shards:
            path.unlink()
    return kept, dropped


def merge_shard_manifests(out: str | Path) -> dict[str, int]:
    """Fold the shard manifests of a distributed run into ``manifest.jsonl`` (atomically) and remove them.

    Called by one process once every shard is done (it takes the folder lock exclusively, so it fails at
    once if a shard is still writing). Returns the stale rows dropped on the way, by reason.
    """
    out = Path(out)
    with _FolderLock(out):
        return _load_existing(out, out / MANIFEST_NAME)[1]


def generate_to_folder(
    generator: str | Generator,
    prompts: str | PromptSet | Sequence[Prompt | str],
    out: str | Path,
    *,
    n: int = 1,
    seed: int = 0,
    batch_size: int = 16,
    params: dict[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    shard: tuple[int, int] | None = None,
) -> FolderResult:
    """Write ``n`` images per prompt to ``out`` (PNG + ``manifest.jsonl``); resume whatever is already there.

    ``generator`` is a spec for :func:`~evalkit.generators.load` or a loaded generator; ``params`` are
    generic generation params (``steps``, ``guidance``, ``size``, ...). Image ``j`` of prompt ``i`` uses
    seed ``derive_seed(seed, i, j)``. ``on_progress(done, total)`` is called after each batch (for UIs).
    ``shard=(rank, world)``: make only process ``rank``'s block of batches, appending to its shard manifest
    (see the module docstring); call :func:`merge_shard_manifests` once all processes are done.
    Manifest rows hold id, prompt, prompt_id, category, spec, seed, image_index, generator, family,
    params, file, sha256, width, height, seconds and nfe.
    """
    if n < 1:
        raise UserError(f"n (images per prompt) must be at least 1, got {n}")
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    if isinstance(generator, str):
        from .loading import load

        generator = load(generator)
    if isinstance(prompts, str):
        from ..data.prompts import load_prompts

        prompts = load_prompts(prompts)
    skipped = prompts.skipped.as_dict() if isinstance(prompts, PromptSet) else {}
    items = as_prompts(prompts)
    if not items:
        where = f" in {prompts.name}" if isinstance(prompts, PromptSet) else ""
        raise UserError(f"no prompts to generate from{where}" + (f" ({prompts.skipped})" if skipped else ""))
    resolved = _canonical(generator.resolve_params(**(params or {})))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST_NAME
    t0 = time.perf_counter()
    own = out / shard_manifest_name(shard[0]) if shard is not None else None
    with _FolderLock(out, None if shard is None else shard[0]):
        existing, dropped = _load_existing(out, manifest, own)
        wanted: list[dict[str, Any]] = []
        for i, prompt in enumerate(items):
            for j in range(n):
                wanted.append({
                    "id": f"{prompt.id}#{j}", "prompt": prompt.text, "prompt_id": prompt.id,
                    "category": prompt.category, "spec": prompt.spec, "seed": derive_seed(seed, i, j),
                    "image_index": j, "generator": generator.name, "family": generator.family,
                    "params": resolved, "file": image_file_name(prompt.id, j),
                })  # fmt: skip
        for want in wanted:  # every process checks every image, so all of them refuse alike
            row = existing.get(want["id"])
            if row is not None and (why := _conflict(row, want)):
                raise UserError(
                    f"{out} already holds image {want['id']} made differently ({why}); "
                    "use a new output folder, or delete this one to start over"
                )
        # Batches are fixed slices of the wanted list, not of what is left to do: a resumed run (or
        # another process's shard) then batches images exactly as an uninterrupted run, and batched CPU
        # kernels, whose rounding depends on batch shape, give the same bytes.
        slices = [wanted[k : k + batch_size] for k in range(0, len(wanted), batch_size)]
        if shard is not None:
            slices = slices[shard_slice(len(slices), *shard)]
        mine = [w for s in slices for w in s]
        todo_ids = {w["id"] for w in mine if w["id"] not in existing}
        batches = [b for s in slices if (b := [w for w in s if w["id"] in todo_ids])]
        reused = len(mine) - len(todo_ids)
        done = reused
        if on_progress:
            on_progress(done, len(mine))
        predicted_nfe = generator.nfe(**resolved)
        made: dict[str, dict[str, Any]] = {}
        with ManifestAppender(own or manifest) as appender:
            bar = (
                progress(batches, desc=f"generate {generator.name}", total=len(batches), unit="batch")
                if batches
                else ()
            )
            for batch in bar:
                result = generator.generate([w["prompt"] for w in batch], [w["seed"] for w in batch], **resolved)
                batch_rows = []
                for want, image, secs, nfe in zip(batch, result.images, result.seconds, result.nfe):
                    data = png_bytes(image)
                    atomic_write_bytes(out / want["file"], data)
                    batch_rows.append(want | {
                        "sha256": sha256_bytes(data), "width": image.width, "height": image.height,
                        "seconds": round(secs, 6), "nfe": nfe if nfe is not None else predicted_nfe,
                    })  # fmt: skip
                # one write per batch: a kill leaves whole batches done or not, never half of one
                appender.append(*batch_rows)
                made |= {row["id"]: row for row in batch_rows}
                done += len(batch)
                if on_progress:
                    on_progress(done, len(mine))
    rows = [made.get(w["id"]) or existing[w["id"]] for w in mine]
    seconds = time.perf_counter() - t0
    return FolderResult(out, own or manifest, len(todo_ids), reused, rows, seconds, dropped, shard, skipped)
