"""personalize inputs: subject folders of any images are accepted, bad folders, tokens and configs fail
with one clear line before any model loads."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from evalkit.errors import UserError
from evalkit.generators.testing import byte_tokenizer
from personalize.cli import main
from personalize.config import TrainConfig
from personalize.inputs import check_new_tokens, fit_square, load_subject_images, new_token_names
from personalize.subjects import HOUSEMARK


def subject_image(size: int = 64, placement: int = 0) -> Image.Image:
    return HOUSEMARK.render(HOUSEMARK.placements[placement], size=size)


def exif_rotated_jpeg(im: Image.Image) -> bytes:
    """``im`` stored rotated by 90° with EXIF orientation 6 (rotate 270° to display), as phones write it."""
    stored = im.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_any_size_format_and_orientation_is_accepted(tmp_path):
    base = subject_image(64)
    base.convert("CMYK").save(tmp_path / "a_cmyk.jpg", quality=95)
    rgba = base.convert("RGBA")
    alpha = Image.new("L", base.size, 255)
    alpha.paste(0, (0, 0, 8, 8))  # a transparent black corner: dropping alpha would leave it black
    rgba.paste((0, 0, 0), (0, 0, 8, 8))
    rgba.putalpha(alpha)
    rgba.save(tmp_path / "b_rgba.png")
    (tmp_path / "c_exif.jpg").write_bytes(exif_rotated_jpeg(subject_image(48, 1).resize((64, 48))))
    subject_image(12, 2).save(tmp_path / "d_tiny.webp", lossless=True)
    subject_image(1200, 3).crop((0, 0, 1200, 700)).save(tmp_path / "e_large.png")
    Image.fromarray(np.asarray(subject_image(40))[..., 0]).save(tmp_path / "f_gray.bmp")
    (tmp_path / ".DS_Store").write_bytes(b"\0\1junk")  # hidden files are ignored
    (tmp_path / "sub").mkdir()  # so are folders
    items = load_subject_images(tmp_path)
    assert [it.path.name for it in items] == ["a_cmyk.jpg", "b_rgba.png", "c_exif.jpg", "d_tiny.webp", "e_large.png",
                                              "f_gray.bmp"]  # fmt: skip
    assert all(it.image.mode == "RGB" for it in items)
    assert items[2].image.size == (64, 48)  # EXIF orientation applied: shown as stored before rotation
    assert items[4].image.size == (1200, 700)
    for it in items:
        sq = fit_square(it.image, 32)
        assert sq.size == (32, 32) and sq.mode == "RGB"
    assert items[1].image.getpixel((2, 2)) == (255, 255, 255)  # transparency lands on white
    # the CMYK and RGBA copies still show the subject's colors
    for it in items[:2]:
        a = np.asarray(fit_square(it.image, 64), dtype=int)
        assert np.abs(a[20, 32] - (245, 220, 30)).max() < 30 and np.abs(a[40, 32] - (130, 40, 170)).max() < 30


def test_captions_are_read_with_the_token_placeholder(tmp_path):
    subject_image().save(tmp_path / "0.png")
    (tmp_path / "0.txt").write_text("a photo of <s*> on a white background\n\n{token} on white\n")
    items = load_subject_images(tmp_path, token="<s*>")
    assert items[0].captions == ["a photo of {token} on a white background", "{token} on white"]
    shipped = load_subject_images(HOUSEMARK.folder)
    assert len(shipped) == 4 and all(len(it.captions) == 3 for it in shipped)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "no images"),
        (lambda d: [subject_image(16).save(d / f"{i:02d}.png") for i in range(21)], "1 to 20 images"),
        (
            lambda d: (subject_image().save(d / "a.png"), (d / "notes.pdf").write_text("hello")),
            r"notes.pdf \(not_image",
        ),
        (lambda d: (subject_image().save(d / "a.png"), (d / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0trunc")), "b.jpg"),
        (lambda d: (subject_image().save(d / "a.png"), (d / "b.txt").write_text("{token}")), "without an image"),
        (lambda d: (subject_image().save(d / "a.png"), (d / "a.txt").write_text("a photo")), "does not mention"),
        (lambda d: (subject_image().save(d / "a.png"), (d / "a.txt").write_text("\n")), "is empty"),
        (lambda d: subject_image(4).save(d / "a.png"), "too_small"),
    ],
)
def test_bad_subject_folders_are_clear_errors(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(UserError, match=message):
        load_subject_images(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_subject_images(tmp_path / "nope")


def test_new_tokens_must_not_be_in_the_vocabulary():
    tok = byte_tokenizer()
    assert check_new_tokens(tok, "<s*>", 3) == ["<s*>", "<s*>_1", "<s*>_2"] == new_token_names("<s*>", 3)
    for taken in ("a", "z"):  # single characters are whole entries of the byte vocabulary (with and without </w>)
        with pytest.raises(UserError, match="already in the tokenizer's vocabulary"):
            check_new_tokens(tok, taken)
    tok.add_tokens(["<cat>"])
    with pytest.raises(UserError, match="already in the tokenizer's vocabulary"):
        check_new_tokens(tok, "<cat>")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"token": "my dog"}, "whitespace"),
        ({"token": " "}, "empty"),
        ({"token": "{x}"}, "braces"),
        ({"method": "hypernet"}, "unknown method"),
        ({"class_word": "<s*>"}, "must differ"),
        ({"steps": 0}, "steps must be a positive number"),
        ({"lr": -1.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number, got nan"),  # NaN passes every comparison
        ({"prior_loss_weight": float("nan")}, "prior_loss_weight must be a finite number"),
        ({"weight_decay": float("inf")}, "weight_decay must be a finite number"),
        ({"prior_preservation": True}, "needs a class"),
        ({"prior_preservation": True, "method": "ti", "class_word": "dog"}, "not textual inversion"),
        ({"train_text_encoder": True, "method": "ti"}, "DreamBooth"),
        ({"flip_p": 2.0}, "flip_p"),
        ({"images": ""}, "--images"),
    ],
)
def test_config_errors(change, message):
    cfg = TrainConfig(images="x", out="y") if "images" not in change else TrainConfig(out="y")
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(UserError, match=message):
        cfg.resolved()


def test_method_defaults_fill_in():
    cfg = TrainConfig(method="ti", images="x", out="y", class_word="square").resolved()
    assert (cfg.steps, cfg.lr, cfg.initializer) == (1500, 5e-3, "square")
    cfg = TrainConfig(method="lora", images="x", out="y", class_word="apple", rank=4).resolved()
    assert (cfg.lora_alpha, cfg.class_prompt) == (4.0, "a photo of an apple")


def test_cli_reports_input_errors_in_one_line_before_loading_a_model(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    code = main(["train", "--method", "ti", "--images", str(tmp_path / "imgs"), "--out", str(tmp_path / "run"),
                 "--model", str(tmp_path / "no-model")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no images in") and err.count("\n") == 1
    shutil.copytree(HOUSEMARK.folder, tmp_path / "hm")
    code = main(["train", "--method", "lora", "--images", str(tmp_path / "hm"), "--out", str(tmp_path / "run"),
                 "--token", "my token"])  # fmt: skip
    assert code == 2 and "whitespace" in capsys.readouterr().err
    code = main(["train", "--images", str(tmp_path / "hm"), "--out", str(tmp_path / "run"),
                 "--model", str(tmp_path / "no-model")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "no-model" in err and err.count("\n") == 1


def test_text_encoder_training_defaults_per_method_and_the_flag_overrides_it():
    import argparse

    from personalize.config import add_train_args, config_from_args

    resolved = {m: TrainConfig(method=m, images="x", out="y").resolved().train_text_encoder for m in ("ti", "lora")}
    assert resolved == {"ti": False, "lora": False}
    assert TrainConfig(method="dreambooth", images="x", out="y").resolved().train_text_encoder is True
    p = argparse.ArgumentParser()
    add_train_args(p, method="dreambooth")
    base = ["--images", "x", "--out", "y"]
    assert config_from_args(p.parse_args(base), "dreambooth").resolved().train_text_encoder is True
    off = config_from_args(p.parse_args(base + ["--no-train-text-encoder"]), "dreambooth").resolved()
    assert off.train_text_encoder is False
