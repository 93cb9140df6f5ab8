"""File-format facts shared by the reader, the writer and discovery."""

from __future__ import annotations

from pathlib import Path, PurePath

#: Image file extensions (lower case) that discovery picks up, mapped to the format they claim.
EXTENSION_FORMATS: dict[str, str] = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".dib": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".gif": "GIF",
}
IMAGE_EXTENSIONS = frozenset(EXTENSION_FORMATS)

#: Extensions of list files (one input path per line).
LIST_EXTENSIONS = frozenset({".txt", ".lst"})

#: Pillow decoders we allow at all (a smaller attack surface than Pillow's whole plugin set).
#: (Pillow's JPEG opener also yields MPO, the multi-picture JPEG many phones write; it is read and
#: written as JPEG.)
READ_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

#: Formats we can write; GIF is read-only (a 256-colour palette would wipe out a perturbation).
WRITE_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")

#: The extension given to a file whose format changes.
CANONICAL_EXTENSION = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}

#: Output format used when the input's own format cannot be written.
FALLBACK_WRITE_FORMAT = {"GIF": "PNG", "MPO": "JPEG"}

_FMT_ALIASES = {
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "tif": "TIFF",
    "tiff": "TIFF",
    "bmp": "BMP",
}


def normalize_format(fmt: str | None) -> str | None:
    """``"jpg"``/``"jpeg"``/``"JPEG"`` -> ``"JPEG"`` etc.; None stays None; anything else is a ValueError."""
    if fmt is None or fmt == "":
        return None
    key = str(fmt).strip().lower().lstrip(".")
    if key in _FMT_ALIASES:
        return _FMT_ALIASES[key]
    raise ValueError(f"unknown output format {fmt!r}: use one of png, jpeg, webp, tiff, bmp")


def format_from_extension(path: str | PurePath) -> str | None:
    """Format an extension claims (``photo.JPG`` -> ``"JPEG"``), or None for an unknown extension."""
    return EXTENSION_FORMATS.get(PurePath(path).suffix.lower())


def is_image_name(path: str | PurePath) -> bool:
    return PurePath(path).suffix.lower() in IMAGE_EXTENSIONS


def output_format(rel: str | PurePath, fmt: str | None = None) -> str:
    """Format an input at ``rel`` is written in: ``fmt`` if given, else the input's own (GIF -> PNG)."""
    fmt = normalize_format(fmt)
    if fmt is not None:
        return fmt
    own = format_from_extension(rel) or "PNG"
    return FALLBACK_WRITE_FORMAT.get(own, own)


def output_relpath(rel: str | PurePath, fmt: str | None = None) -> PurePath:
    """Relative output path for relative input path ``rel``: same name, extension changed only if the
    format changes (``a/b.jpeg`` stays ``a/b.jpeg`` for JPEG output, becomes ``a/b.png`` for PNG)."""
    rel = PurePath(rel)
    target = output_format(rel, fmt)
    if format_from_extension(rel) == target:
        return rel
    return rel.with_suffix(CANONICAL_EXTENSION[target])


def output_path(out_dir: Path, rel: str | PurePath, fmt: str | None = None) -> Path:
    return Path(out_dir) / output_relpath(rel, fmt)
