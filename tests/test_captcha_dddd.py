"""The ``dddd`` surrogate: our implementation of ddddocr's recognition network with the weights
of the pinned wheel's ``common.onnx`` (issue #6). Smoke and exceptions on random weights; the
ONNX reader on a hand-built protobuf; parity against onnxruntime on real CAPTCHAs."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from advprotect.captcha.ctc_objective import CTCObjective
from advprotect.captcha.dddd import DdddNet, convert_onnx, read_onnx
from advprotect.captcha.generate import ALPHABET, CaptchaSpec, generate_batch
from advprotect.captcha.models import NUM_CLASSES
from advprotect.captcha.solvers import available, load_white_box, white_box_names
from advprotect.captcha.train import images_to_tensor


# -------------------------------------------------------------- a tiny protobuf writer (tests only)
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes | int) -> bytes:
    if isinstance(payload, int):
        return _varint(num << 3) + _varint(payload)
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _onnx(nodes, tensors) -> bytes:
    graph = b""
    for op, inputs in nodes:
        graph += _field(1, b"".join(_field(1, i.encode()) for i in inputs) + _field(4, op.encode()))
    for name, arr in tensors.items():
        dims = b"".join(_varint(d) for d in arr.shape)
        graph += _field(5, _field(1, dims) + _field(2, 1) + _field(8, name.encode())
                        + _field(9, arr.astype("<f4").tobytes()))
    return _field(1, 7) + _field(7, graph)   # ir_version, graph


class TestSmoke:
    def test_shapes_random_weights(self):
        m = DdddNet().eval()
        x = torch.rand(2, 3, 60, 160)
        out = m(x)
        # 64 x 170 after the resize, three stride-2 stages: 170 -> 85 -> 43 -> 22 frames
        assert out.shape == (2, 22, NUM_CLASSES)
        assert torch.allclose(out.exp().sum(-1), torch.ones(2, 22), atol=1e-4)   # log-probabilities
        assert m.raw_logits(x).shape == (2, 22, 63)
        assert len(m.read(x)) == 2

    def test_upper_and_lower_case_merge(self):
        m = DdddNet(["", "a", "A", "7"]).eval()
        raw = torch.tensor([[[0.0, 1.0, 2.0, -1.0]]])
        lp = raw.log_softmax(-1)
        m.raw_logits = lambda x: raw      # the grouping only
        out = m(torch.zeros(1, 1, 64, 8))
        a, seven = ALPHABET.index("a") + 1, ALPHABET.index("7") + 1
        assert math.isclose(float(out[0, 0, a]), float(torch.logsumexp(lp[0, 0, 1:3], 0)), rel_tol=1e-5)
        assert math.isclose(float(out[0, 0, seven]), float(lp[0, 0, 3]), rel_tol=1e-5)
        assert float(out[0, 0, 0]) == pytest.approx(float(lp[0, 0, 0]))
        assert float(out[0, 0, ALPHABET.index("b") + 1]) < -1000      # class the model cannot read

    def test_finite_gradient_through_ctc_objective(self):
        torch.manual_seed(0)
        m = DdddNet().eval().requires_grad_(False)
        x = torch.rand(2, 3, 60, 160)
        obj = CTCObjective(m, x, ["ab3", "7x"])
        xa = x.clone().requires_grad_(True)
        obj(xa).sum().backward()
        assert torch.isfinite(xa.grad).all() and xa.grad.abs().sum() > 0

    def test_is_a_white_box_solver(self):
        assert "dddd" in white_box_names()


class TestOnnxReader:
    def test_known_values(self):
        w = np.arange(6, dtype=np.float32).reshape(2, 3)
        nodes, inits = read_onnx(_onnx([("Conv", ["x", "w"]), ("Add", ["y", "z"])], {"w": w}))
        assert nodes == [("Conv", ["x", "w"]), ("Add", ["y", "z"])]
        np.testing.assert_array_equal(inits["w"], w)

    def test_not_onnx(self):
        with pytest.raises(ValueError, match="not an ONNX model"):
            read_onnx(_field(1, 7))

    def test_converter_errors(self):
        with pytest.raises(ValueError, match="need the .onnx model and charset_manager.py"):
            convert_onnx({"ddddocr/common.onnx": b""})
        charset = b"def _get_beta_charset(self):\n    return ['', 'a', 'b']\n"
        with pytest.raises(ValueError, match="unexpected ddddocr graph"):
            convert_onnx({"m.onnx": _onnx([("Conv", ["x", "w"])], {"w": np.zeros((1, 1), np.float32)}),
                          "ddddocr/models/charset_manager.py": charset})
        with pytest.raises(ValueError, match="_get_beta_charset list not found"):
            convert_onnx({"m.onnx": _onnx([], {}), "c.py": b"x = 1\n"})

    def test_unknown_surrogate(self):
        with pytest.raises(ValueError, match="unknown surrogate"):
            load_white_box(["nope"])


@pytest.mark.slow
@pytest.mark.skipif(not available("ddddocr"), reason="ddddocr not installed (pip install 'advprotect[captcha]')")
class TestParity:
    """Our port against onnxruntime running the same ``common.onnx`` (ddddocr's beta model)."""

    def test_logits_match_onnxruntime(self):
        import os

        import ddddocr
        import onnxruntime as ort

        from advprotect.captcha.dddd import _beta_charset

        root = os.path.dirname(ddddocr.__file__)
        model = load_white_box(["dddd"])["dddd"]
        with open(os.path.join(root, "models", "charset_manager.py"), "rb") as f:
            charset = _beta_charset(f.read())
        cols = [0] + [charset.index(chr(c)) for c in model.classes.tolist()[1:]]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(os.path.join(root, "common.onnx"), opts, providers=["CPUExecutionProvider"])
        for style in ("plain", "noisy"):
            for _text, im in generate_batch(3, CaptchaSpec(style=style), seed=11):
                g = np.asarray(im.convert("L").resize((170, 64)), dtype=np.float32)[None, None] / 255.0
                ref = sess.run(None, {"input1": g})[0][:, 0, cols]          # (T, K)
                ours = model.raw_logits(torch.from_numpy(g))[0].numpy()
                assert ours.shape == ref.shape
                assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()

    def test_input_is_what_ddddocr_feeds(self):
        """to_input = ddddocr's preprocessing (Pillow Lanczos resize to height 64, then grey)."""
        from PIL import Image

        ims = [im for _, im in generate_batch(3, CaptchaSpec(style="noisy"), seed=12)]
        ours = DdddNet.to_input(images_to_tensor(ims).double())[:, 0].numpy() * 255
        ref = np.stack([np.asarray(im.resize((170, 64), Image.LANCZOS).convert("L"), dtype=np.float64) for im in ims])
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= 2.0      # Pillow's 8-bit rounding: resize, then grey

    def test_port_reads_like_the_package(self):
        """End to end: our port (``dddd``) and the package running the same network
        (``ddddocr-beta``: its own Pillow preprocessing and onnxruntime) give the same answers.

        The package picks the best of all 8,210 classes and drops what is not a letter or digit;
        the port picks the best letter or digit. So the two agree wherever the package's raw
        answer is letters and digits only (10 of these 12; elsewhere it reads e.g. ``)yx>``)."""
        import contextlib
        import os

        import ddddocr

        from advprotect.captcha.solvers import is_white_box, load_solver, normalize

        ims = [im for _, im in generate_batch(12, CaptchaSpec(style="grain"), seed=21)]
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            package = ddddocr.DdddOcr(show_ad=False, beta=True)
        raw = [package.classification(im) for im in ims]
        ours = load_solver("dddd")(ims)
        pairs = [(a, r.lower()) for a, r in zip(ours, raw) if r.isascii() and r.isalnum()]
        assert len(pairs) >= 8, raw
        assert all(a == r for a, r in pairs), pairs
        assert load_solver("ddddocr-beta")(ims[:2]) == [normalize(r) for r in raw[:2]]
        assert is_white_box("ddddocr-beta") and not is_white_box("ddddocr")

    def test_reads_clean_captchas(self):
        model = load_white_box(["dddd"])["dddd"]
        batch = generate_batch(24, CaptchaSpec(style="plain"), seed=3)
        answers = model.read(images_to_tensor([im for _, im in batch]))
        hits = sum(a == t for a, (t, _) in zip(answers, batch))
        assert hits >= 8, f"the dddd port read {hits}/24 clean CAPTCHAs"
