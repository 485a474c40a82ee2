"""Speed of a generator at a batch size: images/s, per-image latency p50/p95, NFE, peak memory.

Peak memory is the process's resident-set high-water mark (Linux ``VmHWM``) during the timed
batches: it is reset first through ``/proc/self/clear_refs``, so it covers exactly the measured work,
and it counts what torch allocates natively (which ``tracemalloc`` would miss). ``peak_rss_mb`` is that
peak; ``peak_rss_delta_mb`` the peak minus the resident set just before (the memory generation itself
added). Where the reset is unavailable the figure falls back to ``ru_maxrss``, the peak since the
process started, and ``memory_method`` says so.
"""

from __future__ import annotations

import re
import resource
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from .base import Generator

_STATUS = Path("/proc/self/status")


def _status_kb(field_name: str) -> int | None:
    try:
        m = re.search(rf"^{field_name}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, kB on Linux


@dataclass
class SpeedReport:
    generator: str
    batch_size: int
    repeats: int
    images_per_second: float
    latency_p50: float  # seconds per image (a batch's time over its size)
    latency_p95: float
    batch_seconds: list[float]
    nfe: float | None
    peak_rss_mb: float
    peak_rss_delta_mb: float | None
    memory_method: str
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without needing numpy here."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _tidy(x: float) -> float | int:
    return int(x) if x.is_integer() else x


def measure_speed(
    generator: Generator,
    prompts: Sequence[str],
    batch_size: int = 8,
    repeats: int = 3,
    warmup: int = 1,
    seed: int = 0,
    **params: Any,
) -> SpeedReport:
    """Time ``repeats`` batches of ``batch_size`` images (prompts cycled) after ``warmup`` untimed ones."""
    if not prompts:
        raise UserError("measure_speed needs at least one prompt")
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise UserError("batch_size and repeats must be at least 1, warmup at least 0")
    resolved = generator.resolve_params(**params)

    def batch(r: int) -> tuple[list[str], list[int]]:
        idx = range(r * batch_size, (r + 1) * batch_size)
        return [prompts[i % len(prompts)] for i in idx], [seed + i for i in idx]

    for r in range(warmup):
        generator.generate(*batch(r), **resolved)
    before = _status_kb("VmRSS")
    reset = _reset_peak() and before is not None
    batch_seconds, nfes = [], []
    for r in range(warmup, warmup + repeats):
        out = generator.generate(*batch(r), **resolved)
        batch_seconds.append(sum(out.seconds))
        nfes += [x for x in out.nfe if x is not None]
    peak_kb = _status_kb("VmHWM") if reset else None
    if peak_kb is not None:
        peak, delta, method = peak_kb / 1024, (peak_kb - before) / 1024, "VmHWM reset before timing"
    else:
        peak, delta, method = _maxrss_mb(), None, "ru_maxrss (peak since process start)"
    per_image = [s / batch_size for s in batch_seconds]
    total = sum(batch_seconds)
    return SpeedReport(
        generator=generator.name,
        batch_size=batch_size,
        repeats=repeats,
        images_per_second=batch_size * repeats / total if total > 0 else float("inf"),
        latency_p50=_percentile(per_image, 0.5),
        latency_p95=_percentile(per_image, 0.95),
        batch_seconds=batch_seconds,
        nfe=_tidy(statistics.fmean(nfes)) if nfes else generator.nfe(**resolved),
        peak_rss_mb=round(peak, 1),
        peak_rss_delta_mb=round(delta, 1) if delta is not None else None,
        memory_method=method,
        params=resolved,
    )
