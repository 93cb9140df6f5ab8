"""Errors of the erase subsystem.

Every message is meant for the person running the command: it says what went wrong and what to do.
No message ever contains key material (neither the key bytes nor the key file's content).
"""

from __future__ import annotations


class EraseError(Exception):
    """Base class: anything that stops a protection from being made erasable or erased."""


class KeyFileError(EraseError):
    """The key file is missing, malformed, readable by other users, or would be overwritten."""


class PayloadMissingError(EraseError):
    """The protected file carries no erase payload and no sidecar was found for it."""


class PayloadFormatError(EraseError):
    """The bytes are not an erase payload, are truncated, or use an unknown format version."""


class WrongKeyError(EraseError):
    """AES-GCM authentication failed: the key is not the one that sealed the payload, or the payload
    (or the header it is bound to) was modified. The two cannot be told apart."""


class PayloadMismatchError(EraseError):
    """The payload was sealed for other pixels: it was moved from another image, or the image was
    edited or re-encoded after it was protected."""


class EmbedError(EraseError):
    """The payload could not be embedded into the output file without changing its pixels."""


class ImageReadError(EraseError):
    """The image file could not be decoded."""


class ImageWriteError(EraseError):
    """The restored image could not be written in the requested format."""
