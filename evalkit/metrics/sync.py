"""Read a metric's states as merged over all processes, outside ``compute`` too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torchmetrics import Metric


@contextmanager
def synced(metric: Metric) -> Iterator[Metric]:
    """Inside, ``metric``'s states are gathered and reduced over processes, as in ``compute``; outside, local again.

    A no-op when not distributed, when ``sync_on_compute=False``, or when already synced (inside ``compute``).
    Like ``compute``, every process must enter it together.
    """
    with metric.sync_context(
        dist_sync_fn=metric.dist_sync_fn,
        should_sync=metric._to_sync and not metric._is_synced,
        should_unsync=metric._should_unsync,
    ):
        yield metric
