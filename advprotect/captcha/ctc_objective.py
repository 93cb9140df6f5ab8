"""Multi-target objective for CTC solvers (the ``crnn`` and ``fcn`` surrogates).

Robust CAPTCHAs (paper 000, section 3.1.3) attack *sequential* recognition with a
*multi-target* loss: it is not enough that the solver gets one character wrong somewhere, every
character position should be misread, so that a different solver, reading most characters
right, still fails. For a CTC reader with per-frame log-probabilities ``log p(c | t)``
``(B, T, C)`` and the true answer ``y`` (length ``L``) the objective, maximised, is::

    J(x) = min(CTC(y | x) / L, cap)  -  (1 / L) * sum_k max(m_k(x), -kappa)
    m_k  = max_{|t - t_k| <= 2} [ z(t, y_k) - max_{c != y_k} z(t, c) ]

* ``CTC(y | x)`` is the CTC negative log-likelihood of the true answer (Graves et al. 2006),
  summed over every alignment: raising it makes the true string improbable as a whole; it is
  capped at ``cap`` nats per character so that, as with the margins, a CAPTCHA already far from
  its answer stops pulling the ensemble's gradient and the others (models, positions) get it;
* ``m_k`` is the logit margin of the ``k``-th true character around its frame ``t_k`` in the
  CTC Viterbi alignment of the *clean* image (a per-position loss): every margin is driven below
  ``-kappa``, i.e. every position is read as another character or as blank (deleted).

Shapes: ``x`` ``(B, 3, H, W)`` in [0, 1] -> ``(B,)``. The model must return CTC logits
``(B, T, C)`` with class 0 = blank (see :mod:`advprotect.captcha.models`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attacks.base import check_range
from .models import encode

__all__ = ["CTCObjective", "ctc_viterbi_frames"]


def ctc_viterbi_frames(log_probs: np.ndarray, labels: Sequence[int]) -> list[int]:
    """Most probable CTC alignment of ``labels`` (no blanks, 1-based) to ``log_probs`` ``(T, C)``:
    for each label, the frame where its path segment is most confident. ``len(labels) <= T``."""
    t_len = log_probs.shape[0]
    ext = [0]
    for c in labels:
        ext += [c, 0]
    s_len = len(ext)
    neg = -1e30
    score = np.full((t_len, s_len), neg)
    back = np.zeros((t_len, s_len), dtype=np.int64)
    score[0, 0] = log_probs[0, ext[0]]
    if s_len > 1:
        score[0, 1] = log_probs[0, ext[1]]
    for t in range(1, t_len):
        for s in range(s_len):
            cands = [(score[t - 1, s], s)]
            if s >= 1:
                cands.append((score[t - 1, s - 1], s - 1))
            if s >= 2 and ext[s] != 0 and ext[s] != ext[s - 2]:
                cands.append((score[t - 1, s - 2], s - 2))
            best, arg = max(cands)
            score[t, s] = best + log_probs[t, ext[s]]
            back[t, s] = arg
    s = s_len - 1 if s_len == 1 or score[-1, s_len - 1] >= score[-1, s_len - 2] else s_len - 2
    path = [0] * t_len
    for t in range(t_len - 1, -1, -1):
        path[t] = s
        s = back[t, s]
    frames = []
    for k in range(len(labels)):
        s_k = 2 * k + 1
        ts = [t for t in range(t_len) if path[t] == s_k]
        frames.append(max(ts, key=lambda t: log_probs[t, ext[s_k]]) if ts else min(t_len - 1, k))
    return frames


class CTCObjective:
    """``J(x)`` above for one CTC model; call ``objective(x_adv) -> (B,)``.

    Args:
        model: CTC reader in eval mode, ``x -> (B, T, C)`` logits.
        clean: the clean images ``(B, 3, H, W)`` in [0, 1] (for the per-position alignment).
        texts: the ``B`` true answers.
        kappa: margin ``> 0`` each position is pushed below (default 5).
        position_weight: weight ``>= 0`` of the per-position term (default 1; 0 = CTC only).
        cap: per-character cap ``> 0`` of the CTC term (default 5 nats).
    """

    def __init__(self, model: nn.Module, clean: Tensor, texts: Sequence[str], *, kappa: float = 5.0,
                 position_weight: float = 1.0, cap: float = 5.0) -> None:
        if len(texts) != clean.shape[0]:
            raise ValueError(f"got {len(texts)} answers for {clean.shape[0]} images")
        self.model = model
        self.kappa = check_range("kappa", kappa, 0.0, lo_open=True)
        self.position_weight = check_range("position_weight", position_weight, 0.0)
        self.cap = check_range("cap", cap, 0.0, lo_open=True)
        codes = [encode(t) for t in texts]
        if any(not c for c in codes):
            raise ValueError("every answer must have at least one character")
        dev = clean.device
        with torch.no_grad():
            lp = model(clean).float().log_softmax(-1)
        t_len = lp.shape[1]
        if max(len(c) for c in codes) * 2 + 1 > t_len * 2:
            raise ValueError(f"answers longer than the model's {t_len} frames")
        self.targets = torch.tensor([c for cs in codes for c in cs], dtype=torch.long, device=dev)
        self.lengths = torch.tensor([len(c) for c in codes], dtype=torch.long, device=dev)
        lmax = int(self.lengths.max())
        frames = torch.zeros(len(codes), lmax, dtype=torch.long)
        labels = torch.zeros(len(codes), lmax, dtype=torch.long)
        valid = torch.zeros(len(codes), lmax, dtype=torch.bool)
        lp_np = lp.cpu().numpy()
        for i, cs in enumerate(codes):
            fr = ctc_viterbi_frames(lp_np[i], cs)
            frames[i, : len(cs)] = torch.tensor(fr)
            labels[i, : len(cs)] = torch.tensor(cs)
            valid[i, : len(cs)] = True
        self.frames, self.labels, self.valid = frames.to(dev), labels.to(dev), valid.to(dev)
        self.t_len = t_len

    def margins(self, logits: Tensor) -> Tensor:
        """Per-position margins ``m_k`` ``(B, Lmax)`` (padding positions: ``-inf``)."""
        b, t_len, c = logits.shape
        idx = torch.stack([(self.frames + d).clamp(0, t_len - 1) for d in (-2, -1, 0, 1, 2)], dim=2)
        z = torch.gather(logits, 1, idx.flatten(1).unsqueeze(-1).expand(-1, -1, c)).view(b, -1, 5, c)
        true = torch.gather(z, 3, self.labels[:, :, None, None].expand(-1, -1, 5, 1)).squeeze(-1)
        other = z.scatter(3, self.labels[:, :, None, None].expand(-1, -1, 5, 1), float("-inf")).amax(-1)
        m = (true - other).amax(dim=2)
        return m.masked_fill(~self.valid, float("-inf"))

    def __call__(self, x: Tensor) -> Tensor:
        logits = self.model(x).float()
        lp = logits.log_softmax(-1)
        t = torch.full((x.shape[0],), lp.shape[1], dtype=torch.long, device=x.device)
        ctc = F.ctc_loss(lp.transpose(0, 1), self.targets, t, self.lengths, blank=0, reduction="none",
                         zero_infinity=True)
        n = self.lengths.to(lp.dtype)
        loss = (ctc / n).clamp_max(self.cap)
        if self.position_weight > 0:
            m = self.margins(logits).clamp_min(-self.kappa).masked_fill(~self.valid, 0.0)
            loss = loss - self.position_weight * m.sum(1) / n
        return loss
