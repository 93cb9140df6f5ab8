"""Robust CAPTCHAs (issue #6): generation, surrogates, objectives, protection, CLI, evaluate.

The surrogate weights ship inside the package (no download), so these tests use the real
models; the protection tests attack a handful of CAPTCHAs with fewer steps than the default.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from advprotect.captcha.ctc_objective import CTCObjective, ctc_viterbi_frames
from advprotect.captcha.generate import (
    ALPHABET,
    STYLES,
    CaptchaSpec,
    generate_batch,
    parse_length,
    render,
)
from advprotect.captcha.labels import Label, hash_answer, labels_csv, read_labels
from advprotect.captcha.models import MAX_LEN, NUM_CLASSES, SURROGATES, build, load_surrogates
from advprotect.captcha.position_objective import PositionObjective
from advprotect.captcha.preprocess import (
    SolverPreprocess,
    gaussian,
    grayscale,
    lanczos_resize,
    median3,
    otsu_threshold,
    soft_binarize,
)
from advprotect.captcha.protect import (
    CaptchaProtectConfig,
    CaptchaProtector,
    balanced_weights,
    ssim_per_image,
    ssim_scale_,
    texture_budget,
    to_8bit,
)
from advprotect.captcha.solvers import available, load_solver
from advprotect.captcha.train import accuracy, images_to_tensor
from advprotect.cli import app

runner = CliRunner()


def _px(images) -> list[np.ndarray]:
    return [np.asarray(im) for im in images]


@pytest.fixture(scope="module")
def surrogates():
    return load_surrogates(tuple(SURROGATES))


# --------------------------------------------------------------------------- generation
class TestGenerate:
    def test_deterministic_with_seed(self):
        a = generate_batch(4, CaptchaSpec(style="noisy"), seed=11)
        b = generate_batch(4, CaptchaSpec(style="noisy"), seed=11)
        assert [t for t, _ in a] == [t for t, _ in b]
        assert all(np.array_equal(x, y) for x, y in zip(_px(i for _, i in a), _px(i for _, i in b)))

    def test_other_seed_differs_and_slices_regenerate(self):
        a = generate_batch(4, seed=1)
        c = generate_batch(4, seed=2)
        assert [t for t, _ in a] != [t for t, _ in c]
        tail = generate_batch(2, seed=1, start=2)  # CAPTCHA i depends on (seed, i) only
        assert [t for t, _ in tail] == [t for t, _ in a[2:]]
        assert np.array_equal(np.asarray(tail[0][1]), np.asarray(a[2][1]))

    @pytest.mark.parametrize("style", STYLES)
    def test_styles_size_and_answers(self, style):
        spec = CaptchaSpec(style=style, charset="ABC23", min_length=3, max_length=5, width=120, height=40)
        for text, im in generate_batch(5, spec, seed=3):
            assert im.size == (120, 40) and im.mode == "RGB"
            assert 3 <= len(text) <= 5 and set(text) <= set("ABC23")

    def test_render_same_seed_same_pixels(self):
        assert np.array_equal(np.asarray(render("ab3d", seed=5)), np.asarray(render("ab3d", seed=5)))

    @pytest.mark.parametrize("kwargs, match", [
        ({"charset": "ab!"}, "letters and digits"),
        ({"charset": ""}, "non-empty"),
        ({"min_length": 6, "max_length": 4}, "length range"),
        ({"style": "fancy"}, "unknown style"),
        ({"width": 10}, "size"),
        ({"fonts": ("/no/such/font.ttf",)}, "cannot load font"),
    ])
    def test_bad_spec(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            CaptchaSpec(**kwargs).validate()

    def test_parse_length(self):
        assert parse_length("4-6") == (4, 6) and parse_length(" 5 ") == (5, 5)
        for bad in ("6-4", "0", "x", "3-13"):
            with pytest.raises(ValueError):
                parse_length(bad)


# --------------------------------------------------------------------------- labels
class TestLabels:
    def test_known_hash(self):
        # SHA-256("s:abc"): the answer is lower-cased before hashing
        assert hash_answer("AbC", "s") == "efff0385da714c8573aaf55138e8a03080e2d5666a680a6b017643d379019835"

    def test_roundtrip_clear_and_hashed(self, tmp_path):
        rows = [("a.png", "x7Kp"), ("sub/b.png", "2345")]
        (tmp_path / "clear.csv").write_bytes(labels_csv(rows))
        (tmp_path / "hashed.csv").write_bytes(labels_csv(rows, hashed=True))
        clear, hashed = read_labels(tmp_path / "clear.csv"), read_labels(tmp_path / "hashed.csv")
        assert clear["a.png"] == Label(answer="x7Kp") and not clear["a.png"].hashed
        assert hashed["sub/b.png"].hashed and "2345" not in (tmp_path / "hashed.csv").read_text()
        assert hashed["a.png"].matches("X7KP") and not hashed["a.png"].matches("x7kq")
        assert clear["a.png"].matches("x7kp")

    @pytest.mark.parametrize("text, match", [
        ("name,value\na.png,1\n", "header"),
        ("file,answer\na.png,\n", "no answer"),
        ("file,answer\na.png,ab\na.png,cd\n", "twice"),
        ("file,answer\n", "no CAPTCHAs"),
    ])
    def test_bad_files(self, tmp_path, text, match):
        p = tmp_path / "l.csv"
        p.write_text(text)
        with pytest.raises(ValueError, match=match):
            read_labels(p)
        with pytest.raises(ValueError, match="not found"):
            read_labels(tmp_path / "missing.csv")


# --------------------------------------------------------------------------- preprocessing
class TestPreprocess:
    def test_otsu_two_levels(self):
        x = torch.full((1, 1, 8, 8), 0.2)
        x[..., 4:] = 0.8
        t = float(otsu_threshold(x))
        assert 0.2 < t < 0.8

    def test_soft_binarize_polarity_and_shape(self):
        x = torch.full((2, 3, 8, 8), 0.9)
        x[:, :, 2:6, 2:6] = 0.1
        y = soft_binarize(x, steepness=60)
        assert y.shape == x.shape
        assert float(y[0, 0, 3, 3]) < 0.01 and float(y[0, 0, 0, 0]) > 0.99

    def test_median_known_values(self):
        x = torch.zeros(1, 1, 5, 5)
        x[0, 0, 2, 2] = 1.0  # an isolated dot disappears
        assert float(median3(x).abs().max()) == 0.0
        x[0, 0, 1:4, 1:4] = 1.0  # a 3x3 block keeps its centre
        assert float(median3(x)[0, 0, 2, 2]) == 1.0

    def test_gradcheck(self):
        x = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v: soft_binarize(v, 10.0, threshold=0.5), (x,))
        assert torch.autograd.gradcheck(lambda v: gaussian(v, 0.8), (x,))
        assert torch.autograd.gradcheck(median3, (x,))  # distinct values: no ties

    @pytest.mark.parametrize("size", [(64, 170), (30, 80), (60, 160), (97, 211)])
    def test_lanczos_matches_pillow(self, size):
        from PIL import Image

        # real CAPTCHAs (sharp strokes: Lanczos overshoots, which Pillow clips after each pass)
        ims = [im for _, im in generate_batch(2, CaptchaSpec(style="lines"), seed=5)]
        x = images_to_tensor(ims).double()
        ours = lanczos_resize(x, size)
        assert ours.shape == (2, 3, *size)
        ref = np.stack([np.asarray(im.resize(size[::-1], Image.LANCZOS)) for im in ims])
        diff = np.abs(ours.permute(0, 2, 3, 1).numpy() * 255 - ref)
        assert diff.max() <= 1.5                 # Pillow rounds to 8 bits after each pass

    def test_lanczos_known_values_and_errors(self):
        x = torch.rand(1, 2, 7, 9, dtype=torch.float64)
        assert torch.allclose(lanczos_resize(x, (7, 9)), x)          # same size: identity
        flat = torch.full((1, 1, 10, 10), 0.4, dtype=torch.float64)
        assert torch.allclose(lanczos_resize(flat, (23, 4)), torch.full((1, 1, 23, 4), 0.4, dtype=torch.float64))
        v = torch.rand(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: lanczos_resize(t * 0.5 + 0.25, (8, 4)), (v,))
        with pytest.raises(ValueError, match="positive"):
            lanczos_resize(x, (0, 5))
        with pytest.raises(ValueError, match="expected images"):
            lanczos_resize(torch.rand(7, 9), (3, 3))

    def test_fixed_views_cycle_per_step(self):
        x = torch.rand(2, 3, 12, 20)
        pre = SolverPreprocess("blur", p=1.0, samples=3, views="none,median")  # random: always blur
        outs = [pre(x) for _ in range(6)]
        plain, med = grayscale(x), grayscale(median3(x))
        for k, y in enumerate(outs):                                          # step 1, then step 2
            if k % 3 == 2:
                assert not torch.allclose(y, plain) and not torch.allclose(y, med)
            else:
                assert torch.allclose(y, med if k % 3 == 1 else plain)
        with pytest.raises(ValueError, match="unknown view"):
            SolverPreprocess(views="none,sharpen")
        assert SolverPreprocess(samples=1, views="none,median").views == ("none",)  # first `samples` only

    def test_chain_shape_and_errors(self):
        pre = SolverPreprocess(p=1.0, samples=3)
        x = torch.rand(2, 3, 30, 80)
        y = pre(x)
        assert y.shape == x.shape and pre.samples == 3
        assert torch.equal(y[:, 0], y[:, 1])  # solvers read grey
        with pytest.raises(ValueError, match="unknown preprocessing"):
            SolverPreprocess("jpeg,sharpen")
        with pytest.raises(ValueError):
            SolverPreprocess(p=1.5)


# --------------------------------------------------------------------------- surrogates
class TestSurrogates:
    def test_shapes_random_weights(self):
        x = torch.rand(2, 3, 60, 160)
        assert build("crnn")(x).shape == (2, 40, NUM_CLASSES)
        assert build("fcn")(x).shape == (2, 40, NUM_CLASSES)
        assert build("cnn")(x).shape == (2, MAX_LEN, NUM_CLASSES)
        with pytest.raises(ValueError, match="unknown surrogate"):
            build("vit")

    def test_shipped_weights_small(self):
        from advprotect.captcha.models import weights_dir

        for n in SURROGATES:
            assert (weights_dir() / f"{n}.pt").stat().st_size < 2_000_000

    def test_accuracy_floor_on_clean(self, surrogates):
        # 100 clean CAPTCHAs of every style from a seed never used in training or validation
        batch = []
        for k, style in enumerate(STYLES):
            batch += generate_batch(34 if k < 2 else 32, CaptchaSpec(style=style), seed=31337 + k)
        x = images_to_tensor([im for _, im in batch])
        texts = [t for t, _ in batch]
        for name, model in surrogates.items():
            acc = accuracy(model, x, texts)
            assert acc >= 0.95, f"{name}: {acc:.3f}"

    @pytest.mark.parametrize("precision", ["fp32", "bf16"])
    def test_training_lowers_the_loss(self, precision):
        from advprotect.captcha.train import train_surrogates

        torch.manual_seed(0)
        rep, models = train_surrogates(["cnn"], steps=30, batch_size=16, workers=0, val_per_style=2,
                                       precision=precision, lr=3e-3)
        r = rep["models"]["cnn"]
        assert rep["precision"] == precision and rep["samples"] == 480
        assert r["loss_final"] < 0.9 * r["loss_first"], r
        assert not models["cnn"].training  # returned ready to read
        with pytest.raises(ValueError, match="precision"):
            train_surrogates(["cnn"], steps=1, precision="fp16")

    def test_pick_precision(self):
        from advprotect.captcha.train import pick_precision, training_batch

        imgs, texts = training_batch(0, 0, 4)
        x = torch.from_numpy(imgs).unsqueeze(1).float() / 255
        m = build("cnn").train()
        before = {k: v.clone() for k, v in m.state_dict().items()}
        choice, ratio = pick_precision({"cnn": m}, x, texts)
        assert choice in ("fp32", "bf16") and (choice == "bf16") == (ratio >= 1.25)
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # probed on a copy

    def test_viterbi_known_alignment(self):
        lp = np.full((6, 4), -10.0)
        for t, c in enumerate([0, 2, 2, 0, 3, 0]):
            lp[t, c] = 0.0
        assert ctc_viterbi_frames(lp, [2, 3]) in ([1, 4], [2, 4])
        lp2 = np.full((5, 4), -10.0)
        for t, c in enumerate([1, 0, 1, 0, 0]):
            lp2[t, c] = 0.0
        assert ctc_viterbi_frames(lp2, [1, 1]) == [0, 2]  # repeated label needs a blank between


# --------------------------------------------------------------------------- objectives
class TestObjectives:
    def test_ctc_objective_increases_when_answer_changes(self, surrogates):
        (text, im), = generate_batch(1, seed=8)
        x = images_to_tensor([im])
        obj = CTCObjective(surrogates["crnn"], x, [text])
        good = obj(x)
        wrong = CTCObjective(surrogates["crnn"], x, ["zzzzzz"])(x)
        assert good.shape == (1,) and float(wrong) > float(good)
        with pytest.raises(ValueError, match="answers for"):
            CTCObjective(surrogates["crnn"], x, ["ab", "cd"])

    def test_position_objective_sign(self, surrogates):
        (text, im), = generate_batch(1, seed=9)
        x = images_to_tensor([im])
        m = surrogates["cnn"]
        right = PositionObjective(m, [text])(x)
        wrong = PositionObjective(m, ["z" * len(text)])(x)
        assert float(right) < 0 < float(wrong) + 1e-6 or float(wrong) > float(right)
        assert float(right) <= -4.0  # the clean answer is read with a wide margin
        with pytest.raises(ValueError):
            PositionObjective(m, ["a!"])

    def test_config_errors(self):
        for kw in ({"eps": 0.0}, {"surrogates": ("vit",)}, {"preprocess": "sharpen"}, {"mask": "jnd"},
                   {"min_ssim": 2.0}, {"decay": -1.0}, {"surrogates": ()}, {"weights": "equal"},
                   {"views": "none,blur"}, {"step": "adam"}):
            with pytest.raises(ValueError):
                CaptchaProtectConfig(**kw).validate()

    def test_balanced_and_views_options_protect(self):
        batch = generate_batch(2, CaptchaSpec(style="grain"), seed=4)
        x, texts = images_to_tensor([im for _, im in batch]), [t for t, _ in batch]
        cfg = CaptchaProtectConfig(surrogates=("crnn", "cnn"), weights="balanced", views="none,median",
                                   eot_samples=3, steps=2)
        prot = CaptchaProtector(cfg)
        ens = prot._objective(x, texts)
        assert float(ens.fixed.sum()) == pytest.approx(1.0) and bool((ens.fixed > 0).all())
        x_adv, infos = prot.protect(x, texts)
        assert float((x_adv - x).abs().max()) <= cfg.eps + 1e-6 and len(infos) == 2

    def test_balanced_weights_known_values(self):
        x = torch.rand(2, 3, 8, 8)
        w = balanced_weights({"a": lambda z: z.sum((1, 2, 3)), "b": lambda z: 3 * z.sum((1, 2, 3)),
                              "flat": lambda z: (z * 0).sum((1, 2, 3))}, x)
        assert w["a"] == pytest.approx(1.0) and w["b"] == pytest.approx(1 / 3) and w["flat"] == 1.0

    def test_ssim_scale_known_values(self):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(3, 3, 30, 60, generator=g) * 0.5 + 0.25
        noise = (torch.rand(3, 3, 30, 60, generator=g) - 0.5) * 0.4
        x_adv = x + noise * torch.tensor([0.01, 1.0, 0.5]).view(3, 1, 1, 1)
        before = ssim_per_image(x, x_adv)
        assert before[0] > 0.99 > 0.9 > before[1]
        target = 0.9
        xa = x_adv.clone()
        scale = ssim_scale_(xa, x, target)
        after = ssim_per_image(x, xa)
        assert scale[0] == 1.0 and torch.equal(xa[0], x_adv[0])  # above the bound: untouched
        for i in (1, 2):
            if before[i] < target:  # scaled down onto the bound, from above, within bisection resolution
                assert 0 < float(scale[i]) < 1 and target <= float(after[i]) < target + 0.005
                torch.testing.assert_close(xa[i] - x[i], (x_adv[i] - x[i]) * scale[i])
        # quantized: the bound holds on the 8-bit rounding (what a file holds)
        x8 = to_8bit(x)
        xq = to_8bit(x_adv)
        ssim_scale_(xq, x8, target, quantized=True)
        assert bool((ssim_per_image(x8, to_8bit(xq)) >= target).all())

    def test_texture_budget_range(self):
        x = torch.full((1, 3, 30, 60), 0.9)
        x[..., 10:20, 20:40] = 0.1
        b = texture_budget(x, 8 / 255, floor=0.25)
        assert b.shape == (1, 1, 30, 60)
        assert abs(float(b.min()) - 2 / 255) < 1e-6 and abs(float(b.max()) - 8 / 255) < 1e-6


# --------------------------------------------------------------------------- protection
def _pil(t: torch.Tensor) -> list:
    """``(B, 3, H, W)`` in [0, 1] -> the 8-bit PIL images a solver downloads."""
    from PIL import Image

    return [Image.fromarray((i.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for i in t]


@pytest.fixture(scope="module")
def protected():
    torch.manual_seed(0)
    # plain: the style ddddocr reads best (about 60% clean), on a flat background where the SSIM
    # bound binds hardest
    batch = generate_batch(8, CaptchaSpec(style="plain"), seed=4242)
    texts = [t for t, _ in batch]
    x = images_to_tensor([im for _, im in batch])
    before = x.clone()
    prot = CaptchaProtector(CaptchaProtectConfig(steps=25, batch_size=8))
    x_adv, infos = prot.protect(x, texts)
    return x, before, x_adv, infos, texts, prot


class TestProtect:
    def test_bounds_and_no_mutation(self, protected):
        x, before, x_adv, infos, _, prot = protected
        assert torch.equal(x, before)
        assert float((x_adv - x).abs().max()) <= prot.config.eps + 1e-6
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
        # the bound holds on the 8-bit image that is written, as reported
        written = (x_adv * 255).round() / 255
        assert bool((ssim_per_image(x, written) >= 0.9).all())
        assert all(i["ssim"] >= 0.9 for i in infos)

    def test_surrogates_fooled(self, protected, surrogates):
        x, _, x_adv, infos, texts, _ = protected
        for name, m in surrogates.items():
            assert accuracy(m, x, texts) >= 7 / 8, name  # they read the clean ones
            assert accuracy(m, x_adv, texts) == 0, name  # and none of the protected ones
        assert sum(i["fooled"] for i in infos) >= 7  # every surrogate, as is + median + JPEG
        assert all("answer" not in json.dumps(i) for i in infos)

    def test_bad_input(self, protected):
        prot = protected[-1]
        with pytest.raises(ValueError, match="answers for"):
            prot.protect(torch.rand(2, 3, 60, 160), ["abcd"])
        with pytest.raises(ValueError):
            prot.protect(torch.rand(2, 60, 160), ["abcd", "efgh"])

    @pytest.mark.skipif(not available("ddddocr"), reason="ddddocr not installed (pip install 'advprotect[captcha]')")
    def test_ddddocr_black_box(self, protected):
        x, _, x_adv, _, texts, _ = protected
        solve = load_solver("ddddocr")
        clean_ans, prot_ans = solve(_pil(x)), solve(_pil(x_adv))
        assert len(clean_ans) == len(prot_ans) == len(texts)
        clean_ok = sum(a == t for a, t in zip(clean_ans, texts))
        prot_ok = sum(a == t for a, t in zip(prot_ans, texts))
        assert clean_ok >= 2  # it solves some of these CAPTCHAs (3 of 8; about 60% of this style)...
        assert prot_ok == 0  # ...and none once protected (bench/captcha.py, 48 plain: 62% -> 2%)

    @pytest.mark.skipif(not available("tesseract"), reason="tesseract not installed (Debian tesseract-ocr + pytesseract)")
    def test_tesseract_black_box(self, protected):
        from PIL import Image, ImageDraw, ImageFont

        solve = load_solver("tesseract")
        # known value: plain printed text is what Tesseract is built for
        im = Image.new("RGB", (320, 70), "white")
        ImageDraw.Draw(im).text((12, 8), "AB12CD", fill="black", font=ImageFont.load_default(size=44))
        assert solve([im]) == ["ab12cd"]
        x, _, x_adv, _, texts, _ = protected
        clean_ok = sum(a == t for a, t in zip(solve(_pil(x)), texts))
        prot_ok = sum(a == t for a, t in zip(solve(_pil(x_adv)), texts))
        # Tesseract reads few CAPTCHAs even clean (6-8% of plain ones; bench: 2% protected), and
        # the attack never targets it: on these 8 it reads 0 clean and 1 protected
        assert prot_ok <= max(clean_ok, 1)


# --------------------------------------------------------------------------- CLI
class TestCLI:
    def test_generate_protect_evaluate(self, tmp_path):
        out, clean = tmp_path / "out", tmp_path / "clean"
        res = runner.invoke(app, ["--json", "--seed", "3", "captcha", "generate", "-n", "3", "-o", str(out),
                                  "--keep-clean", str(clean), "--steps", "4", "--eot-samples", "1"])
        assert res.exit_code == 0, res.output
        rep = json.loads(res.stdout)
        assert rep["counts"] == {"written": 3, "failed": 0}
        names = sorted(p.name for p in out.glob("*.png"))
        assert names == ["captcha_00000.png", "captcha_00001.png", "captcha_00002.png"]
        rows = list(csv.DictReader((out / "labels.csv").open()))
        assert [r["file"] for r in rows] == names and all(4 <= len(r["answer"]) <= 6 for r in rows)
        assert (clean / "labels.csv").read_text() == (out / "labels.csv").read_text()
        assert (out / ".advprotect-report.json").is_file()
        # same seed, same clean CAPTCHAs
        again = tmp_path / "again"
        res2 = runner.invoke(app, ["--seed", "3", "captcha", "generate", "-n", "3", "-o", str(again), "--no-protect"])
        assert res2.exit_code == 0, res2.output
        assert (again / "labels.csv").read_text() == (out / "labels.csv").read_text()
        assert np.array_equal(np.asarray(__import__("PIL.Image").Image.open(again / names[0])),
                              np.asarray(__import__("PIL.Image").Image.open(clean / names[0])))
        # protect the clean copies again with the labels
        prot = tmp_path / "prot"
        res3 = runner.invoke(app, ["--json", "captcha", "protect", str(clean), "--labels", str(clean / "labels.csv"),
                                   "-o", str(prot), "--steps", "4", "--eot-samples", "1"])
        assert res3.exit_code == 0, res3.output
        assert sorted(p.name for p in prot.glob("*.png")) == names
        # evaluate: solve rate per surrogate
        res4 = runner.invoke(app, ["--json", "evaluate", "--kind", "captcha", "--original", str(clean),
                                   "--protected", str(out), "--labels", str(out / "labels.csv"),
                                   "--set", "solvers=crnn,cnn", "--set", "cleanups=none,median3"])
        assert res4.exit_code == 0, res4.output
        sec = json.loads(res4.stdout)["results"]["captcha"]
        assert set(sec["models"]) == {"crnn", "cnn"} and sec["captchas"] == 3
        assert sec["solvers"]["crnn"]["clean"]["none"] >= 2 / 3
        assert 0.0 <= sec["models"]["cnn"]["mean_asr"] <= 1.0

    def test_hashed_labels(self, tmp_path):
        out = tmp_path / "h"
        res = runner.invoke(app, ["--seed", "1", "captcha", "generate", "-n", "2", "-o", str(out), "--no-protect",
                                  "--hash-answers"])
        assert res.exit_code == 0, res.output
        assert next(csv.reader((out / "labels.csv").open())) == ["file", "salt", "sha256"]
        res2 = runner.invoke(app, ["captcha", "protect", str(out), "--labels", str(out / "labels.csv"),
                                   "-o", str(tmp_path / "p")])
        assert res2.exit_code == 2 and "hashed" in res2.output

    @pytest.mark.parametrize("args, match", [
        (["generate", "-n", "2", "--charset", "ab!"], "letters and digits"),
        (["generate", "-n", "2", "--length", "6-4"], "length"),
        (["generate", "-n", "2", "--style", "fancy"], "unknown style"),
        (["generate", "-n", "2", "--surrogates", "vit"], "unknown surrogate"),
        (["protect", "IN", "--labels", "missing.csv"], "not found"),
        (["train", "--models", "vit"], "unknown model"),
        (["train", "--precision", "fp16"], "precision must be one of auto, fp32, bf16"),
    ])
    def test_usage_errors(self, tmp_path, args, match):
        args = [a if a != "IN" else str(tmp_path) for a in args]
        if "-o" not in args:
            args += ["-o", str(tmp_path / "o")]
        res = runner.invoke(app, ["captcha", *args])
        assert res.exit_code == 2, res.output
        assert match in res.output

    def test_train_writes_loadable_weights(self, tmp_path):
        out = tmp_path / "w"
        res = runner.invoke(app, ["--json", "captcha", "train", "-o", str(out), "--models", "cnn", "--steps", "2",
                                  "--batch-size", "4", "--workers", "0", "--min-accuracy", "0",
                                  "--val-per-style", "3"])
        assert res.exit_code == 0, res.output
        rep = json.loads(res.stdout)
        assert rep["steps"] == 2 and rep["precision"] in ("fp32", "bf16") and rep["below_min_accuracy"] == []
        assert set(rep["models"]["cnn"]["val_exact_match"]) == set(STYLES)
        loaded = load_surrogates(("cnn",), folder=str(out))
        assert set(loaded) == {"cnn"}
        # a 2-step model reads nothing: --min-accuracy fails the run with exit 1
        res = runner.invoke(app, ["captcha", "train", "-o", str(out), "--models", "cnn", "--steps", "2",
                                  "--batch-size", "4", "--workers", "0", "--val-per-style", "3"])
        assert res.exit_code == 1 and "below --min-accuracy" in res.output

    def test_evaluate_needs_labels(self, tmp_path):
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        res = runner.invoke(app, ["evaluate", "--kind", "captcha", "--original", str(tmp_path / "a"),
                                  "--protected", str(tmp_path / "b")])
        assert res.exit_code == 2 and "labels" in res.output

    def test_unknown_black_box_solver(self, tmp_path):
        (tmp_path / "l.csv").write_text("file,answer\na.png,abcd\n")
        from advprotect.captcha.evaluate import CaptchaEvaluator
        from advprotect.io import UsageError

        with pytest.raises(UsageError, match="unknown solver"):
            CaptchaEvaluator({"labels": str(tmp_path / "l.csv"), "solvers": "gpt"})


def test_alphabet_is_case_insensitive_digits_and_letters():
    assert ALPHABET == "0123456789abcdefghijklmnopqrstuvwxyz"
