"""Output rankings and the K-anonymity measures of paper 003 (Mygdalis, Tefas & Pitas,
"Introducing K-anonymity principles to adversarial attacks for privacy protection in image
classification problems").

The classifier's logits ``(B, C)`` sort the labels into a ranking ``r_x(1), ..., r_x(C)``
(``r_x(1)`` is the predicted label). The *rank* of the true label ``y`` is its 1-based position in
that ranking: ``1 + #{c : z_c > z_y}`` (ties count in the label's favour, so a tie never hides it).

Paper 003, Eq. 5: a set of adversarial examples is K-anonymous when the probability mass function
``p(i) = P(r(i) = y)`` of finding the true label at ranking position ``i`` is at most ``1/K`` for
every ``i``. The attack reaches this by splitting the N samples into K groups; group ``j``
(``j = 1..K``) gets the target rank ``k = j + 1`` and must push ``y`` below the first ``k - 1``
positions (``rank >= k``), so ranks 2..K+1 are each taken by about N/K samples.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "assign_target_ranks",
    "kanon_summary",
    "rank_pmf",
    "true_rank",
]


def true_rank(logits: Tensor, labels: Tensor) -> Tensor:
    """1-based rank ``(B,)`` (int64) of ``labels`` ``(B,)`` in ``logits`` ``(B, C)``.

    ``rank = 1 + #{c : logits[c] > logits[label]}``; 1 means correctly classified.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, C), got {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, device=logits.device).long().view(-1)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {logits.shape[0]} rows of logits")
    if bool(((labels < 0) | (labels >= logits.shape[1])).any()):
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}]")
    zy = logits.gather(1, labels[:, None])
    return 1 + (logits > zy).sum(1)


def rank_pmf(ranks: Sequence[int] | Tensor, k: int) -> dict[str, Any]:
    """Empirical pmf of the true-label rank (paper 003, Eq. 5).

    Args:
        ranks: 1-based ranks of the true label, one per sample (N >= 1).
        k: the anonymity level K >= 1.

    Returns:
        ``{"pmf": [P(r = 1), ..., P(r = K+1)], "tail": P(r > K+1), "max": max_i P(r = i)
        over *all* positions (beyond K+1 too), "argmax": that position, "n": N}``.
    """
    k = _check_k(k)
    r = torch.as_tensor(list(ranks) if not isinstance(ranks, Tensor) else ranks).long().view(-1)
    if r.numel() == 0:
        raise ValueError("rank_pmf needs at least one rank")
    if bool((r < 1).any()):
        raise ValueError("ranks are 1-based: every rank must be >= 1")
    n = r.numel()
    counts = torch.bincount(r, minlength=k + 2).double()
    pmf = [float(counts[i] / n) for i in range(1, k + 2)]
    top = int(counts.argmax())
    return {
        "pmf": pmf,
        "tail": float((r > k + 1).sum()) / n,
        "max": float(counts[top] / n),
        "argmax": top,
        "n": n,
    }


def assign_target_ranks(keys: Sequence[str], k: int, seed: int | None = 0) -> dict[str, int]:
    """Split the samples named by ``keys`` into K groups as evenly as possible (group sizes
    differ by at most one) and give group ``j`` the target rank ``j + 1`` (2..K+1).

    The split is a seeded permutation of the sorted keys, so it depends only on the set of keys
    and ``seed`` (not on the order the files are processed in, nor on a resumed run).
    """
    k = _check_k(k)
    uniq = sorted(set(keys))
    salt = "none" if seed is None else str(int(seed))
    order = sorted(uniq, key=lambda s: hashlib.sha256(f"{salt}\0{s}".encode()).hexdigest())
    return {name: 2 + (i % k) for i, name in enumerate(order)}


def kanon_summary(before: Sequence[int], after: Sequence[int], targets: Sequence[int], k: int,
                  *, tolerance: float = 0.02) -> dict[str, Any]:
    """The run summary of paper 003's evaluation.

    Args:
        before: clean rank of the true label per sample.
        after: rank on the protected image per sample.
        targets: target rank per sample (2..K+1), or empty when unknown (evaluation only).
        k: K >= 1.
        tolerance: slack on the ``1/K`` bound for the verdict (finite N cannot always split
            exactly; the issue's acceptance uses 0.02).

    Returns a JSON-able dict: ``asr`` (fraction with rank > 1, i.e. misclassified: Eq. 4),
    ``constraint_rate`` (fraction with rank >= its target), ``pmf`` over ranks 1..K+1, ``tail``,
    ``max_pmf``, ``bound`` (``1/K + tolerance``), ``k_anonymous`` (the verdict: every
    ``P(r = i) <= bound``), clean pmf and clean accuracy.
    """
    k = _check_k(k)
    tol = float(tolerance)
    if not 0 <= tol < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    after = [int(a) for a in after]
    n = len(after)
    if n == 0:
        return {"n": 0, "k": k, "asr": None, "pmf": None, "k_anonymous": None,
                "note": "no sample was evaluated"}
    p_after = rank_pmf(after, k)
    p_before = rank_pmf([int(b) for b in before], k) if len(before) else None
    out: dict[str, Any] = {
        "n": n,
        "k": k,
        "asr": sum(1 for a in after if a > 1) / n,
        "pmf": p_after["pmf"],
        "tail": p_after["tail"],
        "max_pmf": p_after["max"],
        "max_rank": p_after["argmax"],
        "uniform": 1.0 / k,
        "bound": 1.0 / k + tol,
        "tolerance": tol,
        "k_anonymous": p_after["max"] <= 1.0 / k + tol + 1e-12,
        "clean_pmf": None if p_before is None else p_before["pmf"],
        "clean_accuracy": None if p_before is None else p_before["pmf"][0],
    }
    if len(targets):
        t = [int(v) for v in targets]
        if len(t) != n:
            raise ValueError(f"{len(t)} targets for {n} samples")
        out["constraint_rate"] = sum(1 for a, g in zip(after, t) if a >= g) / n
        out["exact_rate"] = sum(1 for a, g in zip(after, t) if a == g) / n
    out["best_possible_max_pmf"] = math.ceil(n / k) / n  # K groups of N/K at best
    return out


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"K must be an integer >= 1, got {k!r}")
    return int(k)
