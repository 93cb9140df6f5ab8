"""Builders for the small image corpus (good and malformed files) used by test_io / test_pipeline."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

GPS_IFD = 0x8825
EXIF_IFD = 0x8769
ORIENTATION = 0x0112


def smooth_rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """A uint8 HxWx3 test picture: gradients plus a little noise (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), (x + y) / (w + h)], axis=2) * 200 + 20
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def exif_bytes(orientation: int | None = None, gps: bool = False, make: str | None = "TestCam") -> bytes:
    ex = Image.Exif()
    if make:
        ex[0x010F] = make
    if orientation is not None:
        ex[ORIENTATION] = orientation
    if gps:
        g = ex.get_ifd(GPS_IFD)
        g[1] = "N"
        g[2] = (48.0, 51.0, 29.6)
        g[3] = "E"
        g[4] = (2.0, 17.0, 40.2)
    sub = ex.get_ifd(EXIF_IFD)
    sub[0x9003] = "2024:05:01 12:00:00"  # DateTimeOriginal
    return ex.tobytes()


def srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def save(im: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)
    return path


def png_with_fake_size(path: Path, width: int, height: int) -> Path:
    """A valid tiny PNG whose IHDR is patched to claim ``width`` x ``height`` (CRC fixed)."""
    buf = io.BytesIO()
    Image.fromarray(smooth_rgb(4, 4)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def hash_tree(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (hidden ones included)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
            except PermissionError:
                out[p.relative_to(root).as_posix()] = "unreadable"
    return out


def build_corpus(root: Path) -> dict[str, Path]:
    """Good and bad files under ``root`` (some in a sub-folder). Returns {key: path}."""
    root.mkdir(parents=True, exist_ok=True)
    rgb = smooth_rgb()
    files: dict[str, Path] = {}

    files["good_png"] = save(Image.fromarray(rgb), root / "good.png")
    files["good_jpg"] = save(Image.fromarray(rgb), root / "good.jpg", quality=95, icc_profile=srgb_icc())
    files["rotated"] = save(
        Image.fromarray(smooth_rgb(20, 40, seed=1)), root / "sub" / "rotated.jpg",
        quality=95, exif=exif_bytes(orientation=6, gps=True),
    )
    files["gray"] = save(Image.fromarray(rgb[..., 0]), root / "sub" / "gray.png")
    files["rgba"] = save(
        Image.fromarray(np.concatenate([rgb, np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (24, 1, 1))], 2)),
        root / "sub" / "rgba.png",
    )
    g16 = (np.linspace(0, 65535, 24 * 32).reshape(24, 32)).astype(np.uint16)
    files["png16"] = save(Image.fromarray(g16), root / "deep" / "gray16.png")
    import cv2

    c16 = np.stack([g16, g16[::-1], np.full_like(g16, 12345)], axis=2)
    files["png16rgb"] = root / "deep" / "rgb16.png"
    assert cv2.imwrite(str(files["png16rgb"]), c16[..., ::-1])  # OpenCV writes BGR
    files["cmyk"] = save(Image.fromarray(rgb).convert("CMYK"), root / "cmyk.jpg", quality=95)
    files["palette"] = save(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), root / "palette.gif")
    frames = [Image.fromarray(smooth_rgb(seed=i)).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(3)]
    files["animated"] = root / "animated.gif"
    frames[0].save(files["animated"], save_all=True, append_images=frames[1:], duration=100, loop=0)

    # bad ones
    files["zero"] = root / "zero.jpg"
    files["zero"].write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(smooth_rgb(64, 64, seed=3)).save(buf, "JPEG", quality=95)
    files["truncated"] = root / "truncated.jpg"
    files["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])  # cut in the scan data
    files["text"] = root / "notes_really.jpg"
    files["text"].write_text("this is a shopping list, not a picture\n")
    files["bomb"] = png_with_fake_size(root / "bomb.png", 40000, 40000)
    files["unreadable"] = save(Image.fromarray(rgb), root / "locked.png")

    # ignored by discovery
    (root / "readme.txt").write_text("not an input")
    save(Image.fromarray(rgb), root / ".hidden.png")
    save(Image.fromarray(rgb), root / ".cache" / "thumb.png")
    return files


def make_unreadable(path: Path, monkeypatch) -> str:
    """Make ``path`` unreadable: chmod 000, or - when that does not stop us (running as root) -
    make the reader's ``open`` raise the PermissionError the OS would. Returns which way was used."""
    os.chmod(path, 0)
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return "chmod"
    os.chmod(path, 0o644)
    import builtins

    from advprotect.io import reader

    target = os.path.realpath(path)
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(file) == target:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(reader, "open", guarded_open, raising=False)
    return "patched open"
