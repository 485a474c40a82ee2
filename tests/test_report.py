"""The HTML report: a tiny real run end to end, the CLI, and the Pareto front on constructed points."""

from __future__ import annotations

import base64
import io
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from evalkit import cli
from evalkit import leaderboard as lbm
from evalkit import report as rpt
from evalkit.errors import UserError
from evalkit.features import FeatureCache
from evalkit.plots import PlotPoint, pareto_front, pareto_plot
from evalkit.results import Result, ResultsDB
from evalkit.runner import run

N_PROMPTS = 6


class _Page(HTMLParser):
    """Collects every <img> (attributes) and, for the image grid, its body rows (prompt label + img count)."""

    def __init__(self):
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.grid_rows: list[list[str]] = []
        self.ids: set[str] = set()
        self._table: list[str] = []
        self._in_tbody = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "table":
            self._table.append(a.get("class", ""))
        elif tag == "tbody":
            self._in_tbody = True
        elif tag == "tr" and self._in_tbody and self._table[-1] == "grid":
            self.grid_rows.append([])
        elif tag == "img":
            self.imgs.append(a)
            if self._in_tbody and self._table and self._table[-1] == "grid":
                self.grid_rows[-1].append(a["src"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table.pop()
        elif tag == "tbody":
            self._in_tbody = False


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _image(src: str, base: Path) -> Image.Image:
    """The image an <img src> names: a data URI or a file relative to the report (must exist)."""
    if src.startswith("data:image/png;base64,"):
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
    else:
        assert not src.startswith(("/", "http:", "https:", "file:")), src
        path = base / src
        assert path.is_file(), f"<img src={src!r}> does not resolve"
        data = path.read_bytes()
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_sd_dir, tiny_clip):
    """A real two-setting run of one tiny SD pipeline (steps 1 and 2): figures, images and report."""
    tmp = tmp_path_factory.mktemp("report_run")
    recipe = {
        "name": "tiny-report",
        "prompts": f"shapes:{N_PROMPTS}:0:test",
        "reference": {"source": "shapes:16:1:test"},
        "generators": [
            {"spec": f"dir:{tiny_sd_dir}", "name": "sd-2", "params": {"steps": 2, "size": 32}},
            {"spec": f"dir:{tiny_sd_dir}", "name": "sd-1", "params": {"steps": 1, "size": 32}},
        ],
        "metrics": ["clip", "fid", "oracle", "speed"],
        "extractors": [f"judge:{tiny_clip.dir}"],
        "images_per_prompt": 1,
        "batch_size": 6,
        "output_dir": str(tmp / "out"),
        "db": str(tmp / "results.db"),
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the shapes reference renders under ./runs/_reference
        rep = run(path, cache=FeatureCache(tmp / "cache"), on_stage=lambda s: None)
    return tmp, rep


def test_run_writes_a_report_whose_images_all_resolve(tiny_run):
    tmp, rep = tiny_run
    assert rep.report == tmp / "out" / rpt.REPORT_NAME and rep.report.is_file()
    page = _parse(rep.report)
    assert {"leaderboard", "categories", "grid", "pareto", "steps", "skipped", "run"} <= page.ids
    assert "validity" not in page.ids  # no validity figures yet: no placeholder section
    sizes = {}
    for a in page.imgs:
        img = _image(a["src"], rep.report.parent)
        assert img.format == "PNG" and img.width > 0 and img.height > 0
        sizes[a["src"]] = img.size
    # one grid row per prompt, one thumbnail per generator, 32 px images upscaled x4 (NEAREST)
    assert len(page.grid_rows) == N_PROMPTS and all(len(r) == 2 for r in page.grid_rows)
    assert all(sizes[src] == (128, 128) for row in page.grid_rows for src in row)
    thumb = Image.open(rep.report.parent / page.grid_rows[0][0]).convert("RGB")
    assert thumb.getpixel((0, 0)) == thumb.getpixel((3, 3))  # a 4x4 block per source pixel
    plots = [s for s in sizes if "pareto_" in s or "steps" in s]
    assert {Path(s).name for s in plots} == {"pareto_oracle.png", "pareto_fid.png", "pareto_clip.png", "steps.png"}
    assert all(w >= 400 and h >= 300 for s, (w, h) in sizes.items() if s in plots)
    text = rep.report.read_text()
    for needle in ("sd-1", "sd-2", "fid ↓", "oracle ↑", "win rate", "oracle ↑ by category", "reference",
                   rep.run_id, "tiny-report"):  # fmt: skip
        assert needle in text


def test_grid_shows_the_same_prompts_and_seeds(tiny_run):
    tmp, rep = tiny_run
    with ResultsDB(tmp / "results.db") as db:
        info = rpt.run_info(db, rep.run_id)
        lb = lbm.build(db, run_ids=[rep.run_id])
        manifests = rpt.load_manifests(info, lb.generators)
        x_label, curves = rpt.steps_curves(info, lb, manifests)
    assert set(manifests) == {"sd-1", "sd-2"}
    ids = rpt.select_prompts({g: rows for g, (_, rows) in manifests.items()}, k=4)
    assert len(ids) == 4 and len(set(ids)) == 4
    for pid in ids:
        seeds = {next(r["seed"] for r in rows if r["prompt_id"] == pid) for _, rows in manifests.values()}
        assert len(seeds) == 1
    # quality versus steps: one curve (the shared spec) at steps 1 and 2, values from the leaderboard
    assert x_label == "steps" and set(curves) == {"oracle", "fid", "clip"}
    (fid,) = curves["fid"]
    assert fid.xs == (1.0, 2.0) and fid.ys == (lb.cells[("sd-1", "fid")].value, lb.cells[("sd-2", "fid")].value)


def test_report_cli_inline_and_errors(tiny_run, tmp_path, capsys):
    tmp, rep = tiny_run
    db = str(tmp / "results.db")
    argv = ["report", "--db", db, "--recipe", "tiny-report", "--out", str(tmp_path / "a"), "--max-prompts", "3",
            "--inline"]  # fmt: skip
    assert cli.main(argv) == 0
    path = tmp_path / "a" / rpt.REPORT_NAME
    assert f"wrote {path}" in capsys.readouterr().out and not (tmp_path / "a" / rpt.ASSETS_DIR).exists()
    page = _parse(path)
    assert len(page.grid_rows) == 3
    assert page.imgs and all(_image(a["src"], path.parent).format == "PNG" for a in page.imgs)

    assert cli.main(["report", "--db", db, "--run", rep.run_id, "--out", str(tmp_path / "b")]) == 0
    assert all((tmp_path / "b" / a["src"]).is_file() for a in _parse(tmp_path / "b" / rpt.REPORT_NAME).imgs)

    for args, message in [
        (("--db", str(tmp_path / "none.db")), "results database not found"),
        (("--db", db, "--run", "no-such-run"), "no run 'no-such-run'"),
        (("--db", db, "--recipe", "other"), "no run of recipe 'other'"),
        (("--db", db, "--max-prompts", "0"), "--max-prompts must be at least 1"),
    ]:
        capsys.readouterr()
        assert cli.main(["report", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "xs,ys,x_higher,y_higher,front",
    [
        ([1, 2, 3, 2], [3, 2, 1, 1], True, True, [0, 1, 2]),  # (2, 1) is dominated by (2, 2)
        ([1, 2, 3], [5.0, 20.0, 10.0], True, False, [0, 2]),  # lower y (FID) is better: (2, 20) is dominated
        ([1, 2, 3], [5.0, 20.0, 10.0], True, True, [1, 2]),  # higher y: (1, 5) is dominated
        ([1, 2, 3], [5.0, 20.0, 10.0], False, True, [0, 1]),  # lower x (latency) is better: (3, 10) dominated
        ([1, 1, 2], [5, 5, 1], True, True, [0, 1, 2]),  # identical points do not dominate each other
        ([1, 2, 3], [1, 2, 3], True, True, [2]),  # one point beats all
        ([1, math.nan, 3, None], [1, 9, math.inf, 9], True, True, [0]),  # non-finite points never count
        ([], [], True, True, []),
    ],
)
def test_pareto_front(xs, ys, x_higher, y_higher, front):
    assert pareto_front(xs, ys, x_higher=x_higher, y_higher=y_higher) == front


def test_pareto_plot_is_a_png():
    pts = [PlotPoint("a", 10.0, 0.5, "diffusion"), PlotPoint("b", 100.0, 0.3, "gan"), PlotPoint("c", 1.0, 0.2, "x")]
    img = Image.open(io.BytesIO(pareto_plot(pts, metric="oracle", higher=True)))
    assert img.format == "PNG" and img.width > 400


def _synthetic_db(tmp_path: Path) -> tuple[ResultsDB, str]:
    """Figures only (no image folders): a fast low-quality, a slow high-quality and a dominated generator."""
    db = ResultsDB(tmp_path / "r.db")
    gens = [{"spec": "zoo/gan", "name": "fast"}, {"spec": "zoo/diffusion", "name": "slow"},
            {"spec": "zoo/masked", "name": "worse"}]  # fmt: skip
    recipe = {"name": "synth", "generators": gens, "output_dir": str(tmp_path / "o"), "prompts": "shapes:4",
              "metrics": ["fid", "oracle", "speed"]}  # fmt: skip
    rid = db.start_run("synth", "h" * 16, recipe, [0]).run_id
    figures = {"fast": (100.0, 0.4, 30.0), "slow": (2.0, 0.9, 10.0), "worse": (1.0, 0.5, 40.0)}
    db.add_results(rid, [r for g, (ips, orc, fid) in figures.items() for r in (
        Result(g, "d", "images_per_s", ips, 8), Result(g, "d", "oracle", orc, 8, (orc - 0.1, orc + 0.1)),
        Result(g, "d", "fid", fid, 8))])  # fmt: skip
    db.finish_run(rid)
    return db, rid


def test_report_without_images_and_pareto_directions(tmp_path):
    db, rid = _synthetic_db(tmp_path)
    with db:
        path = rpt.write_report(db, out_dir=tmp_path / "rep")
    text = path.read_text()
    assert "no image folder found for: " in text and "re-counted from the image folders" in text
    fronts = [t.split("</b>")[0] for t in text.split('<b class="front">')[1:]]
    assert fronts == ["slow, fast", "slow, fast"]  # oracle ↑ and fid ↓: 'worse' is dominated on both
    assert all((path.parent / a["src"]).is_file() for a in _parse(path).imgs)
    assert "steps" not in _parse(path).ids  # one setting per spec: no steps curves


def test_validity_section_only_with_validity_figures(tmp_path, monkeypatch):
    db, rid = _synthetic_db(tmp_path)
    build = lbm.build

    def with_validity(*a, **kw):
        lb = build(*a, **kw)
        lb.validity = {"fid": 0.67}
        return lb

    monkeypatch.setattr(lbm, "build", with_validity)
    with db:
        page = _parse(rpt.write_report(db, rid, out_dir=tmp_path / "rep"))
    assert "validity" in page.ids


def test_select_run_and_errors(tmp_path):
    with pytest.raises(UserError, match="results database not found"):
        rpt.write_report(tmp_path / "missing.db")
    db, rid = _synthetic_db(tmp_path)
    with db:
        assert rpt.select_run(db) == rpt.select_run(db, "synth") == rid
        with pytest.raises(UserError, match="recipes there: synth"):
            rpt.select_run(db, "nope")
        empty = db.start_run("empty", "e" * 16, {"name": "empty", "generators": []}, [0]).run_id
        with pytest.raises(UserError, match="has no results yet"):
            rpt.render_report(db, empty, tmp_path)


def test_select_prompts_round_robin_over_categories():
    rows = [{"prompt_id": f"{c}{i}", "image_index": 0, "category": c} for c in "ab" for i in range(3)]
    assert rpt.select_prompts({"g": rows}, k=4) == ["a0", "b0", "a1", "b1"]
    assert rpt.select_prompts({"g": rows, "h": rows[:2]}, k=4) == ["a0", "a1"]
    assert rpt.select_prompts({}, k=4) == []


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    from playwright.sync_api import sync_playwright

    _, rep = tiny_run
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(rep.report.resolve().as_uri(), wait_until="load")
            imgs = page.evaluate(
                "() => Array.from(document.images).map(i => ({src: i.getAttribute('src'), ok: i.complete && "
                "i.naturalWidth > 0}))"
            )
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(imgs) == 2 * N_PROMPTS + 4
    assert [i["src"] for i in imgs if not i["ok"]] == []
    assert Image.open(tmp_path / "report.png").width == 1280
