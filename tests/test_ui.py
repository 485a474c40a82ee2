"""The Gradio UI through gradio_client against a real server on tiny local models: an evaluation end to end,
the leaderboard, Compare, a LoRA personalization whose weights load with ``load_lora_weights``, concurrent
clients, bad uploads answered with a message, login and binding."""

from __future__ import annotations

import io
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from ui_server import GEN_PARAMS, running_app, tiny_generators

from evalkit.errors import UserError
from evalkit.generators.testing import save_toy_gan
from evalkit.results import ResultsDB
from evalkit.ui import models as ui_models
from evalkit.ui.compare_tab import shapes_examples
from evalkit.ui.config import AppConfig, build_parser, parse_auth
from evalkit.ui.evaluate_tab import FORM
from evalkit.ui.uploads import sanitize_name, store_images
from personalize.subjects import HOUSEMARK

AUTH = ("ann", "correct horse")


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_sd_dir, tiny_clip):
    tmp = tmp_path_factory.mktemp("ui")
    with running_app(tmp, tiny_generators(tmp, tiny_sd_dir), f"judge:{tiny_clip.dir}", auth=AUTH,
                     max_upload_mb=0.5) as server:  # fmt: skip
        yield server


def client(app):
    from gradio_client import Client

    return Client(app.url, auth=AUTH, verbose=False, download_files=str(app.tmp / "downloads"))


def compare(c, app, prompt: str, seed: int = 0, typed: str = ""):
    return c.predict(prompt, seed, app.generators, typed, GEN_PARAMS["steps"], GEN_PARAMS["size"], api_name="/compare")


def personalize(c, files, token="<s*>", class_word="square", method="lora", steps=20, model=None, typed="",
                submit=False):  # fmt: skip
    from gradio_client import handle_file

    return (c.submit if submit else c.predict)([handle_file(str(f)) for f in files], token, class_word, method, steps, model, typed, 2,
                     api_name="/personalize")  # fmt: skip


def assert_scored(status: str, gallery: list, scores: dict, size: int) -> dict:
    """A finished 2 generators × 4 prompts evaluation: its images, and per generator the CLIP score with its
    bootstrap CI and the oracle, each over 4 images. Returns the scores by (generator, metric)."""
    assert status.startswith("**Done**"), status
    assert len(gallery) == 2 * 4 and all(Image.open(g["image"]).size == (size, size) for g in gallery)
    rows = {(r[0], r[1]): r for r in scores["data"]}
    for g in {g for g, _ in rows}:
        value, lo, hi, n = rows[(g, "clip")][2:]
        assert 0 <= lo <= value <= hi <= 100 and n == 4
        assert rows[(g, "oracle")][5] == 4
    return rows


def test_evaluation_of_two_generators_end_to_end_with_scores(app):
    c = client(app)
    status, gallery, scores = c.predict(app.generators, "", FORM, "shapes:4:0:test", 1, ["clip", "oracle", "speed"],
                                        GEN_PARAMS["steps"], GEN_PARAMS["size"], "", "ui-test",
                                        api_name="/evaluate")  # fmt: skip
    rows = assert_scored(status, gallery, scores, size=32)
    labels = {g for g, _ in rows}
    assert len(labels) == 2 and "tiny-amused" in labels
    assert all(rows[(g, "images_per_s")][2] > 0 for g in labels)
    with ResultsDB(app.tmp / "results.db") as db:  # the same database the CLI's leaderboard reads
        (run,) = db.runs("ui-test")
        assert run.status == "done" and {r.generator for r in db.results(run.run_id)} == labels

    table, plot, note = c.predict("ui-test", [], "overall", "oracle", api_name="/leaderboard")
    assert {r[0] for r in table["data"]} == labels and "win rate" in table["headers"]
    assert any(h.startswith("clip ↑") for h in table["headers"]) and "Runs:" in note
    assert Image.open(plot).width > 400  # the quality-versus-speed plot
    table, _, _ = c.predict("ui-test", ["clip"], "overall", None, api_name="/leaderboard")
    by_clip = sorted(table["data"], key=lambda r: -r[2])  # columns: generator, win rate, clip, clip CI
    assert [r[1] for r in by_clip] == [1.0, 0.0]  # filtered to clip, the win rate is clip's alone
    table, _, _ = c.predict("ui-test", ["clip"], "counting", None, api_name="/leaderboard")
    assert table["headers"] == ["generator", "clip ↑ [counting]"]


def test_evaluation_of_the_committed_zoo_generators(app):
    """The embedded default end to end: an N-step and a one-shot zoo generator × 4 shapes prompts."""
    zoo = ui_models.zoo_generators()
    assert {"zoo/diffusion", "zoo/gan"} <= set(zoo), zoo  # committed weights (zoo/README.md)
    status, gallery, scores = client(app).predict(["zoo/diffusion", "zoo/gan"], "", FORM, "shapes:4:0:test", 1,
                                                  ["clip", "oracle", "speed"], 8, 0, "", "ui-zoo",
                                                  api_name="/evaluate")  # fmt: skip
    rows = assert_scored(status, gallery, scores, size=64)
    assert {g for g, _ in rows} == {"diffusion", "gan"}
    # the form's 8 steps reached diffusion and left the GAN at its one pass
    with ResultsDB(app.tmp / "results.db") as db:
        (run,) = db.runs("ui-zoo")
        nfe = {r.generator: r.value for r in db.results(run.run_id) if r.metric == "nfe"}
    diffusion = app.ctx.models.generator("zoo/diffusion")
    assert nfe == {"diffusion": diffusion.nfe(steps=8), "gan": 1} and diffusion.nfe() != nfe["diffusion"], nfe


def test_evaluation_problems_are_answered_with_a_message(app):
    c = client(app)

    def evaluate(picked, typed="", recipe=FORM, prompts="shapes:4:0:test", metrics=("clip",), reference=""):
        return c.predict(
            picked, typed, recipe, prompts, 1, list(metrics), 2, 32, reference, "ui-bad", api_name="/evaluate"
        )

    for args, message in [
        (([],), "choose at least one generator"),
        (([], "hf:nobody/nothing"), "not in the local Hugging Face cache"),
        (([], "dir:/no/such/pipeline"), "no such folder"),
        ((app.generators[:1], "", FORM, "shapes:4:0:test", ("fid",)), "need a reference set"),
        ((app.generators[:1], "", FORM, "nope:x"), "prompt"),
    ]:
        status, gallery, scores = evaluate(*args)
        assert status.startswith("**Cannot do that:**") and message in status, (message, status)
        assert gallery == [] and scores["data"] == []


def test_compare_every_generator_side_by_side(app):
    c = client(app)
    prompt = next(iter(shapes_examples(app.ctx.config.compare_prompts)))
    gallery, table, note = compare(c, app, prompt, seed=3)
    assert len(gallery) == 2 and len(table["data"]) == 2 and "CLIP score" in note
    for _, seconds, clip, verdict in table["data"]:
        assert seconds > 0 and 0 <= clip <= 100
        assert verdict == "correct" or verdict.startswith("wrong: ")  # the oracle knows this prompt's truth
    again, _, _ = compare(c, app, prompt, seed=3)
    first = [np.asarray(Image.open(g["image"])) for g in gallery]
    assert all(np.array_equal(a, np.asarray(Image.open(g["image"]))) for a, g in zip(first, again))
    _, table, _ = compare(c, app, "a cat on a sofa", seed=3)
    assert all(r[3].startswith("n/a") for r in table["data"])  # outside the shapes world: no verdict


def test_compare_leaves_a_one_shot_gan_at_its_own_settings(app, tmp_path):
    gan = f"dir:{save_toy_gan(tmp_path / 'toy-gan')}"  # takes neither steps nor size
    gallery, table, note = compare(client(app), app, "a red circle", typed=gan)
    assert len(gallery) == 3 and all(r[1] is not None and r[1] >= 0 for r in table["data"]), table  # all timed
    assert "toy-gan takes no steps, size" in note


def test_one_pipeline_has_one_lock_whatever_its_spelling(app):
    spec = app.generators[0]
    models = app.ctx.models
    assert models.generator(spec + "/") is models.generator(spec)

    def other_job() -> None:
        with models.using([spec + "/"]):
            pass

    with ThreadPoolExecutor(1) as pool:
        with models.using([spec]):  # another job on the same folder spelled with a trailing slash must wait
            waiting = pool.submit(other_job)
            time.sleep(0.3)
            assert not waiting.done()
        waiting.result(timeout=10)


def test_models_stay_loaded_across_requests(app):
    ext = app.ctx.models.extractor(app.ctx.config.extractor)
    gen = app.ctx.models.generator(app.generators[0])
    compare(client(app), app, "a red circle")
    assert app.ctx.models.extractor(app.ctx.config.extractor) is ext
    assert app.ctx.models.generator(app.generators[0]) is gen


def test_three_concurrent_clients_are_all_served(app):
    clients = [client(app) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda ic: compare(ic[1], app, "a blue square", seed=ic[0]), enumerate(clients)))
    for gallery, table, _ in results:
        assert len(gallery) == 2 and all(r[1] > 0 for r in table["data"])
    assert len({tuple(np.asarray(Image.open(r[0][0]["image"])).ravel()[:64]) for r in results}) == 3  # own seeds


def test_lora_personalization_returns_weights_that_load(app, tmp_path):
    from diffusers import DiffusionPipeline

    sd = app.generators[0]
    job = personalize(client(app), HOUSEMARK.image_paths(), model=sd, submit=True)
    bars = set()
    while not job.done():  # the training loop's tqdm bar reaches the client through gr.Progress(track_tqdm=True)
        bars |= {(p.desc, p.length) for p in job.status().progress_data or []}
        time.sleep(0.01)
    status, gallery, figures, zipped = job.result()
    assert ("DreamBooth LoRA", 20) in bars
    assert status.startswith("**Trained** lora for 20 steps on 4 images"), status
    assert len(gallery) == 2 * 3 and [g["caption"].split(":")[0] for g in gallery[:2]] == ["before", "after"]
    metrics = {r[0]: r for r in figures["data"]}
    assert {"clip_i", "clip_t", "dino"} <= set(metrics) and all(r[3] == 3 for r in metrics.values())
    with zipfile.ZipFile(zipped) as zf:
        assert {"pytorch_lora_weights.safetensors", "config.json"} <= set(zf.namelist())
        zf.extractall(tmp_path / "weights")
    pipe = DiffusionPipeline.from_pretrained(sd.removeprefix("dir:"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def sample():
        gen = torch.Generator().manual_seed(0)
        return pipe("a photo of <s*>", num_inference_steps=2, generator=gen, output_type="np").images[0]

    before = sample()
    pipe.load_lora_weights(str(tmp_path / "weights"))  # diffusers' own loader, from the unzipped download
    assert pipe.get_active_adapters() and np.abs(sample() - before).max() > 0
    uploads = sorted((app.tmp / "work" / "sessions").rglob("images/*"))
    assert [p.name for p in uploads[-4:]] == ["00-0.png", "01-1.png", "02-2.png", "03-3.png"]


def test_bad_uploads_and_fields_are_answered_with_a_message(app, tmp_path):
    c = client(app)
    good = HOUSEMARK.image_paths()[0]
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = tmp_path / "huge.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(big)
    many = []
    for i in range(21):
        many.append(tmp_path / f"{i}.png")
        Image.open(good).save(many[-1])
    cases = [
        ([good, text], {}, "notes.png (not an image"),
        ([big], {}, "huge.png (1.0 MB; the limit is 0.5 MB)"),
        (many, {}, "21 files uploaded; personalization takes 1 to 20 images"),
        ([], {}, "upload 1 to 20 images"),
        ([good], {"token": "two words"}, "contains whitespace"),
        ([good], {"class_word": "dog{}"}, "class word must be a plain noun"),
        ([good], {"class_word": "<s*>"}, "class word must be a plain noun"),
        ([good], {"model": None}, "no base model"),
    ]
    for files, fields, message in cases:
        status, gallery, figures, zipped = personalize(c, files, **({"model": app.generators[0]} | fields))
        assert status.startswith("**Cannot do that:**") and message in status, (message, status)
        assert gallery == [] and zipped is None
    status, *_ = personalize(c, [good], typed="dir:/no/such/model")
    assert "no such folder" in status
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="less than minimum"):  # gradio checks the slider's range itself
        personalize(c, [good], steps=0, model=app.generators[0])


def test_login_is_required(app):
    assert httpx.get(app.url + "config").status_code == 401
    bad = httpx.post(app.url + "login", data={"username": "ann", "password": "wrong"})
    assert bad.status_code == 400
    assert client(app).predict("", 0, app.generators, "", 2, 32, api_name="/compare")[2].startswith("**Cannot")


def test_binds_localhost_unless_told_otherwise(app):
    assert app.url.startswith("http://127.0.0.1:")
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.auth, args.db) == ("127.0.0.1", 7860, None, "results.db")
    assert parse_auth("ann:pa:ss") == ("ann", "pa:ss")
    with pytest.raises(UserError, match="USER:PASSWORD"):
        parse_auth("ann")


def test_generator_list_without_and_with_a_zoo(tmp_path, monkeypatch):
    monkeypatch.setattr(ui_models, "zoo_dir", lambda: tmp_path / "zoo")
    assert ui_models.zoo_generators() == []
    for name in ("diffusion", "gan", "judge"):
        (tmp_path / "zoo" / name).mkdir(parents=True)
    (tmp_path / "zoo" / "diffusion" / "model_index.json").write_text("{}")
    assert ui_models.zoo_generators() == ["zoo/diffusion"]
    with pytest.raises(UserError, match="choose at least one generator"):
        ui_models.chosen_specs([], " \n")
    with pytest.raises(UserError, match="unknown generator"):
        ui_models.chosen_specs([], "not-a-spec")
    taken: set[str] = set()
    assert [ui_models.short_label(s, taken) for s in ("zoo/gan", "dir:/m/gan/", "hf:org/sd@v2")] == [
        "gan",
        "gan-2",
        "sd",
    ]


def test_a_closed_tab_keeps_its_folder_until_its_job_ends(tmp_path):
    from types import SimpleNamespace

    from evalkit.ui.context import UiContext

    ctx = UiContext(AppConfig(work_dir=tmp_path))
    request = SimpleNamespace(session_hash="abc")
    with ctx.session_job(request) as folder:
        (folder / "run").mkdir(parents=True)
        ctx.forget_session(request)  # the tab closes while a training writes here
        assert (folder / "run").is_dir()
    assert not folder.exists()  # removed when the job ended
    assert ctx.session(request) == folder and folder.is_dir()  # the session comes back
    ctx.forget_session(request)  # no job running: removed at once
    assert not folder.exists()


def test_uploads_are_sanitized_and_checked(tmp_path):
    assert sanitize_name("../../etc/pass wd.PNG", 3) == "03-pass_wd.png"
    assert sanitize_name("..\\..\\x.jpg", 0) == "00-x.jpg" and sanitize_name("", 1) == "01-image"
    src = tmp_path / "a b.png"
    Image.new("RGB", (16, 16)).save(src)
    stored = store_images([{"path": str(src), "orig_name": "../../evil name.png"}], tmp_path / "dest", max_images=2,
                          max_mb=1)  # fmt: skip
    assert stored == [tmp_path / "dest" / "00-evil_name.png"]
    with pytest.raises(UserError, match="upload missing"):
        store_images([str(tmp_path / "gone.png")], tmp_path / "d2", max_images=2, max_mb=1)
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    (tmp_path / "tiny.png").write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="tiny.png"):
        store_images([str(tmp_path / "tiny.png")], tmp_path / "d3", max_images=2, max_mb=1)


def test_config_rejects_nonsense(tmp_path):
    with pytest.raises(UserError):
        AppConfig(work_dir=tmp_path, concurrency=0)
    assert Path(AppConfig(work_dir=tmp_path).work_dir) == tmp_path


def test_recipe_files_become_runs_with_the_servers_extractor(tmp_path, tiny_sd_dir):
    from evalkit.ui.context import UiContext
    from evalkit.ui.evaluate_tab import build_recipe, recipe_files

    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "mine.yaml").write_text(
        "name: mine\nprompts: shapes:4:0:test\ngenerators: [{spec: zoo/diffusion}]\nmetrics: [clip, oracle]\n"
    )
    (recipes / "validity.yaml").write_text("kind: validity\n")
    ctx = UiContext(AppConfig(recipes_dir=recipes, runs_dir=tmp_path / "runs", work_dir=tmp_path, extractor="judge:X"))
    assert recipe_files(recipes) == ["mine.yaml"]
    kept = build_recipe(ctx, [], "mine.yaml", "", 1, [])
    assert [g.spec for g in kept.generators] == ["zoo/diffusion"] and kept.extractors == ["judge:X"]
    gan = f"dir:{save_toy_gan(tmp_path / 'toy-gan')}"
    swapped = build_recipe(ctx, [f"dir:{tiny_sd_dir}", gan], "mine.yaml", "", 1, [], steps=2)
    # the form's steps reach the generators that take steps; the one-shot GAN keeps its own settings
    assert [(g.label, g.params) for g in swapped.generators] == [(tiny_sd_dir.name, {"steps": 2}), ("toy-gan", {})]
    assert swapped.out_dir == tmp_path / "runs" / f"mine-{swapped.content_hash()[:10]}" != kept.out_dir
    with pytest.raises(UserError, match="unknown recipe"):
        build_recipe(ctx, [], "../mine.yaml", "", 1, [])
    with pytest.raises(UserError, match="the form: metrics: unknown metric 'clipp' \\(did you mean 'clip'"):
        build_recipe(ctx, ["dir:/m/tiny"], None, "shapes:4", 1, ["clipp"])
