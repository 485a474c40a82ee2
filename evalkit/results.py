"""Results store: SQLite (WAL), one row per figure, every figure with its n and CI.

A run is one execution of a recipe. Re-running an identical recipe (same hash) resumes that
run and reuses its finished figures; ``new_version=True`` starts a fresh, numbered run instead.
A figure is never overwritten silently: writing a different value for the same key raises.
"""

from __future__ import annotations

import json
import math
import platform
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    recipe_name TEXT NOT NULL,
    recipe_hash TEXT NOT NULL,
    version INTEGER NOT NULL,
    recipe_json TEXT NOT NULL,
    code_version TEXT NOT NULL,
    seeds TEXT NOT NULL,
    host TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL DEFAULT 'running'
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    generator TEXT NOT NULL,
    dataset TEXT NOT NULL,
    metric TEXT NOT NULL,
    category TEXT NOT NULL DEFAULT '',
    extractor TEXT NOT NULL DEFAULT '',
    value REAL,
    ci_lo REAL,
    ci_hi REAL,
    n INTEGER NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    PRIMARY KEY (run_id, generator, dataset, metric, category, extractor)
);
CREATE INDEX IF NOT EXISTS results_metric ON results(metric);
CREATE TABLE IF NOT EXISTS validity (
    metric TEXT NOT NULL,
    extractor TEXT NOT NULL DEFAULT '',
    kendall_tau REAL,
    tau_lo REAL,
    tau_hi REAL,
    spearman_rho REAL,
    rho_lo REAL,
    rho_hi REAL,
    n_generators INTEGER NOT NULL DEFAULT 0,
    source_run TEXT NOT NULL DEFAULT '',
    extra TEXT NOT NULL DEFAULT '{}',
    updated REAL NOT NULL,
    PRIMARY KEY (metric, extractor)
);
"""


@dataclass(frozen=True)
class Result:
    generator: str
    dataset: str
    metric: str
    value: float | None
    n: int
    ci: tuple[float, float] | None = None
    category: str = ""
    extractor: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Validity:
    """The latest measured validity of one metric with one extractor (``python -m evalkit validate``).

    ``kendall_tau``/``spearman_rho``: rank agreement with oracle accuracy over the generators of ``source_run``
    (a sweep run); ``extra``: other validity figures, e.g. ``ladders`` (disturbance ladders that worsen
    monotonically, of how many) and ``validity_json`` (the full report).
    """

    metric: str
    extractor: str = ""
    kendall_tau: float | None = None
    tau_ci: tuple[float, float] | None = None
    spearman_rho: float | None = None
    rho_ci: tuple[float, float] | None = None
    n_generators: int = 0
    source_run: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    run_id: str
    recipe_name: str
    recipe_hash: str
    version: int
    status: str
    started: float
    finished: float | None


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:  # SQLite stores NaN as NULL
        return (a is None or math.isnan(a)) and (b is None or math.isnan(b))
    return a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


class ResultsDB:
    """>>> db = ResultsDB(":memory:"); run = db.start_run("demo", "abc", {"x": 1}, seeds=[0])
    >>> db.add_results(run.run_id, [Result("g", "d", "fid", 1.5, n=10)]); db.results(run.run_id)[0].value
    1.5
    """

    def __init__(self, path: str | Path = "results.db"):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=30)
        self.conn.row_factory = sqlite3.Row
        try:
            if self.path != ":memory:":
                self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:  # not a database, read-only, locked for longer than the timeout
            self.conn.close()
            raise UserError(f"cannot use {self.path} as a results database: {err}") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # runs -------------------------------------------------------------------------------------
    def find_run(self, recipe_hash: str) -> Run | None:
        row = self.conn.execute(
            "SELECT * FROM runs WHERE recipe_hash = ? ORDER BY version DESC LIMIT 1", (recipe_hash,)
        ).fetchone()
        return _run(row) if row else None

    def start_run(
        self,
        recipe_name: str,
        recipe_hash: str,
        recipe: dict[str, Any],
        seeds: Sequence[int],
        new_version: bool = False,
    ) -> Run:
        """Resume the latest run of this exact recipe, or start version N+1 when asked (or none exists)."""
        code = code_version()  # a git call: outside the lock
        with self.conn:  # one write transaction from the look-up on: processes starting at once get a version each
            self.conn.execute("BEGIN IMMEDIATE")
            last = self.find_run(recipe_hash)
            if last and not new_version:
                return last
            version = last.version + 1 if last else 1
            run_id = f"{recipe_name}-{recipe_hash[:10]}-v{version}"
            self.conn.execute(
                "INSERT INTO runs (run_id, recipe_name, recipe_hash, version, recipe_json, code_version, seeds, host,"
                " started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, recipe_name, recipe_hash, version, json.dumps(recipe, sort_keys=True), code,
                 json.dumps(list(seeds)), platform.node(), time.time()),
            )  # fmt: skip
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> Run:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(run_id)
        return _run(row)

    def finish_run(self, run_id: str, status: str = "done") -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE runs SET finished = ?, status = ? WHERE run_id = ?", (time.time(), status, run_id)
            )

    def runs(self, recipe_name: str | None = None) -> list[Run]:
        q, args = "SELECT * FROM runs", ()
        if recipe_name:
            q, args = q + " WHERE recipe_name = ?", (recipe_name,)
        return [_run(r) for r in self.conn.execute(q + " ORDER BY started", args)]

    # results ----------------------------------------------------------------------------------
    def add_results(self, run_id: str, results: Iterable[Result]) -> int:
        """Insert a batch in one transaction; identical re-inserts are no-ops, conflicting ones raise."""
        added = 0
        with self.conn:
            for r in results:
                key = (run_id, r.generator, r.dataset, r.metric, r.category, r.extractor)
                old = self.conn.execute(
                    "SELECT value, n FROM results WHERE run_id=? AND generator=? AND dataset=? AND metric=?"
                    " AND category=? AND extractor=?",
                    key,
                ).fetchone()
                if old is not None:
                    if _same(old["value"], r.value) and old["n"] == r.n:
                        continue
                    raise UserError(
                        f"result {key} already stored as {old['value']} (n={old['n']}); refusing to overwrite it with"
                        f" {r.value} (n={r.n}): start a new run version instead (`run RECIPE --new-version`)"
                    )
                lo, hi = r.ci if r.ci else (None, None)
                self.conn.execute(
                    "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*key[:4], r.category, r.extractor, r.value, lo, hi, r.n, json.dumps(r.extra, sort_keys=True),
                     time.time()),
                )  # fmt: skip
                added += 1
        return added

    def results(self, run_id: str | None = None, metric: str | None = None) -> list[Result]:
        q, args = "SELECT * FROM results WHERE 1=1", []
        if run_id:
            q += " AND run_id = ?"
            args.append(run_id)
        if metric:
            q += " AND metric = ?"
            args.append(metric)
        return [_result(r) for r in self.conn.execute(q + " ORDER BY generator, metric, category", args)]

    # validity ---------------------------------------------------------------------------------
    def put_validity(self, rows: Iterable[Validity]) -> None:
        """Store the newest validity of each (metric, extractor). Fields a row leaves empty (no τ when the sweep
        was not measured this time) keep their stored values, and ``extra`` dicts are merged."""
        with self.conn:
            for v in rows:
                old = next((o for o in self.validity(v.metric) if o.extractor == v.extractor), None)
                if old is not None and v.kendall_tau is None:
                    v = Validity(v.metric, v.extractor, old.kendall_tau, old.tau_ci, old.spearman_rho, old.rho_ci,
                                 old.n_generators, old.source_run, {**old.extra, **v.extra})  # fmt: skip
                elif old is not None:
                    v = Validity(**{**asdict(v), "extra": {**old.extra, **v.extra}})
                t_lo, t_hi = v.tau_ci or (None, None)
                r_lo, r_hi = v.rho_ci or (None, None)
                self.conn.execute(
                    "INSERT OR REPLACE INTO validity VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (v.metric, v.extractor, v.kendall_tau, t_lo, t_hi, v.spearman_rho, r_lo, r_hi, v.n_generators,
                     v.source_run, json.dumps(v.extra, sort_keys=True), time.time()),
                )  # fmt: skip

    def validity(self, metric: str | None = None) -> list[Validity]:
        q, args = "SELECT * FROM validity", ()
        if metric:
            q, args = q + " WHERE metric = ?", (metric,)
        return [_validity(r) for r in self.conn.execute(q + " ORDER BY metric, extractor", args)]

    def has_results(self, run_id: str, generator: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM results WHERE run_id=? AND generator=? LIMIT 1", (run_id, generator))
        return row.fetchone() is not None


def _run(row: sqlite3.Row) -> Run:
    return Run(row["run_id"], row["recipe_name"], row["recipe_hash"], row["version"], row["status"], row["started"],
               row["finished"])  # fmt: skip


def _result(row: sqlite3.Row) -> Result:
    ci = (row["ci_lo"], row["ci_hi"]) if row["ci_lo"] is not None else None
    return Result(row["generator"], row["dataset"], row["metric"], row["value"], row["n"], ci, row["category"],
                  row["extractor"], json.loads(row["extra"]))  # fmt: skip


def _validity(row: sqlite3.Row) -> Validity:
    tau = (row["tau_lo"], row["tau_hi"]) if row["tau_lo"] is not None else None
    rho = (row["rho_lo"], row["rho_hi"]) if row["rho_lo"] is not None else None
    return Validity(row["metric"], row["extractor"], row["kendall_tau"], tau, row["spearman_rho"], rho,
                    row["n_generators"], row["source_run"], json.loads(row["extra"]))  # fmt: skip


def result_dict(r: Result) -> dict[str, Any]:
    d = asdict(r)
    d["ci"] = list(r.ci) if r.ci else None
    return d
