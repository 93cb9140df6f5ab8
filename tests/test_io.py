"""advprotect.io: reading, writing, discovery and output-location checks (fast, no models)."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import PurePosixPath

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageOps, JpegImagePlugin

import _io_corpus as C
from advprotect.io import (
    TMP_MARKER,
    ImageReadError,
    ImageWriteError,
    UsageError,
    apply_orientation,
    check_output_location,
    discover,
    output_relpath,
    read_image,
    write_image,
)


def _u8(t: torch.Tensor) -> np.ndarray:
    return np.rint(t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


# --------------------------------------------------------------------------- reading: conversions


def test_rgb_png_roundtrip_is_pixel_exact(tmp_path):
    src = C.save(Image.fromarray(C.smooth_rgb()), tmp_path / "a.png")
    rec = read_image(src)
    assert rec.pixels.dtype == torch.float32 and rec.pixels.shape == (3, 24, 32)
    assert 0.0 <= float(rec.pixels.min()) and float(rec.pixels.max()) <= 1.0
    assert rec.format == "PNG" and rec.mode == "RGB" and rec.bit_depth == 8 and rec.alpha is None
    out = write_image(tmp_path / "out" / "a.png", rec.pixels, rec)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(src)))
    assert list((tmp_path / "out").iterdir()) == [out]  # no temp file left behind


def test_exif_orientation_applied(tmp_path):
    base = Image.fromarray(C.smooth_rgb(20, 40, seed=1))
    src = C.save(base, tmp_path / "r.jpg", quality=95, exif=C.exif_bytes(orientation=6))
    rec = read_image(src)
    assert rec.orientation == 6
    assert rec.size == (20, 40)  # width and height swapped
    expected = np.asarray(ImageOps.exif_transpose(Image.open(src)))
    assert np.array_equal(_u8(rec.pixels), expected)
    out = write_image(tmp_path / "o.jpg", rec.pixels, rec, keep_metadata=True)
    with Image.open(out) as im:
        assert im.size == (20, 40)
        assert im.getexif().get(C.ORIENTATION) == 1  # already upright: must not be rotated twice


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_orientation_matches_pillow(orientation):
    base = Image.fromarray(C.smooth_rgb(5, 7))
    buf = io.BytesIO()
    base.save(buf, "PNG", exif=C.exif_bytes(orientation=orientation))
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue()))))
    assert np.array_equal(apply_orientation(np.asarray(base), orientation), ref)


def test_gps_stripped_by_default_and_kept_on_request(tmp_path):
    src = C.save(Image.fromarray(C.smooth_rgb()), tmp_path / "gps.jpg", quality=95,
                 exif=C.exif_bytes(orientation=1, gps=True))
    rec = read_image(src)
    assert rec.exif
    plain = write_image(tmp_path / "plain.jpg", rec.pixels, rec)
    with Image.open(plain) as im:
        assert "exif" not in im.info
        ex = im.getexif()
        assert C.GPS_IFD not in ex and not ex.get_ifd(C.GPS_IFD) and 0x010F not in ex
    kept = write_image(tmp_path / "kept.jpg", rec.pixels, rec, keep_metadata=True)
    with Image.open(kept) as im:
        ex = im.getexif()
        assert ex.get(0x010F) == "TestCam"
        assert ex.get_ifd(C.GPS_IFD).get(1) == "N"
        assert ex.get_ifd(C.EXIF_IFD).get(0x9003) == "2024:05:01 12:00:00"
    for fmt in ("png", "webp", "tiff"):  # the other formats strip too
        out = write_image(tmp_path / f"plain.{fmt}", rec.pixels, rec)
        with Image.open(out) as im:
            assert not im.getexif().get_ifd(C.GPS_IFD), fmt


def test_alpha_restored(tmp_path):
    rgb = C.smooth_rgb()
    alpha = np.tile(np.arange(32, dtype=np.uint8)[None, :] * 8, (24, 1))
    src = C.save(Image.fromarray(np.dstack([rgb, alpha])), tmp_path / "a.png")
    rec = read_image(src)
    assert rec.alpha is not None and rec.alpha.shape == (24, 32) and rec.pixels.shape == (3, 24, 32)
    out = write_image(tmp_path / "o.png", rec.pixels, rec)
    with Image.open(out) as im:
        assert im.mode == "RGBA"
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(src)))
    notes: list[str] = []
    out = write_image(tmp_path / "o.jpg", rec.pixels, rec, warnings_out=notes)
    assert Image.open(out).mode == "RGB" and any("transparency" in n for n in notes)


@pytest.mark.parametrize("ext", ["png", "jpg", "tif", "bmp"])
def test_grayscale_stays_grayscale(tmp_path, ext):
    src = C.save(Image.fromarray(C.smooth_rgb()[..., 1]), tmp_path / f"g.{ext}")
    rec = read_image(src)
    assert rec.is_gray and rec.mode == "L"
    assert torch.equal(rec.pixels[0], rec.pixels[1]) and torch.equal(rec.pixels[1], rec.pixels[2])
    out = write_image(tmp_path / "out" / f"g.{ext}", rec.pixels, rec)
    with Image.open(out) as im:
        assert im.mode in ("L", "P" if ext == "bmp" else "L")
        if ext != "jpg":
            assert np.array_equal(np.asarray(im.convert("L")), np.asarray(Image.open(src).convert("L")))


def test_gray_alpha(tmp_path):
    la = np.dstack([C.smooth_rgb()[..., 0], np.full((24, 32), 128, np.uint8)])
    src = C.save(Image.fromarray(la, mode="LA"), tmp_path / "la.png")
    rec = read_image(src)
    assert rec.is_gray and rec.alpha is not None
    out = write_image(tmp_path / "o.png", rec.pixels, rec)
    with Image.open(out) as im:
        assert im.mode == "LA" and np.array_equal(np.asarray(im), la)


def test_16bit_gray_png_and_tiff_stay_16bit(tmp_path):
    g16 = (np.linspace(0, 65535, 24 * 32).reshape(24, 32)).astype(np.uint16)
    for ext in ("png", "tif"):
        src = C.save(Image.fromarray(g16), tmp_path / f"g16.{ext}")
        rec = read_image(src)
        assert rec.bit_depth == 16 and rec.is_gray
        assert abs(float(rec.pixels[0, 0, 1]) - 1 / 65535 * g16[0, 1]) < 1e-7  # not reduced to 8 bits
        out = write_image(tmp_path / "out" / f"g16.{ext}", rec.pixels, rec)
        back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
        assert back.dtype == np.uint16 and back.ndim == 2 and np.array_equal(back, g16), ext


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16bit_colour_stays_16bit(tmp_path, channels, ext):
    rng = np.random.default_rng(channels)
    a = rng.integers(0, 65536, size=(12, 10, channels), dtype=np.uint16)
    src = tmp_path / f"c16.{ext}"
    assert cv2.imwrite(str(src), a)  # BGR(A) order on disk, written by OpenCV, not by us
    rec = read_image(src)
    assert rec.bit_depth == 16 and not rec.is_gray and (rec.alpha is not None) == (channels == 4)
    out = write_image(tmp_path / "out" / f"c16.{ext}", rec.pixels, rec, keep_metadata=True)
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, a)
    rec2 = read_image(out)
    assert torch.equal(rec2.pixels, rec.pixels)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    src = C.save(Image.fromarray(C.smooth_rgb()).convert("CMYK"), tmp_path / "c.jpg", quality=95)
    rec = read_image(src)
    assert rec.mode == "CMYK" and rec.pixels.shape == (3, 24, 32)
    assert any("CMYK" in w for w in rec.warnings)
    ref = np.asarray(Image.open(src).convert("RGB"))
    assert np.abs(_u8(rec.pixels).astype(int) - ref).max() <= 1
    out = write_image(tmp_path / "o.jpg", rec.pixels, rec)
    assert Image.open(out).mode == "RGB"


def test_palette_gif_and_animated_gif(tmp_path):
    files = {
        "p": C.save(Image.fromarray(C.smooth_rgb()).convert("P", palette=Image.Palette.ADAPTIVE), tmp_path / "p.gif"),
    }
    rec = read_image(files["p"])
    assert rec.mode == "P" and rec.format == "GIF" and rec.pixels.shape == (3, 24, 32) and not rec.warnings
    assert np.array_equal(_u8(rec.pixels), np.asarray(Image.open(files["p"]).convert("RGB")))
    assert output_relpath("x/p.gif") == PurePosixPath("x/p.png")  # GIF is written as PNG
    frames = [Image.fromarray(C.smooth_rgb(seed=i)).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(3)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    rec = read_image(tmp_path / "a.gif")
    assert rec.n_frames == 3 and any("animated GIF with 3 frames" in w for w in rec.warnings)
    assert np.array_equal(_u8(rec.pixels), np.asarray(frames[0].convert("RGB")))


def test_palette_with_transparency_keeps_alpha(tmp_path):
    im = Image.fromarray(C.smooth_rgb()).convert("P", palette=Image.Palette.ADAPTIVE)
    im.info["transparency"] = 0
    src = C.save(im, tmp_path / "t.png", transparency=0)
    rec = read_image(src)
    assert rec.alpha is not None
    assert np.array_equal((rec.alpha.numpy() == 0), np.asarray(Image.open(src)) == 0)


def test_one_bit_and_32bit_inputs(tmp_path):
    bw = Image.fromarray(C.smooth_rgb()[..., 0] > 100)
    rec = read_image(C.save(bw, tmp_path / "bw.png"))
    assert rec.is_gray and rec.bit_depth == 1 and set(np.unique(rec.pixels.numpy())) <= {0.0, 1.0}
    f = (np.linspace(0, 1, 24 * 32).reshape(24, 32)).astype(np.float32)
    rec = read_image(C.save(Image.fromarray(f, mode="F"), tmp_path / "f.tif"))
    assert rec.is_gray and rec.bit_depth == 32 and torch.allclose(rec.pixels[0], torch.from_numpy(f))
    out = write_image(tmp_path / "o.tif", rec.pixels, rec)
    assert Image.open(out).mode == "F"
    rgba32 = C.save(Image.fromarray(np.dstack([C.smooth_rgb(), np.full((24, 32), 255, np.uint8)])), tmp_path / "o.png")
    assert read_image(rgba32).alpha is None  # fully opaque alpha is not carried around


def test_icc_profile_kept(tmp_path):
    icc = C.srgb_icc()
    src = C.save(Image.fromarray(C.smooth_rgb()), tmp_path / "icc.jpg", quality=95, icc_profile=icc)
    rec = read_image(src)
    assert rec.icc_profile == icc
    for ext in ("jpg", "png", "webp", "tif"):
        out = write_image(tmp_path / f"o.{ext}", rec.pixels, rec)
        assert Image.open(out).info.get("icc_profile") == icc, ext


def test_jpeg_quality_and_444(tmp_path):
    src = C.save(Image.fromarray(C.smooth_rgb()), tmp_path / "a.png")
    rec = read_image(src)
    hi = write_image(tmp_path / "hi.jpg", rec.pixels, rec)
    lo = write_image(tmp_path / "lo.jpg", rec.pixels, rec, quality=30)
    assert JpegImagePlugin.get_sampling(Image.open(hi)) == 0  # 4:4:4
    assert lo.stat().st_size < hi.stat().st_size
    with pytest.raises(ImageWriteError):
        write_image(tmp_path / "bad.jpg", rec.pixels, rec, quality=0)
    for fmt in ("png", "jpeg", "webp", "tiff", "bmp"):
        out = write_image(tmp_path / f"forced_{fmt}", rec.pixels, rec, fmt=fmt)
        assert Image.open(out).format == fmt.upper()


def test_write_accepts_numpy_gray_and_device_tensors(tmp_path):
    rec = read_image(C.save(Image.fromarray(C.smooth_rgb()), tmp_path / "a.png"))
    out = write_image(tmp_path / "n.png", rec.pixels.numpy() + 0.5, rec)  # out-of-range is clamped
    assert np.asarray(Image.open(out)).min() >= 127
    out = write_image(tmp_path / "no_record.png", torch.rand(3, 8, 9))
    assert Image.open(out).size == (9, 8)
    with pytest.raises(ImageWriteError, match="NaN"):
        write_image(tmp_path / "nan.png", torch.full((3, 4, 4), float("nan")), rec)
    with pytest.raises(ImageWriteError, match="shape"):
        write_image(tmp_path / "shape.png", torch.zeros(2, 3, 4, 5), rec)
    assert not (tmp_path / "nan.png").exists() and not (tmp_path / "shape.png").exists()
    assert not [p for p in tmp_path.iterdir() if TMP_MARKER in p.name]


def test_atomic_write_replaces_and_cleans_up_on_error(tmp_path, monkeypatch):
    rec = read_image(C.save(Image.fromarray(C.smooth_rgb()), tmp_path / "a.png"))
    target = tmp_path / "out" / "x.png"
    write_image(target, rec.pixels, rec)
    before = target.read_bytes()

    import advprotect.io.writer as writer

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.os, "replace", boom)
    with pytest.raises(OSError):
        write_image(target, 1 - rec.pixels, rec)
    assert target.read_bytes() == before  # old output intact
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]  # temp removed


# --------------------------------------------------------------------------- reading: bad input


def test_bad_files_each_get_a_clear_message(tmp_path, monkeypatch):
    files = C.build_corpus(tmp_path / "in")
    how = C.make_unreadable(files["unreadable"], monkeypatch)
    expect = {
        "zero": "empty file (0 bytes)",
        "truncated": "truncated file",
        "text": "not an image",
        "bomb": "exceeds max_pixels",
        "unreadable": "permission denied",
    }
    messages = {}
    for key, snippet in expect.items():
        with pytest.raises(ImageReadError) as ei:
            read_image(files[key])
        assert snippet in str(ei.value), (key, how, str(ei.value))
        assert ei.value.line().startswith(str(files[key]) + ": ")
        messages[key] = str(ei.value)
    assert len(set(messages.values())) == len(messages)
    assert "text file" in messages["text"]
    assert "40000x40000" in messages["bomb"] and "not decoded" in messages["bomb"]
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path / "dir.jpg")
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "missing.jpg")


def test_bomb_check_happens_before_decoding(tmp_path, monkeypatch):
    src = C.png_with_fake_size(tmp_path / "b.png", 30000, 30000)
    small = C.png_with_fake_size(tmp_path / "s.png", 200, 200)

    def no_decode(self, *a, **k):  # pragma: no cover - must not be reached
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    with pytest.raises(ImageReadError, match="exceeds max_pixels"):
        read_image(src, max_pixels=100_000_000)
    with pytest.raises(ImageReadError, match="exceeds max_pixels"):
        read_image(small, max_pixels=1000)


def test_pillow_bomb_limit_does_not_crash_or_warn(tmp_path, monkeypatch):
    """An image above Pillow's own limit but within ours decodes, without a warning (even under
    -W error) and without Pillow's DecompressionBombError; Pillow's setting is restored."""
    src = C.save(Image.fromarray(C.smooth_rgb()), tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 768 px > 2 * 100: Pillow would refuse
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = read_image(src, max_pixels=10_000)
    assert rec.size == (32, 24)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(ImageReadError, match="exceeds max_pixels"):
        read_image(src, max_pixels=500)


def test_wrong_extension_is_read_with_a_warning(tmp_path):
    src = tmp_path / "really_png.jpg"
    Image.fromarray(C.smooth_rgb()).save(src, "PNG")
    rec = read_image(src)
    assert rec.format == "PNG" and any("extension says JPEG" in w for w in rec.warnings)


def test_unsupported_formats_are_refused(tmp_path):
    src = tmp_path / "icon.png"
    Image.fromarray(C.smooth_rgb()).save(src, "ICO")  # a real image, but not a format we accept
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(src)


# --------------------------------------------------------------------------- discovery


def test_discover_folder_sorted_recursive_skipping_hidden(tmp_path):
    files = C.build_corpus(tmp_path / "in")
    items = discover(tmp_path / "in")
    rels = [it.rel.as_posix() for it in items]
    assert rels == sorted(rels, key=lambda r: PurePosixPath(r).parts)
    assert "readme.txt" not in rels and ".hidden.png" not in rels and not any(".cache" in r for r in rels)
    assert {"notes_really.jpg", "zero.jpg", "sub/rotated.jpg", "deep/gray16.png", "animated.gif"} <= set(rels)
    assert len(rels) == len([k for k in files])
    assert discover(tmp_path / "in") == items  # deterministic


def test_discover_single_file_and_list_file(tmp_path):
    files = C.build_corpus(tmp_path / "in")
    assert [it.rel.as_posix() for it in discover(files["good_png"])] == ["good.png"]
    outside = C.save(Image.fromarray(C.smooth_rgb()), tmp_path / "elsewhere" / "good.png")
    lst = tmp_path / "in" / "batch.txt"
    lst.write_text(f"# my picks\n\ngood.png\nsub/gray.png\n  missing.jpg  \n{outside}\nsub\n")
    items = discover(lst)
    rels = [it.rel.as_posix() for it in items]
    assert rels[:4] == ["good.png", "sub/gray.png", "missing.jpg", "_external/good.png"]
    assert set(rels[4:]) == {"sub/gray.png", "sub/rgba.png", "sub/rotated.jpg"}
    missing = items[2]
    assert missing.error and "not found" in missing.error and "line 5" in missing.error
    assert items[3].path == outside


def test_discover_missing_input_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        discover(tmp_path / "nope")


# --------------------------------------------------------------------------- output location


def test_output_inside_input_is_refused(tmp_path):
    src = tmp_path / "photos"
    (src / "a").mkdir(parents=True)
    for bad in (src, src / "protected", src / "a" / "b"):
        with pytest.raises(UsageError, match="input folder"):
            check_output_location(src, bad)
    with pytest.raises(UsageError, match="inside the output"):
        check_output_location(src / "a", src)
    os.symlink(src, tmp_path / "alias")
    with pytest.raises(UsageError):
        check_output_location(tmp_path / "alias", src / "out")  # symlinks do not fool it
    check_output_location(src, tmp_path / "out")  # fine
    f = C.save(Image.fromarray(C.smooth_rgb()), src / "x.png")
    with pytest.raises(UsageError, match="replace the originals"):
        check_output_location(f, src)
    check_output_location(f, src / "protected")  # a sub-folder next to one file is fine
