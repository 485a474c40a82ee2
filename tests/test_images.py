"""evalkit.data.images: every odd but valid image decodes to upright RGB; every bad one is a typed skip."""

import io
import json
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from evalkit.data.images import (
    DEFAULT_MIN_SIDE,
    SKIP_REASONS,
    ImageSkip,
    SkipCounter,
    load_image,
    to_rgb,
    try_load_image,
)
from evalkit.errors import UserError


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def skip_reason(source, **kw) -> str:
    with pytest.raises(ImageSkip) as e:
        load_image(source, **kw)
    assert e.value.reason in SKIP_REASONS
    return e.value.reason


# ---------------------------------------------------------------------------- accepted inputs


def test_rgb_png_bytes_and_path_round_trip(tmp_path):
    im = noise(20, 12)
    data = encode(im, "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    for source in (data, bytearray(data), memoryview(data), path, str(path)):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (20, 12)
        assert np.array_equal(np.asarray(out), np.asarray(im))


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(encode(cmyk, "JPEG", quality=95))
    assert out.mode == "RGB" and out.size == (32, 16)
    r, g, b = np.asarray(out)[8, 16].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_palette_with_transparency_is_composited_on_white():
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    im.paste(1, (8, 0, 16, 16))  # right half red, left half palette index 0 (blue, transparent)
    out = load_image(encode(im, "PNG", transparency=0))
    assert out.mode == "RGB"
    assert out.getpixel((2, 8)) == (255, 255, 255)
    assert out.getpixel((12, 8)) == (255, 0, 0)


def test_rgb_with_a_transparent_colour_key_is_composited_on_white():
    im = Image.new("RGB", (16, 16), (1, 2, 3))
    im.paste((200, 0, 0), (8, 0, 16, 16))
    out = load_image(encode(im, "PNG", transparency=(1, 2, 3)))  # a tRNS chunk: (1, 2, 3) is transparent
    assert out.getpixel((2, 8)) == (255, 255, 255) and out.getpixel((12, 8)) == (200, 0, 0)


def test_dark_16bit_pgm_stays_dark():
    for value, want in ((200, 1), (60000, 233)):  # the file's bit depth decides the scale, not its brightest pixel
        out = load_image(encode(Image.fromarray(np.full((8, 8), value, np.uint16)), "PPM"))
        assert out.getpixel((0, 0)) == (want, want, want), value


def test_grayscale_l_and_la():
    out = load_image(encode(Image.new("L", (10, 10), 77), "PNG"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (77, 77, 77)
    la = Image.new("LA", (10, 10), (0, 0))
    la.paste((0, 255), (5, 0, 10, 10))
    out = load_image(encode(la, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((9, 0)) == (0, 0, 0)


def test_16bit_grayscale_is_scaled_not_clipped():
    a = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    src = Image.fromarray(a)
    assert src.mode == "I;16"
    data = encode(src, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(load_image(data))
    assert out[0, 0].tolist() == [0, 0, 0] and out[-1, -1].tolist() == [255, 255, 255]
    mid = out[8, 0, 0]
    assert 100 < mid < 160  # PIL's own convert would clip this to 255
    # and 32-bit "I" holding 16-bit values, and float images in [0, 1]
    assert np.asarray(to_rgb(Image.fromarray(a.astype(np.int32))))[8, 0, 0] == mid
    f = to_rgb(Image.fromarray(np.full((8, 8), 0.5, np.float32)))
    assert f.getpixel((0, 0)) == (128, 128, 128)


def test_rgba_is_composited_on_white():
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    im.paste((0, 0, 255, 255), (0, 0, 5, 10))
    im.paste((0, 0, 0, 128), (5, 0, 10, 10))
    out = load_image(encode(im, "PNG"))
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert out.getpixel((7, 0)) == (127, 127, 127)  # half-transparent black over white


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (255, 255, 255))
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90° clockwise
    data = encode(im, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data)
    assert out.size == (20, 40)
    top = np.asarray(out)[2, 10]
    bottom = np.asarray(out)[37, 10]
    assert top[0] > 200 and top[1] < 60  # the left edge is now on top
    assert bottom.min() > 200


def test_pil_image_input_and_modes_without_alpha():
    for mode in ("1", "YCbCr", "HSV", "I;16B", "RGBX"):
        out = load_image(Image.new(mode, (9, 9)))
        assert out.mode == "RGB" and out.size == (9, 9)


def test_gif_first_frame():
    frames = [Image.new("P", (12, 12), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = load_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (12, 12)


# ---------------------------------------------------------------------------- skipped inputs


def test_truncated_png_and_jpeg():
    png = encode(noise(64, 64), "PNG")
    jpg = encode(noise(64, 64), "JPEG")
    assert skip_reason(png[: len(png) // 2]) == "truncated"
    assert skip_reason(jpg[: len(jpg) // 2]) == "truncated"
    assert skip_reason(jpg[:300]) == "truncated"


def test_corrupt_and_non_image_data(tmp_path):
    png = bytearray(encode(noise(32, 32), "PNG"))
    png[100:140] = b"\x00" * 40  # inside the IDAT stream
    assert skip_reason(bytes(png)) in ("corrupt", "truncated")
    # a valid PNG signature and header followed by garbage chunk data
    head = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
    assert skip_reason(head + png_chunk(b"IDAT", b"not zlib data") + png_chunk(b"IEND", b"")) == "corrupt"
    assert skip_reason(np.random.default_rng(1).bytes(500)) == "not_image"
    text = tmp_path / "readme.jpg"
    text.write_text("<html>404 not found</html>")
    assert skip_reason(text) == "not_image"


def test_refused_format_is_not_image():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert skip_reason(eps) == "not_image"


def test_empty_and_missing(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    assert skip_reason(b"") == "empty"
    assert skip_reason(tmp_path / "zero.png") == "empty"
    assert skip_reason(tmp_path / "nope.png") == "missing"


def test_too_small():
    assert skip_reason(encode(Image.new("RGB", (1, 1)), "PNG")) == "too_small"
    assert skip_reason(encode(Image.new("RGB", (100, DEFAULT_MIN_SIDE - 1)), "PNG")) == "too_small"
    assert load_image(encode(Image.new("RGB", (1, 1)), "PNG"), min_side=1).size == (1, 1)
    assert skip_reason(encode(Image.new("RGB", (30, 30)), "PNG"), min_side=32) == "too_small"


def test_decompression_bomb_is_refused_before_allocation():
    # A PNG whose header claims 60000x60000 (3.6 Gpx, ~11 GB as RGB) with almost no data.
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )
    assert skip_reason(bomb) == "decompression_bomb"
    # Over our cap but under PIL's own limit: our check, from the header alone.
    ihdr = struct.pack(">IIBBBBB", 5000, 5000, 8, 2, 0, 0, 0)
    big = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b""))
        + png_chunk(b"IEND", b"")
    )
    assert skip_reason(big, max_pixels=1_000_000) == "decompression_bomb"
    assert skip_reason(encode(noise(64, 64), "PNG"), max_pixels=64 * 63) == "decompression_bomb"


def test_skip_is_a_user_error_with_a_one_line_message(tmp_path):
    with pytest.raises(UserError) as e:
        load_image(tmp_path / "nope.png")
    assert "\n" not in str(e.value) and "missing" in str(e.value) and "nope.png" in str(e.value)
    back = pickle.loads(pickle.dumps(e.value))
    assert (back.reason, back.source, str(back)) == ("missing", str(tmp_path / "nope.png"), str(e.value))


# ---------------------------------------------------------------------------- counting


def test_skip_counter_text_json_and_merge():
    c = SkipCounter(max_examples=2)
    assert str(c) == "skipped 0" and not c
    for source in (b"", b"x" * 10, b"y" * 10, b"z" * 10):
        assert try_load_image(source, c) is None
    assert try_load_image(encode(noise(16, 16), "PNG"), c).size == (16, 16)
    c.add("truncated", "shard0/000001.jpg")
    assert c.total == 5 and c.as_dict() == {"not_image": 3, "empty": 1, "truncated": 1}
    assert str(c) == "skipped 5 (not_image: 3, empty: 1, truncated: 1)"
    other = SkipCounter()
    other.add("truncated", "b.jpg")
    c.update(other)
    j = json.loads(json.dumps(c.to_json()))
    assert j["total"] == 6 and j["reasons"]["truncated"] == 2
    assert j["examples"]["truncated"] == ["shard0/000001.jpg", "b.jpg"]
