"""Erasable protection: only the holder of a key can remove it.

ErasableMask (paper 002) trains a restorer network; here the exact residual ``original - protected``
is sealed with AES-256-GCM under the user's key and carried in the output file (or a sidecar), so
the protection is removed bit-exactly while the file is intact, and approximately (robust erasure)
from a re-encoded or resized copy with the sidecar.

Public API::

    generate_key(path, *, force=False) -> KeyInfo          # 0600 key file, never overwritten silently
    load_key(path) -> bytes
    seal(original, protected, key, *, meta=None) -> bytes
    open_payload(payload, protected_pixels, key, *, verify_pixels=True) -> np.ndarray  # residual
    embed(path, payload) / extract(path) -> bytes | None / write_sidecar(path, payload)
    make_erasable(input_pixels, output_path, key, *, sidecar=False) -> ErasableInfo
    erase_file(protected_path, out_path, key, *, sidecar_dir=None) -> EraseResult
    keygen_command(out, *, force=False) -> (report, exit_code)
    erase_command(protected, out, key_file, *, sidecar_dir=None, original=None, esr_fn=None)
        -> (report, exit_code)
"""

from .commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE, erase_command, keygen_command, psnr
from .embed import embed, extract, sidecar_path, write_sidecar
from .erase import EraseResult, ErasableInfo, erase_file, make_erasable
from .errors import (
    EmbedError,
    EraseError,
    ImageReadError,
    ImageWriteError,
    KeyFileError,
    PayloadFormatError,
    PayloadMismatchError,
    PayloadMissingError,
    WrongKeyError,
)
from .keys import KeyInfo, generate_key, key_fingerprint, load_key
from .payload import open_payload, seal, unseal
from .pixels import pixel_hash, read_pixels

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "EmbedError",
    "EraseError",
    "EraseResult",
    "ErasableInfo",
    "ImageReadError",
    "ImageWriteError",
    "KeyFileError",
    "KeyInfo",
    "PayloadFormatError",
    "PayloadMismatchError",
    "PayloadMissingError",
    "WrongKeyError",
    "embed",
    "erase_command",
    "erase_file",
    "extract",
    "generate_key",
    "key_fingerprint",
    "keygen_command",
    "load_key",
    "make_erasable",
    "open_payload",
    "pixel_hash",
    "psnr",
    "read_pixels",
    "seal",
    "sidecar_path",
    "unseal",
    "write_sidecar",
]
