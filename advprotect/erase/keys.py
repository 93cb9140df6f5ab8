"""Erase keys: 256 random bits in a small text file that only its owner can read.

File format (UTF-8 text, lines starting with ``#`` and blank lines are ignored)::

    # advprotect erase key. Keep this file secret: whoever holds it can remove the protection.
    advprotect-erase-key-v1
    <64 lower-case hex digits = 32 random bytes>

The file is created with mode 0600 from its first byte on (``os.open`` with ``O_CREAT | O_EXCL``
and mode ``0o600``), so there is no moment at which another user could open it. It is written under
a temporary name and then linked (or, with ``force``, renamed) onto its final name, so a crash never
leaves a half-written key behind.

Nothing in this module prints, logs or puts the key into an exception message.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from ..io.writer import fsync_dir
from .errors import KeyFileError

KEY_HEADER = "advprotect-erase-key-v1"
KEY_BYTES = 32
_MAX_KEY_FILE = 4096
_COMMENT = (
    "# advprotect erase key (AES-256). Keep this file secret: whoever holds it can remove the\n"
    "# protection of every image protected with it. Losing it makes the protection permanent.\n"
)


@dataclass(frozen=True)
class KeyInfo:
    """What ``generate_key`` reports. ``fingerprint`` is a one-way, non-secret identifier that helps
    a person tell key files apart; it is never stored in payloads (that would link images)."""

    path: Path
    fingerprint: str


def key_fingerprint(key: bytes) -> str:
    """Short non-secret identifier of a key (16 hex digits of a domain-separated SHA-256)."""
    return hashlib.sha256(b"advprotect erase key fingerprint\x00" + key).hexdigest()[:16]


def _format_key(key: bytes) -> bytes:
    return (_COMMENT + KEY_HEADER + "\n" + key.hex() + "\n").encode("ascii")


def generate_key(path: str | os.PathLike, *, force: bool = False) -> KeyInfo:
    """Write a new random 256-bit key to ``path`` (mode 0600) and return its path and fingerprint.

    Refuses to overwrite an existing file unless ``force``. Missing parent folders are created
    (mode 0700). The key itself is not returned: load it with :func:`load_key`.
    """
    path = Path(path)
    if path.is_dir():
        raise KeyFileError(f"{path} is a folder; give the path of the key file to create")
    if path.exists() and not force:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key (use --force to replace it)")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise KeyFileError(f"cannot create folder {parent}: {exc.strerror or exc}") from None

    key = secrets.token_bytes(KEY_BYTES)
    data = _format_key(key)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    tmp = None
    for _ in range(100):
        candidate = parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(candidate, flags, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise KeyFileError(f"cannot create {path}: {exc.strerror or exc}") from None
        tmp = candidate
        break
    if tmp is None:  # pragma: no cover - 100 random name collisions
        raise KeyFileError(f"cannot create a temporary file next to {path}")
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # exactly 0600, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, fails if path exists (no race with a concurrent keygen)
            except FileExistsError:
                raise KeyFileError(
                    f"{path} already exists; refusing to overwrite a key (use --force to replace it)"
                ) from None
            except OSError:
                # File systems without hard links: exclusive create of the final name instead.
                try:
                    fd2 = os.open(path, flags, 0o600)
                except FileExistsError:
                    raise KeyFileError(
                        f"{path} already exists; refusing to overwrite a key (use --force to replace it)"
                    ) from None
                try:
                    if hasattr(os, "fchmod"):
                        os.fchmod(fd2, 0o600)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd2, view):]
                    os.fsync(fd2)
                finally:
                    os.close(fd2)
            os.unlink(tmp)
        tmp = None
        fsync_dir(parent)
    except KeyFileError:
        raise
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return KeyInfo(path=path, fingerprint=key_fingerprint(key))


def check_key_permissions(path: str | os.PathLike) -> None:
    """Raise :class:`KeyFileError` if other users may read or write the key file (POSIX only)."""
    if os.name != "posix":
        return
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"key file {path} is accessible by other users (mode {mode:04o}); "
            f"restrict it with: chmod 600 {path}"
        )


def load_key(path: str | os.PathLike, *, check_permissions: bool = True) -> bytes:
    """Read a key file written by :func:`generate_key` and return the 32 key bytes.

    Raises :class:`KeyFileError` (with a message that never quotes the file's content) when the file
    is missing, not a regular file, larger than a key file can be, malformed, or, with
    ``check_permissions`` (the default), group- or world-accessible.
    """
    path = Path(path)
    if not path.exists():
        raise KeyFileError(f"key file {path} does not exist (create one with: advprotect keygen -o {path})")
    if not path.is_file():
        raise KeyFileError(f"key file {path} is not a regular file")
    if check_permissions:
        check_key_permissions(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_KEY_FILE:
        raise KeyFileError(f"{path} is not an advprotect key file (too large)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not an advprotect key file (not text)") from None
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines or lines[0] != KEY_HEADER:
        raise KeyFileError(f"{path} is not an advprotect key file (first line must be {KEY_HEADER!r})")
    if len(lines) != 2:
        raise KeyFileError(f"{path} is malformed: expected one key line after {KEY_HEADER!r}")
    body = lines[1]
    if len(body) != 2 * KEY_BYTES or any(c not in "0123456789abcdefABCDEF" for c in body):
        raise KeyFileError(f"{path} is malformed: the key line must be {2 * KEY_BYTES} hex digits")
    return bytes.fromhex(body)
