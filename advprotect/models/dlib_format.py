"""A reader for dlib's binary serialisation of DNN networks (``*.dat`` files such as
``dlib_face_recognition_resnet_model_v1.dat``), written from dlib's documented format.

How dlib writes a network
-------------------------
* **Integers** use a variable-length encoding: one control byte whose low 4 bits give the
  number ``n`` (1..8) of little-endian payload bytes that follow, and whose bit ``0x80`` marks a
  negative signed value (magnitude in the payload). Unsigned integers never set ``0x80``.
* **Floats** (``float``/``double``) are written as two such integers, a signed 64-bit mantissa
  then a signed 16-bit exponent, meaning ``mantissa * 2**exponent`` (exponents 32000/32001/32002
  stand for +inf/-inf/NaN). A much older ASCII form (text terminated by a space) is recognised
  by the control byte having any of the bits ``0x70`` set.
* **bool** is one ASCII byte, ``'1'`` or ``'0'``; **std::string** is an unsigned length and the
  raw bytes.
* **tensor**: signed int version ``2``, then four ``long long`` (num_samples, k, nr, nc), then
  ``num_samples*k*nr*nc`` raw little-endian float32 values. An **alias_tensor** (a view into a
  layer's parameter tensor) is version ``1`` and the same four sizes, without data.
* **network**: ``add_loss_layer`` writes its version (1), the loss details, then the subnetwork.
  Each ``add_layer`` writes its version (2; 3 when it sits directly on the input layer), its
  *subnetwork first*, then the layer details (a version string such as ``"con_4"`` and the
  layer's fields), then bookkeeping (three bools and the ``x_grad``/``cached_output``/
  ``params_grad`` tensors, usually empty). Tag and skip layers (``tag1``, ``skip1``...) write
  only a version (1) and their subnetwork: **their ids, and whether a wrapper is a tag or a
  skip, are template parameters that dlib does not store**. Likewise ``add_prev_`` does not
  store which tag it adds. The file is therefore a run of wrapper versions from the output
  layer inwards, the input layer, then the details of every computational layer from the input
  outwards; the topology (which wrapper is ``tag1``, ``tag2`` or ``skip1``) must come from
  the code that knows the architecture.

:func:`parse_network` returns a :class:`DlibNetwork`: the loss, the input layer and the
list of layers from the input towards the output, each a :class:`DlibLayer` with its
attributes and its weights as numpy float32 arrays in dlib's own memory layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["DlibFormatError", "DlibLayer", "DlibNetwork", "bn_to_affine", "parse_network",
           "read_network"]


class DlibFormatError(ValueError):
    """The bytes are not a dlib network serialisation this reader understands."""


@dataclass
class DlibLayer:
    """One layer of a dlib network.

    ``kind`` is one of ``"con"``, ``"fc"``, ``"affine"``, ``"bn"``, ``"relu"``, ``"max_pool"``,
    ``"avg_pool"``, ``"add_prev"``, ``"tag_or_skip"``, ``"input_rgb_image"``, ``"loss_metric"``.
    ``version`` is the serialisation tag as stored (``"con_4"``, ``"affine_"``...; ``"1"`` for
    tag/skip wrappers). ``attrs`` holds the scalar fields, ``tensors`` the weights (float32):

    * con: ``weight`` (num_filters, k, nr, nc), ``bias`` (num_filters,) when ``use_bias``;
      attrs ``num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x, use_bias, use_relu``.
    * fc: ``weight`` (num_inputs, num_outputs) - dlib computes ``y = x @ weight`` - and ``bias``
      (num_outputs,) when ``has_bias``; attrs ``num_inputs, num_outputs, has_bias``.
    * affine: ``gamma``, ``beta`` (channels,); attrs ``mode`` (``"conv"`` or ``"fc"``),
      ``disabled``. Output is ``x * gamma + beta`` per channel.
    * bn (a batch-norm layer as saved during training): ``gamma, beta, running_means,
      running_variances``; attrs ``mode, eps``. dlib turns it into an affine layer with
      ``gamma / sqrt(var + eps)`` and ``beta - mean * gamma / sqrt(var + eps)`` when loaded.
    * max_pool / avg_pool: attrs ``nr, nc, stride_y, stride_x, padding_y, padding_x``;
      ``nr == nc == 0`` means a window over the whole input (``avg_pool_everything``).
    * relu: attrs ``disabled``. add_prev: no attributes (the tag id is not stored).
    * input_rgb_image: attrs ``avg_red, avg_green, avg_blue`` (pixel means on the 0..255
      scale) and ``nr, nc`` for the sized variant; dlib feeds ``(pixel - avg) / 256``.
    * loss_metric: attrs ``margin, dist_thresh``.
    """

    kind: str
    version: str
    attrs: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def describe(self) -> str:
        """One line such as ``con_4 num_filters=32 nr=7 ... weight=(32, 3, 7, 7)``."""
        parts = [self.version if self.kind != "tag_or_skip" else "tag_or_skip"]
        parts += [f"{k}={v}" for k, v in self.attrs.items()]
        parts += [f"{k}={tuple(v.shape)}" for k, v in self.tensors.items()]
        return " ".join(parts)


@dataclass
class DlibNetwork:
    """A parsed network: ``layers`` run from the input (index 0) towards the output."""

    loss: DlibLayer
    input: DlibLayer
    layers: list[DlibLayer]

    def summary(self) -> str:
        """Multi-line listing, input first, one layer a line."""
        lines = [f"loss   {self.loss.describe()}", f"input  {self.input.describe()}"]
        lines += [f"{i:<6} {layer.describe()}" for i, layer in enumerate(self.layers)]
        return "\n".join(lines)


# --------------------------------------------------------------------------- primitives


class _Reader:
    """Cursor over the bytes with dlib's primitive decoders."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"dlib stream, byte {self.pos}: {what}")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"unexpected end of data (wanted {n} bytes, "
                            f"{len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def int(self, signed: bool = True, max_bytes: int = 8) -> int:
        ctrl = self.take(1)[0]
        negative = bool(ctrl & 0x80)
        size = ctrl & 0x0F
        if ctrl & 0x70:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x}")
        if negative and not signed:
            raise self.fail("negative value where an unsigned integer was expected")
        if size == 0 or size > max_bytes:
            raise self.fail(f"integer of {size} bytes where at most {max_bytes} are allowed")
        value = int.from_bytes(self.take(size), "little")
        return -value if negative else value

    def uint(self, max_bytes: int = 8) -> int:
        return self.int(signed=False, max_bytes=max_bytes)

    def float(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            return self._ascii_float()
        mantissa = self.int(signed=True, max_bytes=8)
        exponent = self.int(signed=True, max_bytes=2)
        if exponent == 32000:
            return math.inf
        if exponent == 32001:
            return -math.inf
        if exponent == 32002:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def _ascii_float(self) -> float:
        end = bytes(self.data[self.pos:self.pos + 64]).find(b" ")
        if end < 0:
            raise self.fail("unterminated ASCII floating point number")
        text = bytes(self.take(end)).decode("ascii", "replace")
        self.take(1)
        table = {"inf": math.inf, "ninf": -math.inf, "NaN": math.nan}
        try:
            return table[text] if text in table else float(text)
        except ValueError:
            raise self.fail(f"bad ASCII floating point number {text!r}") from None

    def bool(self) -> bool:
        ch = self.take(1)[0]
        if ch not in (0x30, 0x31):
            raise self.fail(f"bad bool byte 0x{ch:02x}")
        return ch == 0x31

    def string(self, max_len: int = 1 << 20) -> str:
        n = self.uint()
        if n > max_len:
            raise self.fail(f"string of {n} bytes is implausibly long")
        return bytes(self.take(n)).decode("latin-1")

    def peek_name(self) -> str | None:
        """The identifier-like string at the cursor, if there is one, without consuming it."""
        save = self.pos
        try:
            n = self.uint()
            if not 1 <= n <= 64:
                return None
            raw = bytes(self.take(n))
        except DlibFormatError:
            return None
        finally:
            self.pos = save
        if all(c == 0x5F or 0x30 <= c <= 0x39 or 0x61 <= c <= 0x7A for c in raw):
            return raw.decode("ascii")
        return None

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise self.fail(f"tensor version {version}, expected 2")
        shape = tuple(self.int() for _ in range(4))
        if any(s < 0 for s in shape):
            raise self.fail(f"negative tensor size {shape}")
        count = int(np.prod(shape, dtype=np.int64))
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise self.fail(f"alias_tensor version {version}, expected 1")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


def _size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _slice(r: _Reader, params: np.ndarray, offset: int, shape: tuple[int, ...], what: str) -> np.ndarray:
    flat = params.reshape(-1)
    n = _size(shape)
    if offset + n > flat.size:
        raise r.fail(f"{what}: view of {n} values at {offset} exceeds the {flat.size} parameters")
    return flat[offset:offset + n].reshape(shape).copy()


def _learning_rates(r: _Reader) -> None:
    for _ in range(4):  # lr, weight decay, bias lr, bias weight decay multipliers
        r.float()


# --------------------------------------------------------------------------- layer details


def _con(r: _Reader, version: str) -> DlibLayer:
    if version not in ("con_4", "con_5", "con_6"):
        raise r.fail(f"unsupported convolution version {version!r}")
    params = r.tensor()
    a: dict[str, Any] = {"num_filters": r.int(), "nr": r.int(), "nc": r.int(),
                         "stride_y": r.int(), "stride_x": r.int(),
                         "padding_y": r.int(), "padding_x": r.int()}
    filters, biases = r.alias(), r.alias()
    _learning_rates(r)
    a["use_bias"] = r.bool() if version in ("con_5", "con_6") else True
    a["use_relu"] = r.bool() if version == "con_6" else False
    t = {"weight": _slice(r, params, 0, filters, "con filters")}
    if a["use_bias"] and _size(biases) > 0:
        t["bias"] = _slice(r, params, _size(filters), biases, "con biases").reshape(-1)
    if filters[0] != a["num_filters"]:
        raise r.fail(f"con: {filters[0]} filters in the view, {a['num_filters']} declared")
    return DlibLayer("con", version, a, t)


def _fc(r: _Reader, version: str) -> DlibLayer:
    if version not in ("fc_2", "fc_3"):
        raise r.fail(f"unsupported fc version {version!r}")
    num_outputs, num_inputs = r.uint(), r.uint()
    params = r.tensor()
    weights, biases = r.alias(), r.alias()
    bias_mode = r.int()
    _learning_rates(r)
    use_bias = r.bool() if version == "fc_3" else True
    has_bias = bias_mode == 0 and use_bias
    w = _slice(r, params, 0, weights, "fc weights").reshape(num_inputs, num_outputs)
    t = {"weight": w}
    if has_bias:
        t["bias"] = _slice(r, params, _size(weights), biases, "fc biases").reshape(-1)
    a = {"num_inputs": num_inputs, "num_outputs": num_outputs, "has_bias": has_bias}
    return DlibLayer("fc", version, a, t)


def _affine(r: _Reader, version: str) -> DlibLayer:
    params = r.tensor()
    gamma, beta = r.alias(), r.alias()
    mode = r.int()
    disabled = r.bool() if version == "affine_2" else False
    t = {"gamma": _slice(r, params, 0, gamma, "affine gamma").reshape(-1),
         "beta": _slice(r, params, _size(gamma), beta, "affine beta").reshape(-1)}
    return DlibLayer("affine", version, {"mode": "conv" if mode == 0 else "fc",
                                         "disabled": disabled}, t)


def _bn(r: _Reader, version: str) -> DlibLayer:
    params = r.tensor()
    gamma, beta = r.alias(), r.alias()
    r.tensor()  # means of the last mini-batch
    r.tensor()  # invstds of the last mini-batch
    running_means, running_variances = r.tensor(), r.tensor()
    r.uint()  # num_updates
    r.uint()  # running_stats_window_size
    _learning_rates(r)
    eps = r.float()
    t = {"gamma": _slice(r, params, 0, gamma, "bn gamma").reshape(-1),
         "beta": _slice(r, params, _size(gamma), beta, "bn beta").reshape(-1),
         "running_means": running_means.reshape(-1),
         "running_variances": running_variances.reshape(-1)}
    return DlibLayer("bn", version, {"mode": "conv" if version == "bn_con2" else "fc",
                                     "eps": eps}, t)


def _relu(r: _Reader, version: str) -> DlibLayer:
    return DlibLayer("relu", version, {"disabled": r.bool() if version == "relu_2" else False})


def _pool(kind: str) -> Callable[[_Reader, str], DlibLayer]:
    def parse(r: _Reader, version: str) -> DlibLayer:
        a = {"nr": r.int(), "nc": r.int(), "stride_y": r.int(), "stride_x": r.int(),
             "padding_y": r.int(), "padding_x": r.int()}
        return DlibLayer(kind, version, a)
    return parse


def _add_prev(r: _Reader, version: str) -> DlibLayer:
    return DlibLayer("add_prev", version)


_LAYERS: dict[str, Callable[[_Reader, str], DlibLayer]] = {
    "con_4": _con, "con_5": _con, "con_6": _con,
    "fc_2": _fc, "fc_3": _fc,
    "affine_": _affine, "affine_2": _affine,
    "bn_con2": _bn, "bn_fc2": _bn,
    "relu_": _relu, "relu_2": _relu,
    "max_pool_2": _pool("max_pool"),
    "avg_pool_2": _pool("avg_pool"),
    "add_prev_": _add_prev,
}


def _layer_details(r: _Reader) -> DlibLayer:
    version = r.string(max_len=256)
    try:
        parser = _LAYERS[version]
    except KeyError:
        raise r.fail(f"unsupported layer type {version!r}; this reader knows "
                     f"{', '.join(sorted(_LAYERS))}") from None
    return parser(r, version)


def _input_layer(r: _Reader) -> DlibLayer:
    version = r.string(max_len=256)
    if version not in ("input_rgb_image", "input_rgb_image_sized"):
        raise r.fail(f"unsupported input layer {version!r}")
    a: dict[str, Any] = {"avg_red": r.float(), "avg_green": r.float(), "avg_blue": r.float()}
    if version == "input_rgb_image_sized":
        a["nr"], a["nc"] = r.uint(), r.uint()
    return DlibLayer("input_rgb_image", version, a)


def _loss(r: _Reader) -> DlibLayer:
    version = r.string(max_len=256)
    if version == "loss_metric_":
        return DlibLayer("loss_metric", version, {"margin": 0.1, "dist_thresh": 0.75})
    if version == "loss_metric_2":
        return DlibLayer("loss_metric", version, {"margin": r.float(), "dist_thresh": r.float()})
    raise r.fail(f"unsupported loss layer {version!r} (only loss_metric is supported)")


def _add_layer_tail(r: _Reader, version: int) -> None:
    """Bookkeeping an add_layer writes after its details (nothing a forward pass needs)."""
    r.bool()  # this_layer_setup_called
    r.bool()  # gradient_input_is_stale
    r.bool()  # get_output_and_gradient_input_disabled
    r.tensor()  # x_grad
    r.tensor()  # cached_output
    r.tensor()  # params_grad (grad_final on the input-side layer)
    if version >= 3:
        r.uint()  # _sample_expansion_factor


# --------------------------------------------------------------------------- network


def parse_network(data: bytes) -> DlibNetwork:
    """Parse a dlib DNN serialisation (a ``loss<...<input>>`` network) into layers.

    Raises :class:`DlibFormatError` (a ``ValueError``) on anything unexpected, naming the byte
    offset. Weights are returned as float32 arrays exactly as stored.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DlibFormatError(f"expected bytes, got {type(data).__name__}")
    r = _Reader(bytes(data))
    if r.int() != 1:
        raise r.fail("not a dlib network: add_loss_layer version 1 expected at the start")
    loss = _loss(r)

    wrappers: list[int] = []  # versions of add_layer / tag / skip, outermost first
    while True:
        version = r.int()
        if version not in (1, 2, 3):
            raise r.fail(f"unexpected layer wrapper version {version}")
        name = r.peek_name()
        if name is not None and name.startswith("input"):
            break
        wrappers.append(version)
        if len(wrappers) > 100_000:
            raise r.fail("implausibly deep network")

    inp = _input_layer(r)
    layers: list[DlibLayer] = []
    if r.peek_name() in _LAYERS:  # an add_layer sitting on the input layer
        if version not in (2, 3):
            raise r.fail(f"input-side add_layer version {version}, expected 2 or 3")
        layers.append(_layer_details(r))
        _add_layer_tail(r, version)
    else:  # a tag layer sitting on the input layer
        r.tensor()  # cached_output
        r.tensor()  # grad_final
        r.bool()  # gradient_input_is_stale
        if version >= 2:
            r.uint()  # _sample_expansion_factor
        layers.append(DlibLayer("tag_or_skip", str(version)))

    for version in reversed(wrappers):
        if version == 1:  # tag<N> or skip<N>: nothing after the subnetwork
            layers.append(DlibLayer("tag_or_skip", "1"))
        else:
            layers.append(_layer_details(r))
            _add_layer_tail(r, version)

    if not r.at_end():
        raise r.fail(f"{len(r.data) - r.pos} unexpected trailing bytes after the network")
    return DlibNetwork(loss=loss, input=inp, layers=layers)


def read_network(path: str | Path) -> DlibNetwork:
    """:func:`parse_network` of a file (uncompressed ``.dat``)."""
    return parse_network(Path(path).read_bytes())


def bn_to_affine(layer: DlibLayer) -> tuple[np.ndarray, np.ndarray]:
    """(gamma, beta) of the affine layer dlib makes of a saved batch-norm layer, computed in
    float32 like dlib: ``g = gamma / sqrt(var + eps)``, ``b = beta - g * mean``."""
    if layer.kind != "bn":
        raise ValueError(f"bn_to_affine needs a bn layer, got {layer.kind}")
    t = layer.tensors
    eps = np.float32(layer.attrs["eps"])
    g = t["gamma"] / np.sqrt(t["running_variances"] + eps)
    return g.astype(np.float32), (t["beta"] - g * t["running_means"]).astype(np.float32)

