"""``advprotect evaluate --kind kanon``: the K-anonymity rank distribution of protected photos
(paper 003, Eq. 4-5), measured afresh on the files.

Options (``--set key=value``; ``--labels CSV`` for the ground truth):

* ``k`` (required): the anonymity level K >= 1;
* ``classifier``: ``imagenet`` (default), ``faces`` or a TorchScript path; ``gallery`` (faces),
  ``face_model``, ``input_size``, ``mean``, ``std`` (TorchScript) as for ``k-anon``;
* ``tolerance``: slack on ``1/K`` for the verdict (default 0.02);
* ``--labels``: CSV ``rel,label`` (rel relative to ``--original``); default: the clean top-1.

Per pair: the rank of the true label on the clean and on the protected photo (the classifier runs
on each file from scratch: faces are detected again). Section: ``asr`` (protected rank > 1),
``pmf`` of the protected rank over 1..K+1, ``max_pmf``, ``k_anonymous`` (verdict), the clean pmf,
and ``models: {classifier: {mean_asr}}`` so ``--fail-under X --fail-model <classifier>`` works.
"""

from __future__ import annotations

from typing import Any

import torch

from ..evaluate.command import EvalContext, PairItem, register_evaluator
from .ranking import kanon_summary, true_rank

__all__ = ["KAnonEvaluator"]


class KAnonEvaluator:
    kind = "kanon"

    def __init__(self, options: dict[str, Any]) -> None:
        raw_k = options.get("k")
        if raw_k is None:
            raise ValueError("evaluate --kind kanon needs --set k=K (the anonymity level)")
        try:
            self.k = int(str(raw_k))
        except ValueError:
            raise ValueError(f"--set k must be an integer >= 1, got {raw_k!r}") from None
        if self.k < 1:
            raise ValueError(f"--set k must be an integer >= 1, got {raw_k!r}")
        try:
            self.tolerance = float(options.get("tolerance", 0.02))
        except ValueError:
            raise ValueError(f"--set tolerance must be a number, got {options.get('tolerance')!r}") from None
        self.spec = str(options.get("classifier") or "imagenet")
        self.options = options
        self.labels_path = options.get("labels")
        self.rows: dict[str, dict[str, Any]] = {}
        self.before: list[int] = []
        self.after: list[int] = []
        self.no_face = 0
        self.errors: list[dict[str, str]] = []
        self.clf = None
        self.truth: dict[str, int] | None = None

    def begin(self, ctx: EvalContext) -> None:
        from .classifiers import load_classifier
        from .command import _floats
        from .labels import read_labels

        o = self.options
        size = o.get("input_size")
        self.clf = load_classifier(
            self.spec, o.get("device", "cpu"), gallery=o.get("gallery"),
            input_size=int(size) if size is not None else None,
            mean=_floats(o.get("mean"), "mean"), std=_floats(o.get("std"), "std"),
            face_model=str(o.get("face_model") or "facenet128"))
        if self.k + 1 > self.clf.num_classes:
            raise ValueError(f"k = {self.k} needs at least {self.k + 1} classes; {self.clf.name} has {self.clf.num_classes}")
        if self.labels_path:
            self.truth = {rel: self.clf.label_index(v) for rel, v in read_labels(self.labels_path).items()}

    @torch.no_grad()
    def add(self, item: PairItem, clean: torch.Tensor, protected: torch.Tensor, scratch: dict) -> None:
        rel = str(item.rel)
        row: dict[str, Any] = {}
        self.rows[rel] = row
        zc = self.clf.classify(clean)
        zp = self.clf.classify(protected)
        if zc is None:
            self.no_face += 1
            scratch.setdefault("warnings", []).append("kanon: the classifier finds no face in the original")
            return
        if self.truth is not None:
            if rel not in self.truth:
                scratch.setdefault("warnings", []).append(f"kanon: no label for {rel} in --labels")
                return
            y = self.truth[rel]
        else:
            y = int(zc.argmax())
        yt = torch.tensor([y])
        rc = int(true_rank(zc[None].cpu(), yt)[0])
        row.update(kanon_label=self.clf.label_name(y), kanon_rank_clean=rc)
        if zp is None:
            # no face found in the protected photo: the identity is not recoverable at any rank
            rp = self.clf.num_classes + 1
            row["kanon_note"] = "no face found in the protected photo"
        else:
            rp = int(true_rank(zp[None].cpu(), yt)[0])
        row["kanon_rank_protected"] = rp
        self.before.append(rc)
        self.after.append(rp)

    def finish(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        s = kanon_summary(self.before, self.after, [], self.k, tolerance=self.tolerance)
        s.update(classifier=self.spec, classifier_name=None if self.clf is None else self.clf.name,
                 no_face=self.no_face, label_source="labels" if self.truth is not None else "clean top-1",
                 models={self.spec: {"mean_asr": s.get("asr"), "max_pmf": s.get("max_pmf"),
                                     "k_anonymous": s.get("k_anonymous")}})
        if self.errors:
            s["errors"] = self.errors
        return s, self.rows


register_evaluator("kanon", KAnonEvaluator)
