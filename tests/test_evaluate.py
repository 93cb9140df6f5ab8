"""``advprotect evaluate``: pairing, ASR per model and transform, quality, reports, exit codes.

Two people x two photos of the celebrity train split, downscaled to at most 250 px; embeddings are
cached by pixel content inside a test session, so reruns on the same photos are cheap."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advprotect.evaluate.command import (
    EVALUATORS,
    evaluate_command,
    read_pairs,
    register_evaluator,
)
from advprotect.evaluate.robustness import map_box, parse_transform, parse_transforms
from advprotect.io import UsageError, read_image

TRANSFORMS = "jpeg:75,crop:0.9"
EPS = 8 / 255
PEOPLE = ("madonna", "mindy_kaling")
CHROMIUM = Path("/usr/bin/chromium")


def _save_small(src: Path, dst: Path, side: int = 250) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side), Image.LANCZOS)
        im.save(dst)


@pytest.fixture(scope="module")
def data(tmp_path_factory, celebrity_train) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    people = [p for p in PEOPLE if p in celebrity_train] or sorted(celebrity_train)[:2]
    for person in people[:2]:
        for i, src in enumerate(celebrity_train[person][:2]):
            _save_small(src, root / "original" / person / f"{i}.png")
    shutil.copytree(root / "original", root / "same")
    return root


@pytest.fixture(scope="module")
def identical(data):
    out = data / "reports_same"
    report, code = evaluate_command(
        data / "original", data / "same", transforms=TRANSFORMS, out_json=out / "r.json",
        out_csv=out / "r.csv", out_md=out / "r.md", html=out / "r.html")
    return report, code, out


@pytest.fixture(scope="module")
def attacked(data):
    from advprotect.faces.protect import FaceProtector, ProtectConfig

    # a cheap real attack: 5 MI-FGSM steps on facenet128 at eps 8/255, all faces in one batch
    cfg = ProtectConfig.from_preset("low", steps=5, eps=EPS, mask="none")
    protector = FaceProtector(cfg, "cpu", seed=0)
    srcs = sorted((data / "original").rglob("*.png"))
    results = protector.protect([read_image(s).pixels for s in srcs])
    for src, res in zip(srcs, results):
        dst = data / "protected" / src.relative_to(data / "original")
        dst.parent.mkdir(parents=True, exist_ok=True)
        arr = (res.pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(dst)
    out = data / "reports_attacked"
    report, code = evaluate_command(data / "original", data / "protected", transforms=TRANSFORMS,
                                    out_json=out / "r.json", html=out / "r.html")
    return report, code, out


# ---------------------------------------------------------------------------- transforms

def test_parse_transforms_and_errors():
    ts = parse_transforms("jpeg:90, resize:0.5,blur:1.0,crop:0.9,social,jpeg:90")
    assert [t.name for t in ts] == ["jpeg:90", "resize:0.5", "blur:1", "crop:0.9", "social"]
    assert len(parse_transforms("all")) == 8
    assert parse_transforms("") == [] and parse_transforms("none") == []
    assert parse_transform("social:720:70").name == "social:720:70"
    for bad, words in [("jpeg:0", "1-100"), ("jpeg", "exactly one"), ("jpeg:abc", "integer"),
                       ("resize:0", "resize"), ("crop:1.5", "crop"), ("sharpen:2", "unknown transform"),
                       ("blur:nan", "finite"), ("social:1080:80:1", "at most")]:
        with pytest.raises(ValueError, match=words):
            parse_transform(bad)


def test_transforms_are_real_codecs():
    g = torch.Generator().manual_seed(0)
    photo = torch.rand(3, 60, 80, generator=g)
    out, m = parse_transform("jpeg:50").apply(photo)
    assert out.shape == photo.shape and m == (1.0, 1.0, 0.0, 0.0)
    assert 0 < float((out - photo).abs().mean()) < 0.5
    out, m = parse_transform("resize:0.5").apply(photo)
    assert out.shape == (3, 30, 40) and m[:2] == (0.5, 0.5)
    out, m = parse_transform("crop:0.5").apply(photo)
    assert out.shape == (3, 30, 40)
    assert map_box([20, 15, 60, 45], m) == [0.0, 0.0, 40.0, 30.0]
    out, m = parse_transform("social:40").apply(photo)  # longest side 80 -> 40, then JPEG
    assert out.shape == (3, 30, 40)
    out, _ = parse_transform("social").apply(photo)  # never upscaled
    assert out.shape == photo.shape
    out, _ = parse_transform("blur:2").apply(photo)
    assert float(out.std()) < float(photo.std())


# ---------------------------------------------------------------------------- face verification

def test_identical_copy_scores_zero(identical):
    report, code, out = identical
    assert code == 0, report["files"]
    assert report["counts"] == {"originals": 4, "protected": 4, "paired": 4, "evaluated": 4, "failed": 0}
    faces = report["results"]["faces"]
    assert set(faces["models"]) >= {"facenet128", "dlib-resnet"}
    for m, info in faces["models"].items():
        assert info["mean_asr"] == 0.0, m
        for kind in info["pairs"].values():
            for per_far in kind["transforms"].values():
                for s in per_far.values():
                    assert s["asr"] == 0.0 and s["verified_clean"] == s["verified_protected"]
        assert info["faces_found_clean"] == info["faces_found_protected"]
    own = faces["models"]["facenet128"]["pairs"]["own"]["transforms"]["none"]["far1e-2"]
    assert own["pairs"] >= 3 and own["verified_clean"] == own["pairs"]
    assert "enrolled" in faces["models"]["facenet128"]["pairs"]
    q = report["summary"]["quality"]
    assert q["ssim"] == 1.0 and q["linf_255"] == 0.0 and q["psnr"] is None  # identical: inf PSNR
    # every report file is there and well formed
    data = json.loads((out / "r.json").read_text())  # strict JSON (no Infinity)
    assert data["schema"] == "advprotect.evaluate/1"
    rows = list(csv.DictReader((out / "r.csv").open()))
    assert len(rows) == 4 and rows[0]["psnr"] == "inf" and "facenet128_own_verified" in rows[0]
    md = (out / "r.md").read_text()
    assert "Robustness" in md and "facenet128" in md


def test_attack_scores_on_the_white_box_model(attacked):
    report, code, _ = attacked
    assert code == 0, report["files"]
    summ = report["summary"]
    print("mean ASR", summ["mean_asr"], "robustness", summ["robustness"], "quality", summ["quality"])
    assert summ["mean_asr"]["facenet128"] > 0
    own = report["results"]["faces"]["models"]["facenet128"]["pairs"]["own"]["transforms"]["none"]["far1e-2"]
    assert own["asr"] > 0 and own["protection_rate"] > 0
    # the table has every model x transform (and the untransformed photo)
    table = summ["robustness"]
    assert set(table) == set(report["inputs"]["models"])
    for m in table:
        assert list(table[m]) == ["none", "jpeg:75", "crop:0.9"]
    q = summ["quality"]
    assert 0 < q["linf_255"] <= EPS * 255 + 1e-6 and q["face_linf_255"] > 0
    assert 0.8 < q["ssim"] < 1.0 and q["psnr"] > 30
    aa = report["results"]["faces"]["models"]["facenet128"]["adv_adv"]
    assert "far1e-2" in aa and aa["far1e-2"]["pairs"] >= 1


def test_fail_under_gives_exit_3(data, identical):
    report, code = evaluate_command(data / "original", data / "same", transforms=TRANSFORMS,
                                    fail_under=0.5)
    assert code == 3 and report["summary"]["threshold_met"] is False
    report, code = evaluate_command(data / "original", data / "same", transforms=TRANSFORMS,
                                    fail_under=0.0, fail_model="dlib-resnet")
    assert code == 0 and report["summary"]["threshold_met"] is True


def test_usage_errors(data, tmp_path):
    with pytest.raises(UsageError, match="jpeg:Q"):
        evaluate_command(data / "original", data / "same", transforms="jpeg:75,sharpen")
    with pytest.raises(UsageError, match="1-100"):
        evaluate_command(data / "original", data / "same", transforms="jpeg:101")
    with pytest.raises(UsageError, match="not found"):
        evaluate_command(tmp_path / "nope", data / "same")
    with pytest.raises(UsageError, match="unknown face model"):
        evaluate_command(data / "original", data / "same", models="arcface")
    with pytest.raises(UsageError, match="not both"):
        evaluate_command(data / "original", data / "same", enrolled=data / "original", pairs=tmp_path / "p.csv")
    (tmp_path / "p.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UsageError, match="protected_rel"):
        evaluate_command(data / "original", data / "same", pairs=tmp_path / "p.csv")


def test_unreadable_and_unpaired_files_are_reported(data, identical, tmp_path):
    prot = tmp_path / "prot"
    shutil.copytree(data / "same", prot)
    victim = min(prot.rglob("*.png"))
    victim.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (prot / "stranger.png").write_bytes((data / "same" / victim.relative_to(prot)).read_bytes())
    report, code = evaluate_command(data / "original", prot, models="facenet128", transforms="",
                                    out_csv=tmp_path / "r.csv")
    assert code == 1
    status = {f["rel"]: f for f in report["files"]}
    rel = victim.relative_to(prot).as_posix()
    assert status[rel]["status"] == "failed" and "unreadable" in status[rel]["error"]
    assert status["stranger.png"]["status"] == "unpaired"
    assert report["counts"]["evaluated"] == 3 and report["counts"]["failed"] == 2
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert {r["status"] for r in rows} == {"ok", "failed", "unpaired"}


def test_pairs_file_and_enrolled_folder(data, identical, tmp_path):
    people = sorted(p.name for p in (data / "original").iterdir())
    a, b = people
    lines = ["protected_rel,enrolled_path,same",
             f"{a}/0.png,{(data / 'original' / a / '1.png').as_posix()},1",
             f"{a}/0.png,{(data / 'original' / b / '0.png').as_posix()},0"]
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    assert len(read_pairs(tmp_path / "pairs.csv")) == 2
    report, code = evaluate_command(data / "original", data / "same", pairs=tmp_path / "pairs.csv",
                                    models="facenet128", transforms="")
    assert code == 0
    kinds = report["results"]["faces"]["models"]["facenet128"]["pairs"]
    assert kinds["enrolled"]["transforms"]["none"]["far1e-2"]["pairs"] + kinds["enrolled"]["missing_reference"] == 1
    assert kinds["impostor"]["transforms"]["none"]["far1e-2"]["pairs"] + kinds["impostor"]["missing_reference"] == 1
    report, code = evaluate_command(data / "original", data / "same", enrolled=data / "original",
                                    models="facenet128", transforms="")
    assert code == 0 and report["results"]["faces"]["references"] == 4


def test_evaluators_plug_in(data, identical):
    class Count:
        kind = "count"

        def __init__(self):
            self.n = 0

        def begin(self, ctx):
            self.total = len(ctx.items)

        def add(self, item, clean, protected, scratch):
            self.n += 1

        def finish(self):
            return {"seen": self.n, "total": self.total}, {}

    register_evaluator("count", lambda opts: Count())
    try:
        report, code = evaluate_command(data / "original", data / "same", kinds=("quality", "count"))
    finally:
        EVALUATORS.pop("count")
    assert code == 0 and report["results"]["count"] == {"seen": 4, "total": 4}
    assert "faces" not in report["results"]


# ---------------------------------------------------------------------------- HTML

def test_html_is_self_contained(attacked):
    _, _, out = attacked
    page = (out / "r.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 + 3 * 4  # chart + 4 x (original, protected, diff)
    assert "ASR per model and transform" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium")
def test_html_renders_in_headless_chromium(attacked, tmp_path):
    _, _, out = attacked
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
           (out / "r.html").resolve().as_uri()]
    subprocess.run(cmd, check=False, timeout=120, capture_output=True)
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("L"), dtype=np.float64)
    assert arr.std() > 10, "the rendered page is blank"
