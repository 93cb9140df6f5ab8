"""``dddd``: a public pretrained CAPTCHA reader as an extra white-box surrogate.

The ``ddddocr==1.6.1`` wheel (MIT, pinned in :mod:`advprotect.models.registry`) ships two
recognition networks of the same design, trained separately:

* ``common_old.onnx`` (int8, dynamically quantised): what ``ddddocr.DdddOcr()`` runs by default.
  This is the **black-box target** of the CAPTCHA benchmark; advprotect never loads its weights
  or its gradients.
* ``common.onnx`` (float32, "beta", ``DdddOcr(beta=True)``): loaded here into our own PyTorch
  implementation of the architecture and used as one more surrogate in the attack ensemble (a
  public pretrained solver next to the small ones we train, paper 000 §3.1.3: the more diverse
  the white-box ensemble, the better the perturbation transfers).

The architecture, read from the ONNX graph: a stride-2 3x3 stem (24 channels), then three
stages of residual "fused inverted bottleneck" blocks (3x3 conv with expansion, SiLU, 1x1
projection, identity shortcut; 24 -> 48 -> 64 channels, each new stage entered by a stride-2 3x3
conv and a 1x1 projection), the ``64 x 8`` feature column of every image column fed to a
bidirectional LSTM (512 per direction), and a linear layer to per-frame class scores trained with
CTC (class 0 = blank). Batch normalisation is folded into the convolutions in the published file.

Only the classes a CAPTCHA answer can use are kept (blank and the ASCII letters and digits, 63 of
the 8,210 outputs; :func:`convert_onnx` drops the other rows of the output layer), so the output
layer is cheap.

Conventions (as :mod:`advprotect.captcha.models`): ``forward(x)`` takes ``(B, 3|1, H, W)`` in
``[0, 1]``, resizes to height 64 keeping the aspect ratio with Pillow's Lanczos filter and
converts to grey (BT.601 luma), in that order, as ddddocr does before its network, and returns
CTC log-probabilities ``(B, T, C)`` in *our* class space: 0 blank, ``1..len(ALPHABET)`` the answer alphabet (upper and lower case merged by
log-sum-exp, answers are case-insensitive), and, when the alphabet does not cover every ASCII
letter and digit, one last class for the others. ``read(x)`` decodes the kept classes greedily to text.

The weights are parsed straight from the ONNX protobuf (a small reader below; no ``onnx``
dependency) and converted once into the model cache like every other model.
"""

from __future__ import annotations

import ast
import struct
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .generate import ALPHABET
from .preprocess import lanczos_resize, luma

__all__ = ["DDDD_NAME", "HEIGHT", "DdddNet", "convert_onnx", "load_dddd", "read_onnx"]

DDDD_NAME = "dddd"
#: input height ddddocr resizes every CAPTCHA to
HEIGHT = 64
ONNX_MEMBER = "ddddocr/common.onnx"
CHARSET_MEMBER = "ddddocr/models/charset_manager.py"
_KEEP = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ----------------------------------------------------------------------- ONNX protobuf reader
def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def _fields(buf: memoryview):
    """Yield ``(field number, wire type, value)`` of one protobuf message; length-delimited
    values are memoryviews, varints ints, fixed 32/64 raw bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
        elif wt == 2:
            ln, i = _varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wt == 5:
            v, i = bytes(buf[i:i + 4]), i + 4
        elif wt == 1:
            v, i = bytes(buf[i:i + 8]), i + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, v


def _tensor(msg: memoryview) -> tuple[str, np.ndarray]:
    # TensorProto: 1 dims, 2 data_type, 4 float_data, 7 int64_data, 8 name, 9 raw_data
    dims: list[int] = []
    dtype, name, raw, floats = 1, "", None, []
    for num, wt, v in _fields(msg):
        if num == 1:
            if wt == 2:
                j = 0
                while j < len(v):
                    d, j = _varint(v, j)
                    dims.append(d)
            else:
                dims.append(v)
        elif num == 2:
            dtype = v
        elif num == 8:
            name = bytes(v).decode()
        elif num == 9:
            raw = bytes(v)
        elif num == 4:
            floats += list(struct.unpack(f"<{len(v) // 4}f", bytes(v))) if wt == 2 else list(struct.unpack("<f", v))
    np_type = {1: np.float32, 7: np.int64, 6: np.int32, 11: np.float64}.get(dtype)
    if np_type is None:
        raise ValueError(f"ONNX tensor {name!r}: unsupported data type {dtype}")
    arr = np.frombuffer(raw, dtype=np_type).copy() if raw is not None else np.asarray(floats, dtype=np_type)
    return name, arr.reshape(dims)


def read_onnx(data: bytes) -> tuple[list[tuple[str, list[str]]], dict[str, np.ndarray]]:
    """``(nodes, initializers)`` of an ONNX model: nodes as ``(op_type, inputs)`` in graph order,
    initializers as ``{name: array}``. Raises ``ValueError`` on a file that is not ONNX."""
    buf = memoryview(data)
    graph = next((v for num, wt, v in _fields(buf) if num == 7 and wt == 2), None)
    if graph is None:
        raise ValueError("not an ONNX model (no graph)")
    nodes, inits = [], {}
    for num, wt, v in _fields(graph):
        if num == 1 and wt == 2:       # NodeProto: 1 input, 4 op_type
            inputs, op = [], ""
            for n2, _w2, v2 in _fields(v):
                if n2 == 1:
                    inputs.append(bytes(v2).decode())
                elif n2 == 4:
                    op = bytes(v2).decode()
            nodes.append((op, inputs))
        elif num == 5 and wt == 2:     # initializer
            name, arr = _tensor(v)
            inits[name] = arr
    return nodes, inits


def _beta_charset(source: bytes) -> list[str]:
    """The class list of ``common.onnx``: the list literal ``_get_beta_charset`` returns in
    ddddocr's ``charset_manager.py`` (read with :mod:`ast`, never executed)."""
    tree = ast.parse(source.decode("utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "_get_beta_charset":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Return) and isinstance(sub.value, ast.List):
                    return [ast.literal_eval(e) for e in sub.value.elts]
    raise ValueError("ddddocr charset_manager.py: _get_beta_charset list not found")


# ----------------------------------------------------------------------------- the network
def _conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class _Block(nn.Module):
    """``x + proj(silu(conv3x3(x)))`` (expansion ``mid / ch``)."""

    def __init__(self, ch: int, mid: int) -> None:
        super().__init__()
        self.expand = _conv(ch, mid, 3)
        self.proj = _conv(mid, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(F.silu(self.expand(x)))


class _Down(nn.Module):
    """``proj(silu(conv3x3 stride 2(x)))``: the entry of a stage."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.expand = _conv(cin, mid, 3, 2)
        self.proj = _conv(mid, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.silu(self.expand(x)))


class DdddNet(nn.Module):
    """ddddocr's recognition network (our implementation; see module docstring).

    ``forward(x)`` ``(B, 3|1, H, W)`` in [0, 1] -> log-probabilities ``(B, T, C)`` (``C`` =
    ``NUM_CLASSES``, or one more for an "other" class, see the module docstring),
    ``T = ceil(W * 64 / H / 8)``; :meth:`raw_logits` gives the kept classes' own scores
    ``(B, T, K)`` (the columns of the published output layer, for parity checks).
    """

    kind = "ctc"

    def __init__(self, classes: Sequence[str] | None = None) -> None:
        super().__init__()
        self.stem = _conv(1, 24, 3, 2)
        self.stage1 = nn.Sequential(_Block(24, 24), _Block(24, 24))
        self.down2 = _Down(24, 96, 48)
        self.stage2 = nn.Sequential(*[_Block(48, 192) for _ in range(3)])
        self.down3 = _Down(48, 192, 64)
        self.stage3 = nn.Sequential(*[_Block(64, 256) for _ in range(3)])
        self.rnn = nn.LSTM(512, 512, bidirectional=True)
        kept = list(classes) if classes is not None else ["", *_KEEP]
        self.head = nn.Linear(1024, len(kept))
        # code points of the kept classes (0 = blank), saved with the weights
        self.register_buffer("classes", torch.tensor([ord(c) if c else 0 for c in kept], dtype=torch.long))
        self._groups: Tensor | None = None

    # -- class bookkeeping
    def _group_matrix(self) -> Tensor:
        """``(K, NUM_CLASSES + 1)`` 0/1 matrix: which of our classes each kept class counts for."""
        if self._groups is None or self._groups.device != self.classes.device:
            index = {c: i + 1 for i, c in enumerate(ALPHABET)}
            other = len(ALPHABET) + 1
            g = torch.zeros(len(self.classes), other + 1)
            for k, cp in enumerate(self.classes.tolist()):
                g[k, 0 if cp == 0 else index.get(chr(cp).lower(), other)] = 1.0
            if not bool(g[:, other].any()):      # every kept class is in the alphabet
                g = g[:, :other]
            self._groups = g.to(self.classes.device)
        return self._groups

    @staticmethod
    def to_input(x: Tensor) -> Tensor:
        """``(B, 3|1, H, W)`` in [0, 1] -> grey ``(B, 1, 64, int(W * 64 / H))`` in [0, 1].

        ddddocr's own order: a Pillow Lanczos resize of the colour image to height 64, then the
        luma (:func:`~advprotect.captcha.preprocess.lanczos_resize`, exact up to 8-bit rounding;
        a bilinear resize instead shifts the solver's input by up to 4/255 and the attack
        optimises through a preprocessing the solver does not run)."""
        h, w_ = x.shape[-2:]
        if h != HEIGHT:
            x = lanczos_resize(x, (HEIGHT, max(8, int(w_ * HEIGHT / h))))
        return luma(x)

    def raw_logits(self, x: Tensor) -> Tensor:
        """Scores of the kept classes ``(B, T, K)``."""
        f = self.stem(self.to_input(x))
        f = self.stage1(F.silu(f))
        f = self.stage3(self.down3(self.stage2(self.down2(f))))
        b, c, h, w = f.shape
        seq = f.permute(3, 0, 1, 2).reshape(w, b, c * h)          # (T, B, 512): channel-major
        if seq.is_cuda and torch.is_grad_enabled() and not self.training:
            with torch.backends.cudnn.flags(enabled=False):      # cuDNN RNN backward needs train mode
                out, _ = self.rnn(seq)
        else:
            out, _ = self.rnn(seq)
        return self.head(out).transpose(0, 1)                       # (B, T, K)

    def forward(self, x: Tensor) -> Tensor:
        lp = self.raw_logits(x).float().log_softmax(-1)
        # log sum over the kept classes of each group (upper/lower case, the "other" class); a
        # large finite penalty, not -inf, outside the group keeps every gradient finite
        mask = (self._group_matrix() - 1.0) * 1e4
        return torch.logsumexp(lp.unsqueeze(-1) + mask, dim=2)

    @torch.no_grad()
    def read(self, x: Tensor) -> list[str]:
        """Greedy CTC decoding over the kept classes (repeats merged, blanks dropped), lower case."""
        best = self.raw_logits(x).argmax(-1).cpu().tolist()
        cps = self.classes.tolist()
        out = []
        for row in best:
            merged = [c for i, c in enumerate(row) if cps[c] != 0 and (i == 0 or c != row[i - 1])]
            out.append("".join(chr(cps[c]) for c in merged).lower())
        return out


# ------------------------------------------------------------------------------- converter
def convert_onnx(files: dict[str, bytes]) -> dict[str, Tensor]:
    """Model-store converter: ``{common.onnx: bytes, charset_manager.py: bytes}`` -> the state dict
    of :class:`DdddNet` (output layer cut to the kept classes). Raises ``ValueError`` when the
    graph is not the expected one (layer count or shapes)."""
    onnx_bytes = next((v for k, v in files.items() if k.endswith(".onnx")), None)
    charset_src = next((v for k, v in files.items() if k.endswith(".py")), None)
    if onnx_bytes is None or charset_src is None:
        raise ValueError(f"ddddocr converter: need the .onnx model and charset_manager.py, got {sorted(files)}")
    charset = _beta_charset(charset_src)
    nodes, inits = read_onnx(onnx_bytes)
    convs = [ins for op, ins in nodes if op == "Conv"]
    lstm = [ins for op, ins in nodes if op == "LSTM"]
    gemm = [ins for op, ins in nodes if op == "Gemm"]
    if len(convs) != 21 or len(lstm) != 1 or len(gemm) != 1:
        raise ValueError(f"unexpected ddddocr graph: {len(convs)} Conv, {len(lstm)} LSTM, {len(gemm)} Gemm")
    w_fc, b_fc = inits[gemm[0][1]], inits[gemm[0][2]]
    if w_fc.shape[0] != len(charset):
        raise ValueError(f"output layer has {w_fc.shape[0]} classes, charset {len(charset)}")
    pos = {c: i for i, c in enumerate(charset) if c}
    kept = [0] + [pos[c] for c in _KEEP if c in pos]
    model = DdddNet(["", *[charset[i] for i in kept[1:]]])
    want = model.state_dict()
    state: dict[str, Tensor] = {}
    conv_names = [n[: -len(".weight")] for n in want if n.endswith(".weight") and "rnn" not in n and "head" not in n]
    if len(conv_names) != len(convs):
        raise ValueError("ddddocr converter: layer count mismatch")
    for name, ins in zip(conv_names, convs):
        state[f"{name}.weight"] = torch.from_numpy(inits[ins[1]])
        state[f"{name}.bias"] = torch.from_numpy(inits[ins[2]])
    W, R, B = (inits[lstm[0][i]] for i in (1, 2, 3))
    hid = R.shape[-1]
    # ONNX gate order i, o, f, c -> torch i, f, g, o
    order = np.concatenate([np.arange(k * hid, (k + 1) * hid) for k in (0, 2, 3, 1)])
    for d, suffix in enumerate(("", "_reverse")):
        state[f"rnn.weight_ih_l0{suffix}"] = torch.from_numpy(W[d][order].copy())
        state[f"rnn.weight_hh_l0{suffix}"] = torch.from_numpy(R[d][order].copy())
        state[f"rnn.bias_ih_l0{suffix}"] = torch.from_numpy(B[d][: 4 * hid][order].copy())
        state[f"rnn.bias_hh_l0{suffix}"] = torch.from_numpy(B[d][4 * hid:][order].copy())
    state["head.weight"] = torch.from_numpy(w_fc[kept].copy())
    state["head.bias"] = torch.from_numpy(b_fc[kept].copy())
    state["classes"] = want["classes"]
    for k, v in want.items():
        if k not in state or tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"ddddocr converter: {k} missing or of shape "
                             f"{tuple(state[k].shape) if k in state else None}, expected {tuple(v.shape)}")
    return {k: v.float().contiguous() if v.is_floating_point() else v for k, v in state.items()}


def load_dddd(device: torch.device | str = "cpu", *, allow_download: bool = True) -> DdddNet:
    """The ``dddd`` surrogate (weights of ``common.onnx`` from the pinned ddddocr wheel, converted
    once into the model cache; no network once cached) in eval mode on ``device``."""
    from ..models import registry, store

    state = store.load_state_dict(registry.get("ddddocr-beta"), allow_download=allow_download)
    model = DdddNet(["" if cp == 0 else chr(cp) for cp in state["classes"].tolist()])
    model.load_state_dict(state, strict=True)
    model.eval().requires_grad_(False)
    return model.to(device)
