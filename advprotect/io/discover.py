"""Turning the user's input (a file, a folder or a list file) into an ordered list of work items."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

from .formats import LIST_EXTENSIONS, is_image_name


class UsageError(ValueError):
    """The command was asked for something impossible (missing input, OUT inside the input tree...).
    The CLI turns it into exit code 2."""


def read_text_file(path: str | Path, what: str, error: type[Exception] = ValueError) -> tuple[Path, str]:
    """``(path, text)`` of a small UTF-8 text file the user named (a labels or pairs CSV; a BOM
    is dropped). A missing or unreadable file raises ``error`` naming ``what`` (e.g.
    ``"--labels file"``) and the path."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise error(f"{what} not found: {p}")
    try:
        return p, p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{what} unreadable: {p}: {exc}") from None


@dataclass(frozen=True)
class InputItem:
    """One file to process. ``rel`` is where it goes under OUT (a relative POSIX path).
    ``error`` is set for entries that are known to be bad before reading (a missing file in a list,
    an unlistable folder): they are reported as failed, the rest goes on."""

    path: Path
    rel: PurePosixPath
    error: str | None = None


@dataclass(frozen=True)
class InputSpec:
    """What kind of input was given and its root folder (the folder mirrored under OUT)."""

    kind: str  # "file" | "folder" | "list"
    path: Path
    root: Path


def classify_input(inp: str | os.PathLike) -> InputSpec:
    """Raise :class:`UsageError` for an input that does not exist; otherwise say what it is."""
    p = Path(inp).expanduser()
    if not p.exists():
        raise UsageError(f"input not found: {p}")
    if p.is_dir():
        return InputSpec("folder", p, p)
    if p.suffix.lower() in LIST_EXTENSIONS:
        return InputSpec("list", p, p.parent)
    return InputSpec("file", p, p.parent)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def discover(inputs: str | os.PathLike) -> list[InputItem]:
    """Files to process, in a deterministic order.

    - a folder: every file with an image extension (jpg jpeg jpe jfif png webp bmp dib tif tiff gif,
      any case) under it, recursively, sorted by relative path; hidden files and folders (``.name``)
      are skipped, other extensions are ignored; symlinked folders are not followed;
    - a list file (``.txt``/``.lst``): one path per line, relative to the list file's folder
      (absolute paths allowed); blank lines and ``#`` comments are ignored; a listed folder is
      expanded like a folder input; a missing entry becomes an item with ``error`` set;
    - any other file: that single file (whatever its extension; reading it tells whether it is an
      image).

    A file with an image extension that is not actually an image is *included*: reading it fails
    and it is reported.
    """
    spec = classify_input(inputs)
    if spec.kind == "folder":
        return _walk(spec.path, PurePosixPath())
    if spec.kind == "file":
        return [InputItem(spec.path, PurePosixPath(spec.path.name))]
    return _read_list(spec.path)


def _walk(folder: Path, prefix: PurePosixPath) -> list[InputItem]:
    items: list[InputItem] = []

    def onerror(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else folder
        try:
            rel = prefix / PurePosixPath(where.relative_to(folder).as_posix())
        except ValueError:
            rel = prefix / where.name
        reason = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        items.append(InputItem(where, rel, f"cannot list this folder: {reason}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        base = Path(dirpath)
        rel_dir = PurePosixPath(base.relative_to(folder).as_posix()) if base != folder else PurePosixPath()
        for name in filenames:
            if _hidden(name) or not is_image_name(name):
                continue
            items.append(InputItem(base / name, prefix / rel_dir / name))
    items.sort(key=lambda it: it.rel.parts)
    return items


def _read_list(list_file: Path) -> list[InputItem]:
    root = list_file.parent
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"list file {list_file} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read list file {list_file}: {exc.strerror or exc}") from None
    items: list[InputItem] = []
    seen: set[PurePosixPath] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        p = p if p.is_absolute() else root / p
        rel = _list_rel(root, p, seen)
        if p.is_dir():
            items.extend(_walk(p, rel))
        elif not p.exists():
            items.append(InputItem(p, rel, f"file not found (listed in {list_file.name} line {lineno})"))
        else:
            items.append(InputItem(p, rel))
        seen.add(rel)
    return items


def _list_rel(root: Path, p: Path, seen: set[PurePosixPath]) -> PurePosixPath:
    """Where a listed path goes under OUT: its path below the list's folder, or for paths elsewhere
    ``_external/<name>`` (made unique)."""
    try:
        rel = os.path.relpath(os.path.abspath(p), os.path.abspath(root))
    except ValueError:  # other drive on Windows
        rel = ".."
    rel_p = PurePosixPath(PurePath(rel).as_posix())
    if rel_p.parts and rel_p.parts[0] != ".." and rel_p != PurePosixPath("."):
        return rel_p
    name = p.name or "input"
    cand = PurePosixPath("_external") / name
    n = 1
    while cand in seen:
        stem, suf = os.path.splitext(name)
        cand = PurePosixPath("_external") / f"{stem}-{n}{suf}"
        n += 1
    return cand


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def check_output_location(inputs: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Refuse output folders that could overwrite or feed back into the input.

    Raises :class:`UsageError` when OUT is the input folder or inside it, when the input (folder,
    file or list file) is inside OUT, or when OUT is the folder holding a single input file / list
    file (outputs would replace the inputs).
    """
    spec = classify_input(inputs)
    out = Path(os.path.realpath(Path(out_dir).expanduser()))
    src = Path(os.path.realpath(spec.path))
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a folder")
    if spec.kind == "folder":
        if out == src:
            raise UsageError(
                f"output folder {out_dir} is the input folder; choose a folder outside {inputs} "
                "(inputs are never modified)"
            )
        if _is_within(out, src):
            raise UsageError(
                f"output folder {out_dir} is inside the input folder {inputs}; choose a folder "
                "outside the input tree (outputs would be picked up as inputs on the next run)"
            )
        if _is_within(src, out):
            raise UsageError(f"input folder {inputs} is inside the output folder {out_dir}; choose another output")
    else:
        root = Path(os.path.realpath(spec.root))
        if out == root:
            raise UsageError(
                f"output folder {out_dir} is the folder that holds the input {inputs}: outputs "
                "would replace the originals; choose another folder"
            )
        if _is_within(src, out):
            raise UsageError(f"input {inputs} is inside the output folder {out_dir}; choose another output")
