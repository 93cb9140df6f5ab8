"""Face-verification evaluator of ``advprotect evaluate``: does a protected photo still match?

For every model (the torch white-box models of the zoo and, when dlib-bin is installed, native
dlib as an independent black box), every protected photo is verified against references:

- ``own``: its own clean photo (the face of the clean photo found by that model);
- ``enrolled``: other clean photos of the same person (``--enrolled DIR/<identity>/*``, or the other
  originals of the same identity, or the ``same=1`` rows of a pairs file);
- ``impostor``: the ``same=0`` rows of a pairs file (false accepts, reported, not an ASR);
- ``adv_adv``: protected photos of the same person against each other (APF section 4.3.2).

A pair is "verified" when the embedding distance is below the model's threshold at FAR 1e-2
(``far1e-2``, the default decision) or 1e-3. The probe face is the one overlapping the reference
photo's main (largest) face box; when the model finds no such face in the probe, the pair counts
as not verified. Pairs whose *reference* photo has no face are left out (counted in
``missing_reference``). For each model, transform and pair kind (see :mod:`.command` for the JSON)::

    pairs                  N_total
    verified_clean         N_w/o: the clean photo (after the same transform) vs the reference
    verified_protected     N_w:   the protected photo (after the transform) vs the reference
    asr                    (N_w/o - N_w) / N_total                       (APF Eq. 11)
    protection_rate        share of the N_w/o pairs no longer verified when protected
    verify_rate_clean      N_w/o / N_total
    verify_rate_protected  N_w / N_total

The reference is always the untransformed clean photo: the transform is what the protected photo
meets after it is shared (a recogniser's gallery holds clean photos).
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..models.zoo import FACE_MODELS, embedding_distance
from .robustness import Transform, map_box, to_uint8

__all__ = ["Face", "FaceBackends", "FaceEvaluator", "available_models", "resolve_models"]

FAR_KEYS = ("far1e-2", "far1e-3")
HEADLINE_FAR = "far1e-2"
ASR_KINDS = ("own", "enrolled")
MATCH_IOU = 0.3


@dataclass
class Face:
    box: list[float]  # x0, y0, x1, y1 in the pixels of the photo it was found in
    emb: torch.Tensor  # (D,) float64 on cpu

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def available_models() -> list[str]:
    """Every registered model that can run here (native dlib only when dlib-bin imports)."""
    from ..faces.dlib_native import DlibVerifier

    have_dlib = DlibVerifier.available()
    return [n for n, m in FACE_MODELS.items() if not m.native or have_dlib]


def resolve_models(models: str | Sequence[str] | None) -> list[str]:
    """Model names from a comma list / sequence (``None``/``"all"``: :func:`available_models`).
    Raises ``ValueError`` for an unknown or unavailable one."""
    if models is None or (isinstance(models, str) and models.strip().lower() in ("", "all")):
        return available_models()
    names = [m.strip() for m in (models.split(",") if isinstance(models, str) else models) if m.strip()]
    if not names:
        raise ValueError("no face model given")
    avail = available_models()
    for n in names:
        if n not in FACE_MODELS:
            raise ValueError(f"unknown face model {n!r}; known: {', '.join(FACE_MODELS)}")
        if n not in avail:
            raise ValueError(f"face model {n!r} needs dlib: pip install dlib-bin")
    return list(dict.fromkeys(names))


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pick(faces: list[Face], box: Sequence[float] | None) -> Face | None:
    """The face overlapping ``box`` most (IoU >= 0.3), or the largest face when ``box`` is None."""
    if not faces:
        return None
    if box is None:
        return faces[0]
    best, best_iou = None, MATCH_IOU
    for f in faces:
        v = iou(f.box, box)
        if v >= best_iou:
            best, best_iou = f, v
    return best


# ---------------------------------------------------------------------------- embedding backends

_CACHE: OrderedDict[tuple, dict[str, list[Face]]] = OrderedDict()
_CACHE_SIZE = 512


def _photo_key(photo: torch.Tensor, device: str, min_face: int) -> tuple:
    arr = to_uint8(photo)
    return (hashlib.sha1(arr.tobytes()).hexdigest(), arr.shape, device, min_face)


class FaceBackends:
    """Detect + embed every face of a photo with each model; results cached by pixel content and
    model (an identical copy, or the clean photo reused as a reference, is embedded once)."""

    def __init__(self, models: Sequence[str], device: torch.device | str = "cpu", *, min_face: int = 20) -> None:
        self.models = tuple(models)
        self.device = str(torch.device(device))
        self.min_face = min_face
        self._analyzer = None
        self._verifier = None
        self.notes: list[str] = []

    def analyzer(self):
        if self._analyzer is None:
            from ..faces.embed import FaceAnalyzer

            self._analyzer = FaceAnalyzer(self.device, min_face=self.min_face)
        return self._analyzer

    def verifier(self):
        if self._verifier is None:
            from ..faces.dlib_native import DlibVerifier

            self._verifier = DlibVerifier.load()
        return self._verifier

    def faces(self, photos: Sequence[torch.Tensor]) -> list[dict[str, list[Face]]]:
        """Per photo ``{model: [Face, ...]}``, largest face first (``[]``: none found)."""
        keys = [_photo_key(p, self.device, self.min_face) for p in photos]
        groups: dict[tuple[str, ...], dict[tuple, int]] = {}
        for i, k in enumerate(keys):
            have = _CACHE.get(k, {})
            missing = tuple(m for m in self.models if m not in have)
            if missing:
                groups.setdefault(missing, {}).setdefault(k, i)
        for missing, todo in groups.items():
            idx = list(todo.values())
            found = self._compute([photos[i] for i in idx], missing)
            for i, f in zip(idx, found):
                _CACHE.setdefault(keys[i], {}).update(f)
        out = []
        for k in keys:
            _CACHE.move_to_end(k)
            out.append({m: _CACHE[k][m] for m in self.models})
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return out

    def _compute(self, photos: list[torch.Tensor], models: Sequence[str]) -> list[dict[str, list[Face]]]:
        torch_names = [m for m in models if not FACE_MODELS[m].native]
        native_names = [m for m in models if FACE_MODELS[m].native]
        res: list[dict[str, list[Face]]] = [{m: [] for m in models} for _ in photos]
        if torch_names:
            try:
                per_photo = self.analyzer().embed_photos(photos, torch_names)
            except Exception:  # noqa: BLE001 - one bad photo must not sink the batch: retry one by one
                per_photo = []
                for p in photos:
                    try:
                        per_photo.append(self.analyzer().embed_photos([p], torch_names)[0])
                    except Exception as exc:  # noqa: BLE001 - reported as "no face"
                        self.notes.append(f"face analysis failed on a photo: {exc}")
                        per_photo.append([])
            for r, faces in zip(res, per_photo):
                for m in torch_names:
                    r[m] = sorted((Face([float(v) for v in f["job"].box], f["embeddings"][m].detach().cpu().double())
                                   for f in faces), key=lambda f: -f.area)
        for m in native_names:
            for r, p in zip(res, photos):
                try:
                    found = self.verifier().faces(to_uint8(p))
                except Exception as exc:  # noqa: BLE001
                    self.notes.append(f"dlib failed on a photo: {exc}")
                    found = []
                r[m] = [Face([float(v) for v in f.box], torch.as_tensor(f.descriptor, dtype=torch.float64))
                        for f in found]
        return res


# ---------------------------------------------------------------------------- counting

class _Tally:
    __slots__ = ("clean", "pairs", "prot", "prot_among_clean")

    def __init__(self) -> None:
        self.pairs = self.clean = self.prot = self.prot_among_clean = 0

    def add(self, ok_clean: bool, ok_prot: bool) -> None:
        self.pairs += 1
        self.clean += ok_clean
        self.prot += ok_prot
        self.prot_among_clean += ok_clean and ok_prot

    def asdict(self) -> dict[str, Any]:
        n, c, p = self.pairs, self.clean, self.prot
        return {
            "pairs": n, "verified_clean": c, "verified_protected": p,
            "asr": round((c - p) / n, 4) if n else None,
            "protection_rate": round((c - self.prot_among_clean) / c, 4) if c else None,
            "verify_rate_clean": round(c / n, 4) if n else None,
            "verify_rate_protected": round(p / n, 4) if n else None,
        }


def _dist(a: Face | None, b: Face | None, kind: str) -> float | None:
    if a is None or b is None:
        return None
    return float(embedding_distance(a.emb[None], b.emb[None], kind)[0])


def _ok(d: float | None, thr: float) -> bool:
    return d is not None and d < thr


# ---------------------------------------------------------------------------- the evaluator

class FaceEvaluator:
    """Evaluator ``faces`` (see :mod:`advprotect.evaluate.command` for the evaluator protocol).

    Args:
        models: model names (see :func:`resolve_models`).
        transforms: parsed transforms applied to the protected (and, for the baseline, the clean)
            photo; the untransformed photo is always measured too, as ``"none"``.
        device: torch device.
    """

    kind = "faces"

    def __init__(self, models: Sequence[str], transforms: Sequence[Transform] = (), device="cpu",
                 *, min_face: int = 20) -> None:
        self.models = list(models)
        self.transforms = list(transforms)
        self.variants = ["none"] + [t.name for t in self.transforms]
        self.backends = FaceBackends(self.models, device, min_face=min_face)
        self.state: dict[str, dict] = {}
        self.ctx = None
        self._ref_cache: dict[str, dict[str, Face | None] | None] = {}
        self.errors: list[dict[str, str]] = []

    # -------------------------------------------------------------- protocol
    def begin(self, ctx) -> None:
        self.ctx = ctx

    def add(self, item, clean: torch.Tensor, protected: torch.Tensor, scratch: dict) -> None:
        """Embed the clean and protected photo of one pair under every transform."""
        cleans, prots, maps = [clean], [protected], [(1.0, 1.0, 0.0, 0.0)]
        for t in self.transforms:
            c, m = t.apply(clean)
            p, _ = t.apply(protected)
            cleans.append(c)
            prots.append(p)
            maps.append(m)
        found = self.backends.faces(cleans + prots)
        fc, fp = found[: len(cleans)], found[len(cleans):]
        main = {m: (fc[0][m][0] if fc[0][m] else None) for m in self.models}
        st: dict[str, Any] = {"item": item, "main": main, "clean": {}, "prot": {},
                              "faces_clean": {m: len(fc[0][m]) for m in self.models},
                              "faces_protected": {m: len(fp[0][m]) for m in self.models}}
        for v, mp, a, b in zip(self.variants, maps, fc, fp):
            st["clean"][v], st["prot"][v] = {}, {}
            for m in self.models:
                box = map_box(main[m].box, mp) if main[m] is not None else None
                st["clean"][v][m] = pick(a[m], box)
                st["prot"][v][m] = pick(b[m], box)
        self.state[str(item.rel)] = st
        self._ref_cache[str(Path(item.original).resolve())] = main
        for m in self.models:  # the face region for the quality evaluator
            if main[m] is not None:
                scratch.setdefault("face_box", [round(v, 1) for v in main[m].box])
                scratch.setdefault("face_box_model", m)

    def _ref(self, path: Path) -> dict[str, Face | None] | None:
        key = str(Path(path).resolve())
        if key not in self._ref_cache:
            from ..io import ImageReadError, read_image

            try:
                px = read_image(path).pixels
            except ImageReadError as exc:
                self.errors.append({"path": str(path), "error": f"reference unreadable: {exc}"})
                self._ref_cache[key] = None
            else:
                f = self.backends.faces([px])[0]
                self._ref_cache[key] = {m: (f[m][0] if f[m] else None) for m in self.models}
        return self._ref_cache[key]

    def finish(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The JSON section and per-image CSV fields ``{rel: {column: value}}``."""
        ctx = self.ctx
        say = (ctx.progress if ctx is not None and ctx.progress else (lambda _m: None))
        tallies: dict = defaultdict(_Tally)  # (model, variant, kind, far) -> tally
        missing_ref: dict = defaultdict(int)  # (model, kind) -> count
        rows: dict[str, dict[str, Any]] = {rel: {} for rel in self.state}
        thr = {m: FACE_MODELS[m].thresholds for m in self.models}
        dk = {m: FACE_MODELS[m].distance for m in self.models}

        def count(rel: str, kind: str, ref: Face | None, m: str, col: str | None) -> None:
            st = self.state[rel]
            if ref is None:
                missing_ref[(m, kind)] += 1
                return
            for v in self.variants:
                dc = _dist(st["clean"][v][m], ref, dk[m])
                dp = _dist(st["prot"][v][m], ref, dk[m])
                for far in FAR_KEYS:
                    tallies[(m, v, kind, far)].add(_ok(dc, thr[m][far]), _ok(dp, thr[m][far]))
                if v == "none" and col:
                    r = rows[rel]
                    r[f"{m}_{col}_pairs"] = r.get(f"{m}_{col}_pairs", 0) + 1
                    r[f"{m}_{col}_verified_clean"] = r.get(f"{m}_{col}_verified_clean", 0) + _ok(dc, thr[m][HEADLINE_FAR])
                    r[f"{m}_{col}_verified_protected"] = r.get(f"{m}_{col}_verified_protected", 0) + _ok(dp, thr[m][HEADLINE_FAR])

        say("faces: own pairs")
        for rel, st in self.state.items():
            for m in self.models:
                count(rel, "own", st["main"][m], m, None)
                d = _dist(st["prot"]["none"][m], st["main"][m], dk[m])
                rows[rel][f"{m}_face_clean"] = st["main"][m] is not None
                rows[rel][f"{m}_face_protected"] = st["prot"]["none"][m] is not None
                rows[rel][f"{m}_own_distance"] = None if d is None else round(d, 4)
                rows[rel][f"{m}_own_verified"] = _ok(d, thr[m][HEADLINE_FAR]) if st["main"][m] is not None else None

        say("faces: enrolled pairs")
        refs_used: set[str] = set()
        for rel, kind, ref_path in self._reference_pairs():
            ref = self._ref(ref_path)
            refs_used.add(str(ref_path))
            for m in self.models:
                count(rel, kind, None if ref is None else ref[m], m, kind)

        say("faces: adversarial-adversarial pairs")
        advadv: dict = defaultdict(_Tally)
        by_id: dict[str, list[str]] = defaultdict(list)
        for rel, st in self.state.items():
            if st["item"].identity is not None:
                by_id[st["item"].identity].append(rel)
        for rels in by_id.values():
            for a, b in itertools.combinations(rels, 2):
                for m in self.models:
                    ca, cb = self.state[a]["main"][m], self.state[b]["main"][m]
                    if ca is None or cb is None:
                        missing_ref[(m, "adv_adv")] += 1
                        continue
                    dc = _dist(ca, cb, dk[m])
                    dp = _dist(self.state[a]["prot"]["none"][m], self.state[b]["prot"]["none"][m], dk[m])
                    for far in FAR_KEYS:
                        advadv[(m, far)].add(_ok(dc, thr[m][far]), _ok(dp, thr[m][far]))

        models_out: dict[str, Any] = {}
        robustness: dict[str, dict[str, float | None]] = {}
        for m in self.models:
            info = FACE_MODELS[m]
            kinds: dict[str, Any] = {}
            for kind in ("own", "enrolled", "impostor"):
                per_v = {}
                for v in self.variants:
                    if (m, v, kind, HEADLINE_FAR) in tallies:
                        per_v[v] = {far: tallies[(m, v, kind, far)].asdict() for far in FAR_KEYS}
                if per_v or missing_ref.get((m, kind)):
                    kinds[kind] = {"missing_reference": missing_ref.get((m, kind), 0), "transforms": per_v}
            aa = {}
            for far in FAR_KEYS:
                if (m, far) in advadv:
                    t = advadv[(m, far)].asdict()
                    aa[far] = {"pairs": t["pairs"], "match_rate_clean": t["verify_rate_clean"],
                               "match_rate_protected": t["verify_rate_protected"], "asr": t["asr"]}
            robustness[m] = {v: self._mean_asr(tallies, m, v) for v in self.variants}
            models_out[m] = {
                "white_box": not info.native, "distance": info.distance,
                "thresholds": dict(info.thresholds),
                "faces_found_clean": sum(1 for st in self.state.values() if st["main"][m] is not None),
                "faces_found_protected": sum(1 for st in self.state.values() if st["prot"]["none"][m] is not None),
                "mean_asr": robustness[m]["none"],
                "pairs": kinds,
                "adv_adv": {"missing_reference": missing_ref.get((m, "adv_adv"), 0), **aa},
            }
        section = {
            "models": models_out,
            "transforms": self.variants,
            "robustness": {"metric": f"mean ASR over {'/'.join(ASR_KINDS)} pairs at {HEADLINE_FAR}",
                           "asr": robustness},
            "references": len(refs_used),
            "notes": list(dict.fromkeys(self.backends.notes)),
            "errors": self.errors,
        }
        return section, rows

    @staticmethod
    def _mean_asr(tallies, m: str, v: str) -> float | None:
        vals = []
        for kind in ASR_KINDS:
            t = tallies.get((m, v, kind, HEADLINE_FAR))
            if t is not None and t.pairs:
                vals.append((t.clean - t.prot) / t.pairs)
        return round(sum(vals) / len(vals), 4) if vals else None

    def _reference_pairs(self) -> Iterable[tuple[str, str, Path]]:
        """``(protected rel, kind, reference path)`` for the enrolled / impostor pairs."""
        ctx = self.ctx
        if ctx is None:
            return
        if ctx.pairs is not None:
            for rel, ref, same in ctx.pairs:
                if rel in self.state:
                    yield rel, ("enrolled" if same else "impostor"), ref
            return
        for rel, st in self.state.items():
            ident = st["item"].identity
            if ident is None:
                continue
            own = Path(st["item"].original).resolve()
            for ref in ctx.references.get(ident, []):
                if Path(ref).resolve() != own:
                    yield rel, "enrolled", Path(ref)
