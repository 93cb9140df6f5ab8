"""Erasable protection: key files, sealed payloads, embedding, exact and robust erasure, commands.

Fast: synthetic images and crops of skimage's astronaut; no model weights.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import stat
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advprotect.erase import (
    EraseError,
    KeyFileError,
    PayloadFormatError,
    PayloadMismatchError,
    PayloadMissingError,
    WrongKeyError,
    embed,
    erase_command,
    erase_file,
    extract,
    generate_key,
    keygen_command,
    load_key,
    make_erasable,
    open_payload,
    psnr,
    read_pixels,
    seal,
    unseal,
)
from advprotect.erase.keys import KEY_HEADER
from advprotect.erase.payload import HEADER_SIZE

skimage_data = pytest.importorskip("skimage.data")
embed_mod = importlib.import_module("advprotect.erase.embed")  # the package exports a function `embed`


# ----------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture()
def key_file(tmp_path: Path) -> Path:
    p = tmp_path / "keys" / "erase.key"
    generate_key(p)
    return p


@pytest.fixture()
def key(key_file: Path) -> bytes:
    return load_key(key_file)


def perturb(img: np.ndarray, amp: int, seed: int = 0) -> np.ndarray:
    """A PGD-like sign perturbation of +-amp (alpha left alone)."""
    rng = np.random.default_rng(seed)
    maxval = 255 if img.dtype == np.uint8 else 65535
    d = rng.choice([-amp, amp], size=img.shape)
    if img.ndim == 3 and img.shape[2] in (2, 4):
        d[..., -1] = 0
    return np.clip(img.astype(np.int64) + d, 0, maxval).astype(img.dtype)


def save(arr: np.ndarray, path: Path, **kw) -> Path:
    if arr.dtype == np.uint16 and arr.ndim == 3:
        import cv2

        bgr = arr[..., ::-1] if arr.shape[2] == 3 else arr[..., [2, 1, 0, 3]]
        assert cv2.imwrite(str(path), np.ascontiguousarray(bgr))
    else:
        Image.fromarray(arr).save(path, **kw)
    return path


def secrets_of(key: bytes) -> list[str]:
    return [key.hex(), key.hex().upper(), base64.b64encode(key).decode(), repr(key)[2:-1]]


def assert_no_key(text: str, key: bytes) -> None:
    for s in secrets_of(key):
        assert s not in text


def small_rgb(astronaut: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(astronaut[40:136, 180:300])  # 96x120, a face


# ----------------------------------------------------------------------------------------------
# keys


def test_keygen_mode_0600_format_and_refuses_overwrite(tmp_path: Path):
    p = tmp_path / "k.key"
    info = generate_key(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    lines = [ln for ln in p.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == KEY_HEADER and len(lines[1]) == 64
    k1 = load_key(p)
    assert len(k1) == 32 and info.fingerprint not in p.read_text()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_key(p)
    assert load_key(p) == k1  # untouched
    generate_key(p, force=True)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert load_key(p) != k1
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")]


def test_keygen_command_report_has_no_key(tmp_path: Path):
    report, code = keygen_command(tmp_path / "k.key")
    assert code == 0 and report["mode"] == "0600"
    assert_no_key(json.dumps(report), load_key(tmp_path / "k.key"))
    report, code = keygen_command(tmp_path / "k.key")
    assert code == 2 and "refusing to overwrite" in report["error"]


def test_load_key_refuses_insecure_and_malformed(tmp_path: Path, key_file: Path):
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(key_file)
    assert len(load_key(key_file, check_permissions=False)) == 32
    os.chmod(key_file, 0o600)

    bad = tmp_path / "bad.key"
    secret_line = "ab" * 31 + "zz"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{KEY_HEADER}\n{secret_line}\n".encode())
    os.close(fd)
    with pytest.raises(KeyFileError, match="malformed") as ei:
        load_key(bad)
    assert secret_line not in str(ei.value)
    bad.write_text("hello\n")
    with pytest.raises(KeyFileError, match="not an advprotect key file"):
        load_key(bad)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key(tmp_path / "missing.key")


# ----------------------------------------------------------------------------------------------
# payload


def test_seal_open_payload_and_errors(astronaut: np.ndarray, key: bytes):
    orig = small_rgb(astronaut)
    prot = perturb(orig, 8)
    payload = seal(orig, prot, key, meta={"note": "x"})
    res = open_payload(payload, prot, key)
    assert np.array_equal(prot.astype(np.int64) + res, orig)
    assert unseal(payload, key, protected_pixels=prot).meta["note"] == "x"
    # robust mode does not look at the pixels
    assert np.array_equal(open_payload(payload, None, key, verify_pixels=False), res)

    with pytest.raises(WrongKeyError, match="wrong key or tampered payload"):
        open_payload(payload, prot, bytes(32))
    flipped = bytearray(payload)
    flipped[len(payload) // 2] ^= 0x01
    with pytest.raises(WrongKeyError, match="wrong key or tampered payload"):
        open_payload(bytes(flipped), prot, key)
    other = perturb(orig, 8, seed=1)
    with pytest.raises(PayloadMismatchError, match="different pixels"):
        open_payload(payload, other, key)
    with pytest.raises(PayloadMismatchError, match="different image"):
        open_payload(payload, prot[:50], key)
    v2 = bytearray(payload)
    v2[8] = 2
    with pytest.raises(PayloadFormatError, match="version 2"):
        open_payload(bytes(v2), prot, key)
    with pytest.raises(PayloadFormatError, match="magic"):
        open_payload(b"garbage" * 20, prot, key)
    with pytest.raises(PayloadFormatError):
        open_payload(payload[: HEADER_SIZE - 3], prot, key)
    # re-labelling the header (public pixel hash) for other pixels fails authentication
    from advprotect.erase.pixels import pixel_hash

    relabel = bytearray(payload)
    relabel[26:58] = pixel_hash(other)
    with pytest.raises(WrongKeyError):
        open_payload(bytes(relabel), other, key)


# ----------------------------------------------------------------------------------------------
# exact round trips


def _cases(astronaut):
    rgb = small_rgb(astronaut)
    rng = np.random.default_rng(3)
    alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    gray16 = (rgb[..., 1].astype(np.uint16) * 257 + rng.integers(0, 257, rgb.shape[:2])).astype(np.uint16)
    return {
        "rgb8": (rgb, 8),
        "rgba8": (np.dstack([rgb, alpha]), 8),
        "gray8": (np.ascontiguousarray(rgb[..., 0]), 8),
        "gray16": (gray16, 2048),
        "rgb16": (rgb.astype(np.uint16) * 257 + 3, 2048),
    }


@pytest.mark.parametrize("case", ["rgb8", "rgba8", "gray8", "gray16", "rgb16"])
def test_png_bit_exact_round_trip(tmp_path: Path, astronaut: np.ndarray, key: bytes, case: str):
    orig, amp = _cases(astronaut)[case]
    prot = perturb(orig, amp)
    out = save(prot, tmp_path / "protected.png")
    before = read_pixels(out).pixels
    assert np.array_equal(before, prot)
    info = make_erasable(orig, out, key)
    assert info.location == "embedded"
    assert np.array_equal(read_pixels(out).pixels, prot)  # embedding did not touch the pixels
    res = erase_file(out, tmp_path / "restored.png", key, keep_pixels=True)
    assert res.mode == "exact" and res.bit_exact
    back = read_pixels(tmp_path / "restored.png").pixels
    assert back.dtype == orig.dtype and np.array_equal(back, orig)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("p.jpg", {"quality": 85}),
        ("p.webp", {"quality": 80}),
        ("p_lossless.webp", {"lossless": True}),
        ("p.tif", {}),
        ("p.bmp", {}),
    ],
)
def test_other_formats_exact_round_trip(tmp_path: Path, astronaut: np.ndarray, key: bytes, name, kw):
    orig = small_rgb(astronaut)
    out = save(perturb(orig, 8), tmp_path / name, **kw)
    decoded = read_pixels(out).pixels  # JPEG/WebP loss is part of the protected pixels
    info = make_erasable(orig, out, key)
    assert info.location == ("sidecar" if name.endswith(".bmp") else "embedded")
    assert np.array_equal(read_pixels(out).pixels, decoded)
    res = erase_file(out, tmp_path / "restored.png", key)
    assert res.mode == "exact" and res.bit_exact
    assert np.array_equal(read_pixels(tmp_path / "restored.png").pixels, orig)


def test_jpeg_multi_segment_payload_and_rgba_input(tmp_path: Path, astronaut: np.ndarray, key: bytes):
    """A full 512x512 JPEG's residual is far over 64 KB: it spans several APP11 segments. The input
    has alpha, the JPEG cannot: the payload still restores the RGBA original exactly."""
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 200, np.uint8)])
    out = save(perturb(astronaut, 8), tmp_path / "p.jpg", quality=90)
    info = make_erasable(rgba, out, key)
    assert info.payload_bytes > 3 * 65536
    data = out.read_bytes()
    assert data.count(b"\xff\xeb") >= 4 and data.count(embed_mod.JPEG_ID) >= 4
    res = erase_file(out, tmp_path / "restored.png", key)
    assert res.bit_exact
    assert np.array_equal(read_pixels(tmp_path / "restored.png").pixels, rgba)
    # writing a restored JPEG is allowed but says it is not bit-exact
    res = erase_file(out, tmp_path / "restored.jpg", key)
    assert not res.bit_exact and "not bit-exact" in res.message


def test_reembedding_replaces_the_payload(tmp_path: Path, astronaut: np.ndarray, key: bytes):
    orig = small_rgb(astronaut)
    for name in ("a.png", "a.jpg", "a.webp", "a.tif"):
        out = save(perturb(orig, 8), tmp_path / name)
        make_erasable(orig, out, key)
        size1 = out.stat().st_size
        make_erasable(orig, out, key)
        assert abs(out.stat().st_size - size1) <= 2, name
        assert erase_file(out, tmp_path / f"{name}.png", key).bit_exact


# ----------------------------------------------------------------------------------------------
# robust erasure


def test_robust_erasure_after_jpeg_q75_and_resize(tmp_path: Path, astronaut: np.ndarray, key: bytes, capsys):
    """A protected PNG re-encoded as JPEG q75 (or resized) loses the embedded payload; with the
    sidecar the protection is still removed, up to the loss of the re-encoding itself."""
    lines = []
    for amp in (8, 16):
        prot = perturb(astronaut, amp)
        out = save(prot, tmp_path / f"a{amp}.png")
        sidecars = tmp_path / "sidecars"
        make_erasable(astronaut, out, key, sidecar=True, sidecar_dir=sidecars)
        copies = tmp_path / f"copies{amp}"
        copies.mkdir()
        buf = io.BytesIO()
        Image.fromarray(prot).save(buf, "JPEG", quality=75)
        (copies / f"a{amp}.jpg").write_bytes(buf.getvalue())
        Image.fromarray(prot).resize((384, 384), Image.BILINEAR).save(copies / f"a{amp}.png")

        # JPEG q75 copy
        res = erase_file(copies / f"a{amp}.jpg", tmp_path / f"r{amp}.png", key, sidecar_dir=sidecars, keep_pixels=True)
        assert res.mode == "robust" and res.method == "jpeg-dct" and not res.bit_exact
        copy = read_pixels(copies / f"a{amp}.jpg").pixels
        buf = io.BytesIO()
        Image.fromarray(astronaut).save(buf, "JPEG", quality=75)
        bound = psnr(np.asarray(Image.open(buf)), astronaut)  # the original through the same JPEG
        p_copy, p_rest = psnr(copy, astronaut), psnr(res.restored, astronaut)
        lines.append(
            f"+-{amp} JPEG q75: copy {p_copy:.2f} dB -> restored {p_rest:.2f} dB (JPEG of original {bound:.2f} dB)"
        )
        assert p_rest > p_copy + (1.5 if amp == 8 else 5.0)
        assert p_rest > bound - 1.0

        # resized copy (PNG, 0.75x)
        res = erase_file(copies / f"a{amp}.png", tmp_path / f"s{amp}.png", key, sidecar_dir=sidecars, keep_pixels=True)
        assert res.mode == "robust" and res.method == "add"
        small_orig = np.asarray(Image.fromarray(astronaut).resize((384, 384), Image.BILINEAR))
        p_copy = psnr(read_pixels(copies / f"a{amp}.png").pixels, small_orig)
        p_rest = psnr(res.restored, small_orig)
        lines.append(f"+-{amp} resized 0.75x: copy {p_copy:.2f} dB -> restored {p_rest:.2f} dB")
        assert p_rest > p_copy + 10.0
    with capsys.disabled():
        print("\n  robust erasure (PSNR vs original): " + "; ".join(lines))


def test_robust_from_a_payload_kept_in_metadata(tmp_path: Path, astronaut: np.ndarray, key: bytes):
    """A re-encoder that keeps the metadata keeps a payload that no longer matches the pixels: refused
    by default (it could have been copied from another image), used on request after the picture check."""
    orig = small_rgb(astronaut)
    prot = perturb(orig, 16)
    out = save(prot, tmp_path / "a.png")
    make_erasable(orig, out, key)
    copy = save(prot, tmp_path / "copy.jpg", quality=75)
    embed(copy, extract(out))
    with pytest.raises(PayloadMismatchError, match="sidecar"):
        erase_file(copy, tmp_path / "r.png", key)
    res = erase_file(copy, tmp_path / "r.png", key, robust_from_embedded=True, keep_pixels=True)
    assert res.mode == "robust" and res.payload_source == "embedded"
    assert psnr(res.restored, orig) > psnr(read_pixels(copy).pixels, orig) + 3


def test_make_erasable_needs_the_output_size(tmp_path: Path, astronaut: np.ndarray, key: bytes):
    orig = small_rgb(astronaut)
    out = save(perturb(orig, 8)[:80], tmp_path / "a.png")
    with pytest.raises(EraseError, match="resized"):
        make_erasable(orig, out, key)
    assert extract(out) is None


def test_robust_refuses_a_sidecar_of_another_image(tmp_path: Path, astronaut: np.ndarray, key: bytes):
    a = small_rgb(astronaut)
    b = np.ascontiguousarray(astronaut[300:396, 100:220])
    out = save(perturb(a, 8), tmp_path / "a.png")
    make_erasable(a, out, key, sidecar=True, sidecar_dir=tmp_path / "sc")
    (tmp_path / "copy").mkdir()
    other = save(perturb(b, 8), tmp_path / "copy" / "a.png")  # same name, another picture
    with pytest.raises(PayloadMismatchError, match="does not belong"):
        erase_file(other, tmp_path / "r.png", key, sidecar_dir=tmp_path / "sc")
    assert not (tmp_path / "r.png").exists()
    cropped = save(perturb(a, 8)[:, :60], tmp_path / "copy2.png")
    (tmp_path / "sc" / "copy2.png.advp").write_bytes((tmp_path / "sc" / "a.png.advp").read_bytes())
    with pytest.raises(PayloadMismatchError, match="cropp"):
        erase_file(cropped, tmp_path / "r.png", key, sidecar_dir=tmp_path / "sc")


# ----------------------------------------------------------------------------------------------
# rejections: nothing is written


def test_rejections_write_nothing(tmp_path: Path, astronaut: np.ndarray, key: bytes):
    orig = small_rgb(astronaut)
    out = save(perturb(orig, 8), tmp_path / "a.png")
    make_erasable(orig, out, key)
    dst = tmp_path / "restored.png"

    with pytest.raises(WrongKeyError, match="wrong key or tampered payload"):
        erase_file(out, dst, os.urandom(32))
    assert not dst.exists()

    payload = extract(out)
    tampered = bytearray(payload)
    tampered[-40] ^= 0x80
    t_path = save(perturb(orig, 8), tmp_path / "t.png")
    embed(t_path, bytes(tampered))
    with pytest.raises(WrongKeyError):
        erase_file(t_path, dst, key)
    assert not dst.exists()

    # a byte flipped in the file itself, inside the embedded payload
    jpg = save(perturb(orig, 8), tmp_path / "f.jpg", quality=90)
    make_erasable(orig, jpg, key)
    data = bytearray(jpg.read_bytes())
    data[data.index(embed_mod.JPEG_ID) + 200] ^= 0x01
    jpg.write_bytes(bytes(data))
    with pytest.raises(WrongKeyError, match="wrong key or tampered payload"):
        erase_file(jpg, dst, key)
    assert not dst.exists()

    # the payload moved onto another (same-size) protected image
    moved = save(perturb(orig, 8, seed=7), tmp_path / "moved.png")
    embed(moved, payload)
    with pytest.raises(PayloadMismatchError, match="different pixels"):
        erase_file(moved, dst, key)
    assert not dst.exists()
    moved_jpg = save(perturb(orig, 8, seed=7), tmp_path / "moved.jpg", quality=90)
    embed(moved_jpg, payload)
    with pytest.raises(PayloadMismatchError):
        erase_file(moved_jpg, dst, key)

    plain = save(perturb(orig, 8), tmp_path / "plain.png")
    with pytest.raises(PayloadMissingError, match="no erase payload"):
        erase_file(plain, dst, key)
    assert not dst.exists()

    # a JPEG whose payload lost a segment
    big = save(perturb(astronaut, 8), tmp_path / "big.jpg", quality=90)
    make_erasable(astronaut, big, key)
    data = big.read_bytes()
    first = data.index(embed_mod.JPEG_ID) - 4  # FF EB, length, identifier
    (first_len,) = struct.unpack(">H", data[first + 2 : first + 4])
    i = first + 2 + first_len  # the second APP11 segment
    assert data[i : i + 2] == b"\xff\xeb"
    (seg_len,) = struct.unpack(">H", data[i + 2 : i + 4])
    (tmp_path / "cut.jpg").write_bytes(data[:i] + data[i + 2 + seg_len :])
    with pytest.raises(PayloadFormatError, match="incomplete"):
        erase_file(tmp_path / "cut.jpg", dst, key)
    assert not dst.exists()


# ----------------------------------------------------------------------------------------------
# commands


def test_erase_command_folder_report_and_exit_codes(
    tmp_path: Path, astronaut: np.ndarray, key_file: Path, key: bytes, capsys
):
    orig_dir, prot_dir = tmp_path / "orig", tmp_path / "prot"
    (prot_dir / "sub").mkdir(parents=True)
    (orig_dir / "sub").mkdir(parents=True)
    a = small_rgb(astronaut)
    b = np.ascontiguousarray(astronaut[300:396, 100:220])
    save(a, orig_dir / "a.png")
    save(b, orig_dir / "sub" / "b.png")
    make_erasable(a, save(perturb(a, 8), prot_dir / "a.png"), key)
    make_erasable(b, save(perturb(b, 8), prot_dir / "sub" / "b.jpg", quality=90), key)
    save(perturb(b, 8), prot_dir / "sub" / "c.png")  # never made erasable

    calls = []

    def esr_fn(restored, original, path):
        calls.append(path.name)
        return original is not None and np.array_equal(restored, original)

    report, code = erase_command(prot_dir, tmp_path / "out", key_file, original=orig_dir, esr_fn=esr_fn)
    assert code == 1
    by_name = {Path(f["input"]).name: f for f in report["files"]}
    assert by_name["a.png"]["status"] == "restored" and by_name["a.png"]["bit_exact"]
    assert by_name["a.png"]["matches_original"] and by_name["a.png"]["psnr_protected"] < 40
    assert by_name["b.jpg"]["output"].endswith(os.path.join("sub", "b.png"))  # JPEG -> exact PNG
    assert by_name["b.jpg"]["matches_original"]
    assert by_name["c.png"]["status"] == "failed" and "no erase payload" in by_name["c.png"]["message"]
    assert not (tmp_path / "out" / "sub" / "c.png").exists()
    assert report["summary"]["restored"] == 2 and report["summary"]["failed"] == 1
    assert report["summary"]["esr"] == 1.0 and sorted(calls) == ["a.png", "b.jpg"]

    text = json.dumps(report)
    report2, code2 = erase_command(prot_dir / "a.png", tmp_path / "one.png", key_file)
    assert code2 == 0 and report2["files"][0]["mode"] == "exact"

    # wrong key file: every file fails, nothing is written
    other_key = tmp_path / "other.key"
    generate_key(other_key)
    report3, code3 = erase_command(prot_dir / "a.png", tmp_path / "wrong.png", other_key)
    assert code3 == 1 and "wrong key or tampered payload" in report3["files"][0]["message"]
    assert not (tmp_path / "wrong.png").exists()

    out, err = capsys.readouterr()
    for t in (text, json.dumps(report2), json.dumps(report3), out, err):
        assert_no_key(t, key)
        assert_no_key(t, load_key(other_key))


def test_erase_command_usage_errors(tmp_path: Path, astronaut: np.ndarray, key_file: Path, key: bytes):
    prot = tmp_path / "prot"
    prot.mkdir()
    make_erasable(small_rgb(astronaut), save(perturb(small_rgb(astronaut), 8), prot / "a.png"), key)
    assert erase_command(tmp_path / "nope", tmp_path / "o", key_file)[1] == 2
    assert erase_command(prot, prot / "inside", key_file)[1] == 2
    assert erase_command(prot, tmp_path / "o", tmp_path / "missing.key")[1] == 2
    os.chmod(key_file, 0o640)
    report, code = erase_command(prot, tmp_path / "o", key_file)
    assert code == 2 and "chmod 600" in report["error"]
    assert not (tmp_path / "o").exists()
