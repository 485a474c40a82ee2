"""Recipes, the runner, the results store and the leaderboard, end to end on tiny local models."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from evalkit import leaderboard
from evalkit.errors import UserError
from evalkit.features import FeatureCache
from evalkit.recipe import load_recipe
from evalkit.results import Result, ResultsDB
from evalkit.runner import run

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, tiny_sd_dir: Path, tiny_clip: Path, **over) -> Path:
    d = {
        "name": "tiny",
        "prompts": "shapes:6:0:test",
        "reference": {"source": "shapes:24:1:test"},
        "generators": [
            {"spec": f"dir:{tiny_sd_dir}", "name": "sd-2", "params": {"steps": 2, "size": 32}},
            {"spec": f"dir:{tiny_sd_dir}", "name": "sd-1", "params": {"steps": 1, "size": 32}},
        ],
        "metrics": ["clip", "fid", "kid", "cmmd", "pr", "oracle", "speed"],
        "extractors": [f"judge:{tiny_clip.dir}"],
        "images_per_prompt": 2,
        "batch_size": 4,
        "output_dir": str(tmp_path / "out"),
        "db": str(tmp_path / "results.db"),
    }
    d.update(over)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the shapes reference renders under ./runs/_reference
    return tmp_path


def test_run_stores_figures_and_resumes_without_work(in_tmp, tiny_sd_dir, tiny_clip):
    path = _recipe(in_tmp, tiny_sd_dir, tiny_clip)
    cache = FeatureCache(in_tmp / "cache")
    first = run(path, cache=cache, on_stage=lambda s: None)
    assert first.generated == {"sd-2": 12, "sd-1": 12} and first.reused == {"sd-2": 0, "sd-1": 0}
    with ResultsDB(in_tmp / "results.db") as db:
        rows = db.results(first.run_id)
        metrics = {r.metric for r in rows if r.generator == "sd-2" and not r.category}
        assert {"clip", "fid", "kid", "cmmd", "precision", "recall", "oracle", "images_per_s", "nfe"} <= metrics
        fid = next(r for r in rows if r.metric == "fid" and r.generator == "sd-2")
        assert fid.n == 12 and fid.value >= 0 and fid.extractor.startswith("judge:")
        clip = next(r for r in rows if r.metric == "clip" and not r.category and r.generator == "sd-2")
        assert clip.ci is not None and clip.ci[0] <= clip.value <= clip.ci[1]
        assert any(r.metric == "oracle" and r.category for r in rows)  # per-category breakdown
        nfe = {r.generator: r.value for r in rows if r.metric == "nfe"}
        assert nfe["sd-2"] > nfe["sd-1"]
    misses = cache.misses
    second = run(path, cache=cache, on_stage=lambda s: None)
    assert second.run_id == first.run_id
    assert second.generated == {"sd-2": 0, "sd-1": 0} and second.reused == {"sd-2": 12, "sd-1": 12}
    assert cache.misses == misses  # no feature computed again
    with ResultsDB(in_tmp / "results.db") as db:
        again = {(r.generator, r.metric, r.category): r.value for r in db.results(second.run_id)}
        assert again == {(r.generator, r.metric, r.category): r.value for r in rows}
        assert len(db.runs("tiny")) == 1


def test_a_param_typo_in_the_last_generator_stops_the_run_before_the_first_generates(in_tmp, tiny_sd_dir, tiny_clip):
    gens = [{"spec": f"dir:{tiny_sd_dir}", "name": "sd-2", "params": {"steps": 2, "size": 32}},
            {"spec": f"dir:{tiny_sd_dir}", "name": "sd-1", "params": {"stpes": 1, "size": 32}}]  # fmt: skip
    path = _recipe(in_tmp, tiny_sd_dir, tiny_clip, generators=gens)
    with pytest.raises(UserError, match=r"does not take 'stpes' \(did you mean 'steps'\?\)"):
        run(path, on_stage=lambda s: None)
    assert not (in_tmp / "out").exists() and not (in_tmp / "results.db").exists()  # nothing generated or stored


def test_prompt_rows_without_a_prompt_are_counted_and_an_empty_set_is_named(in_tmp, tiny_sd_dir):
    from evalkit.generators import generate_to_folder

    rows = [{"prompt": "a red circle"}, {"prompt": 5}, {"prompt": None}, {"prompt": "a blue square"}]
    (in_tmp / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = generate_to_folder(f"dir:{tiny_sd_dir}", f"jsonl:{in_tmp / 'p.jsonl'}", in_tmp / "g", n=1, seed=0,
                             params={"steps": 1, "size": 32})  # fmt: skip
    assert res.total == 2 and sum(res.skipped_prompts.values()) == 2
    assert "skipped 2 prompt rows" in res.summary()
    (in_tmp / "none.jsonl").write_text(json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(UserError, match=r"no prompts to generate from in .*none.*skipped 1"):
        generate_to_folder(f"dir:{tiny_sd_dir}", f"jsonl:{in_tmp / 'none.jsonl'}", in_tmp / "g2", n=1, seed=0)


def test_inception_beside_clip_each_scores_what_it_can(in_tmp, tiny_sd_dir, tiny_clip):
    from evalkit.features.inception import FIDInceptionV3

    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), in_tmp / "inception.pth")  # random weights: the wiring is what counts
    path = _recipe(in_tmp, tiny_sd_dir, tiny_clip, generators=[{"spec": f"dir:{tiny_sd_dir}", "name": "sd-1",
                   "params": {"steps": 1, "size": 32}}], metrics=["clip", "fid", "cmmd", "is"], images_per_prompt=2,
                   extractors=[f"judge:{tiny_clip.dir}", f"inception:{in_tmp / 'inception.pth'}"])  # fmt: skip
    report = run(path, cache=None, on_stage=lambda s: None)
    with ResultsDB(in_tmp / "results.db") as db:
        got = {(r.metric, r.extractor.split(":")[0].split("|")[0]) for r in db.results(report.run_id) if not r.category}
    assert got == {
        ("clip", "judge"),
        ("fid", "judge"),
        ("cmmd", "judge"),
        ("fid", "inception-v3-fid"),
        ("is", "inception-v3-fid"),
    }
    path = _recipe(
        in_tmp,
        tiny_sd_dir,
        tiny_clip,
        metrics=["clip", "fid", "cmmd"],
        extractors=[f"inception:{in_tmp / 'inception.pth'}"],
    )
    with pytest.raises(UserError, match="no extractor in the recipe can compute clip, cmmd"):
        run(path, cache=None, on_stage=lambda s: None)


def test_new_version_and_leaderboard_formats(in_tmp, tiny_sd_dir, tiny_clip):
    path = _recipe(in_tmp, tiny_sd_dir, tiny_clip, metrics=["fid", "oracle", "speed"], images_per_prompt=1)
    cache = FeatureCache(in_tmp / "cache")
    a = run(path, cache=cache, on_stage=lambda s: None)
    b = run(path, cache=cache, new_version=True, on_stage=lambda s: None)
    assert a.run_id != b.run_id and b.run_id.endswith("-v2")
    with ResultsDB(in_tmp / "results.db") as db:
        lb = leaderboard.build(db, "tiny")
    assert lb.run_ids == [b.run_id] and set(lb.generators) == {"sd-1", "sd-2"}
    md = leaderboard.to_markdown(lb)
    assert "fid ↓" in md and "win rate" in md and "sd-1" in md
    assert leaderboard.to_csv(lb).splitlines()[0].startswith("generator,metric,category,value")
    assert "<table" in leaderboard.to_html(lb)
    out = subprocess.run(
        [sys.executable, "-m", "evalkit", "leaderboard", "--db", str(in_tmp / "results.db"), "--format", "csv"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0 and "sd-2" in out.stdout


def test_win_rate_and_ranks():
    db = ResultsDB(":memory:")
    run_ = db.start_run("r", "h", {}, [0])
    db.add_results(run_.run_id, [
        Result("a", "d", "fid", 10.0, 5), Result("b", "d", "fid", 20.0, 5), Result("c", "d", "fid", 20.0, 5),
        Result("a", "d", "clip", 20.0, 5), Result("b", "d", "clip", 30.0, 5), Result("c", "d", "clip", 10.0, 5),
    ])  # fmt: skip
    lb = leaderboard.build(db)
    assert lb.ranks[("a", "fid")] == 1 and lb.ranks[("b", "fid")] == 2 and lb.ranks[("c", "fid")] == 2
    assert lb.win_rate == pytest.approx({"a": 0.75, "b": 0.625, "c": 0.125})
    assert lb.generators == ["a", "b", "c"]


def test_a_metric_on_two_datasets_or_extractors_gets_a_column_each():
    db = ResultsDB(":memory:")
    laion, parti = (db.start_run(name, name, {}, [0]).run_id for name in ("laion", "parti"))
    db.add_results(laion, [Result("a", "laion", "clip", 30.0, 5, extractor="clip"), Result("b", "laion", "clip", 20.0, 5, extractor="clip"),
                           Result("a", "laion", "fid", 9.0, 5, extractor="clip"), Result("b", "laion", "fid", 5.0, 5, extractor="clip"),
                           Result("a", "laion", "fid", 7.0, 5, extractor="inception"), Result("b", "laion", "fid", 8.0, 5, extractor="inception")])  # fmt: skip
    db.add_results(parti, [Result("a", "parti", "clip", 10.0, 5, extractor="clip"), Result("b", "parti", "clip", 25.0, 5, extractor="clip")])  # fmt: skip
    lb = leaderboard.build(db)
    assert lb.metrics == ["clip [laion]", "clip [parti]", "fid [clip]", "fid [inception]"]  # nothing dropped
    assert {c: lb.cells[("a", c)].value for c in lb.metrics} == {
        "clip [laion]": 30.0, "clip [parti]": 10.0, "fid [clip]": 9.0, "fid [inception]": 7.0
    }  # fmt: skip
    assert lb.ranks[("a", "fid [inception]")] == 1 and lb.ranks[("a", "fid [clip]")] == 2  # lower is better
    assert lb.win_rate == pytest.approx({"a": 0.5, "b": 0.5})
    assert "fid [inception] ↓" in leaderboard.to_markdown(lb)
    only = leaderboard.build(db, "laion")  # one recipe: clip has one dataset there
    assert only.metrics == ["clip", "fid [clip]", "fid [inception]"]


def test_latest_run_is_the_newest_finished_else_the_newest():
    db = ResultsDB(":memory:")
    v1 = db.start_run("r", "h", {}, [0]).run_id
    v2 = db.start_run("r", "h", {}, [0], new_version=True).run_id
    assert leaderboard.latest_run_ids(db, "r") == [v2]  # neither finished
    db.finish_run(v1)
    assert leaderboard.latest_run_ids(db, "r") == [v1]
    db.finish_run(v2)
    assert leaderboard.latest_run_ids(db) == [v2]


def test_across_recipes_the_newest_run_wins_a_shared_cell():
    db = ResultsDB(":memory:")
    a1 = db.start_run("a", "h", {}, [0]).run_id
    b1 = db.start_run("b", "g", {}, [0]).run_id
    a2 = db.start_run("a", "h", {}, [0], new_version=True).run_id
    for rid, value in ((a1, 0.1), (b1, 0.2), (a2, 0.9)):
        db.add_results(rid, [Result("gan", "shapes", "oracle", value, 200)])
        db.finish_run(rid)
    assert leaderboard.latest_run_ids(db) == [b1, a2]  # in the order they started
    assert leaderboard.build(db).cells[("gan", "oracle")].value == 0.9


def test_results_are_never_overwritten_silently():
    db = ResultsDB(":memory:")
    rid = db.start_run("r", "h", {}, [0]).run_id
    assert db.add_results(rid, [Result("a", "d", "fid", 1.0, 5)]) == 1
    assert db.add_results(rid, [Result("a", "d", "fid", 1.0, 5)]) == 0
    with pytest.raises(UserError, match="refusing to overwrite.*--new-version"):
        db.add_results(rid, [Result("a", "d", "fid", 2.0, 5)])
    assert db.add_results(rid, [Result("b", "d", "fid", float("nan"), 5)]) == 1  # stored as NULL
    assert db.add_results(rid, [Result("b", "d", "fid", float("nan"), 5)]) == 0  # the same figure again


def test_a_file_that_is_no_database_is_a_one_line_error(tmp_path):
    bad = tmp_path / "results.db"
    bad.write_bytes(b"not sqlite at all, " * 200)
    with pytest.raises(UserError, match="cannot use .* as a results database"):
        ResultsDB(bad)
    done = subprocess.run([sys.executable, "-m", "evalkit", "leaderboard", "--db", str(bad)], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr and "results database" in done.stderr


def test_runs_started_at_once_each_get_a_version(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    ResultsDB(tmp_path / "r.db").close()

    def start(_):
        with ResultsDB(tmp_path / "r.db") as db:
            return db.start_run("r", "h", {}, [0], new_version=True).version

    with ThreadPoolExecutor(6) as pool:
        assert sorted(pool.map(start, range(6))) == [1, 2, 3, 4, 5, 6]


def test_results_db_is_wal(tmp_path):
    ResultsDB(tmp_path / "r.db").close()
    mode = sqlite3.connect(tmp_path / "r.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


BAD_RECIPES = [
    (
        "name: x\nprompts: shapes:4\ngenerators: [{spec: zoo/diffusion}]\nmetrcs: [fid]\n",
        "unknown key 'metrcs'; did you mean 'metrics'",
    ),
    ("name: x\nprompts: shapes:4\ngenerators: [{spec: zoo/diffusion, parms: {}}]\n", "did you mean 'params'"),
    ("name: x\nprompts: shapes:4\n", "missing required key 'generators'"),
    ("name: x\nprompts: shapes:4\ngenerators: []\n", "generators"),
    ("name: x\nprompts: shapes:4\ngenerators: [{spec: diffusion}]\n", "must start with one of"),
    (
        "name: x\nprompts: shapes:4\ngenerators: [{spec: zoo/a}]\nmetrics: [fdi]\n",
        "unknown metric 'fdi' (did you mean 'fid'?)",
    ),
    ("name: x\nprompts: shapes:4\ngenerators: [{spec: zoo/a}]\nimages_per_prompt: 0\n", "images_per_prompt"),
    ("name: x\nprompts: shapes:4\ngenerators: [{spec: 'dir:/no/such/dir'}]\n", "path not found: /no/such/dir"),
    (
        "name: x\nprompts: txt:/no/such/prompts.txt\ngenerators: [{spec: zoo/a}]\n",
        "file not found: /no/such/prompts.txt",
    ),
    ("name: x\nprompts: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("name: x\nprompts: shapes:4\ngenerators: [{spec: zoo/a}, {spec: zoo/a}]\n", "must be unique"),
    ("name: x\nprompts: shapes:4\ngenerators: [{spec: zoo/a}]\nbatch_size: many\n", "batch_size"),
    (
        "name: x\nprompts: shapes:4\nreference: {sorce: 'shapes:4'}\ngenerators: [{spec: zoo/a}]\n",
        "unknown key 'reference.sorce'; did you mean 'source'",
    ),
    ("name: x\nprompts: shapes:4\ngenerators: [{spec: zoo/a}]\noutput_dir: runs/{nme}\n", "only placeholder is {name}"),
    (
        "name: x\nprompts: shapes:4\ngenerators: [{spec: zoo/a, name: a b}, {spec: zoo/a, name: a_b}]\n",
        "would share one images folder",
    ),
]


@pytest.mark.parametrize("text,message", BAD_RECIPES)
def test_bad_recipes_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_recipe(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_recipe_cli_has_no_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_RECIPES[0][0])
    out = subprocess.run([sys.executable, "-m", "evalkit", "run", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "did you mean 'metrics'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "evalkit", "run", str(tmp_path / "none.yaml")], cwd=ROOT,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "recipe not found" in out.stderr


def test_recipe_hash_ignores_where_output_goes(tmp_path, tiny_sd_dir, tiny_clip):
    a = load_recipe(_recipe(tmp_path, tiny_sd_dir, tiny_clip))
    b = load_recipe(_recipe(tmp_path, tiny_sd_dir, tiny_clip, output_dir="elsewhere", db="other.db"))
    c = load_recipe(_recipe(tmp_path, tiny_sd_dir, tiny_clip, seed=1))
    assert a.content_hash() == b.content_hash() != c.content_hash()
    assert json.loads(json.dumps(a.model_dump()))["generators"][0]["name"] == "sd-2"


def _images(folder: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an image was generated twice"
    return {r["id"]: r["sha256"] for r in rows}


def _figures(db_path: Path) -> dict[tuple, float]:
    with ResultsDB(db_path) as db:
        return {(r.generator, r.metric, r.category, r.extractor): r.value for r in db.results()}


def test_sigkill_mid_generation_and_mid_scoring_then_resume_matches_uninterrupted(tmp_path, tiny_sd_dir, tiny_clip):
    """kill -9 after 4 of 12 images of the first generator, then again after scoring the second one (before its
    figures are stored); the resumed run regenerates nothing finished and ends equal to an uninterrupted run."""
    recipe = {"metrics": ["clip", "fid", "kid", "oracle"], "batch_size": 2,
              "generators": [{"spec": f"dir:{tiny_sd_dir}", "name": "sd-a", "params": {"steps": 3, "size": 32}},
                             {"spec": f"dir:{tiny_sd_dir}", "name": "sd-b", "params": {"steps": 1, "size": 32}}]}  # fmt: skip
    runs = {}
    for name in ("clean", "killed"):
        d = tmp_path / name
        d.mkdir()
        runs[name] = (d, _recipe(d, tiny_sd_dir, tiny_clip, **recipe))

    def cli(name: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
        d, path = runs[name]
        env = {**os.environ, "EVALKIT_CACHE": str(d / "cache"), "EVALKIT_PROGRESS": "0", "PYTHONPATH": str(ROOT)}
        if kill_at:
            env["EVALKIT_KILL_AT"] = kill_at
        cmd = [sys.executable, "-m", "evalkit", "run", str(path)]
        return subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=600)

    assert cli("clean").returncode == 0
    d = runs["killed"][0]
    r = cli("killed", kill_at="generate:sd-a:4")
    assert r.returncode == -9
    assert len(_images(d / "out/images/sd-a")) == 4
    r = cli("killed", kill_at="score:sd-b")
    assert r.returncode == -9
    assert len(_images(d / "out/images/sd-a")) == 12 and len(_images(d / "out/images/sd-b")) == 12
    assert {k for k, *_ in _figures(d / "results.db")} == {"sd-a"}  # sd-b's figures were not stored
    r = cli("killed")
    assert r.returncode == 0, r.stderr
    assert "generated 0 images, reused 24" in r.stdout
    clean = runs["clean"][0]
    for g in ("sd-a", "sd-b"):
        assert _images(d / "out/images" / g) == _images(clean / "out/images" / g)
    assert _figures(d / "results.db") == _figures(clean / "results.db")
