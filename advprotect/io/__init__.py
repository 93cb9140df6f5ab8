"""Safe, streaming image I/O shared by the subcommands.

Reading::

    from advprotect.io import read_image, write_image, ImageReadError
    rec = read_image("photo.jpg")            # ImageRecord; rec.pixels is (3,H,W) float32 in [0,1]
    write_image("out/photo.jpg", rec.pixels.clamp(0, 1), rec)   # atomic, like the original

Running a subcommand over a file / folder / list file::

    from advprotect.io import run_pipeline, OutputOptions, ProcessResult

    def process(records):                    # a batch of decoded ImageRecord
        return [ProcessResult(pixels=protect(r.pixels), info={"psnr": 41.2}) for r in records]

    report = run_pipeline(src, out, process, settings={"eps": 8 / 255}, batch_size=8,
                          options=OutputOptions(fmt=None, quality=95))
    raise SystemExit(report.exit_code)        # 0 all done, 1 some failed (UsageError -> 2)

Guarantees: inputs are never modified; outputs mirror the input tree under OUT and are written
atomically; bad files (empty, truncated, not an image, too many pixels, unreadable, ...) fail one by
one with a clear ``file: reason`` line on stderr and in the report; EXIF (GPS included) is stripped
unless ``keep_metadata``; reruns skip files already done (``OUT/.advprotect-manifest.jsonl``).
"""

from .discover import InputItem, InputSpec, UsageError, check_output_location, classify_input, discover
from .formats import (
    IMAGE_EXTENSIONS,
    READ_FORMATS,
    WRITE_FORMATS,
    format_from_extension,
    normalize_format,
    output_path,
    output_relpath,
)
from .manifest import MANIFEST_NAME, Manifest
from .pipeline import (
    REPORT_NAME,
    FileEntry,
    OutputOptions,
    ProcessResult,
    RunReport,
    run_pipeline,
    settings_hash,
)
from .reader import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    ImageRecord,
    apply_orientation,
    decode_image,
    read_bytes,
    read_image,
    sha256_file,
)
from .writer import (
    TMP_MARKER,
    ImageWriteError,
    atomic_write_bytes,
    clean_exif,
    encode_image,
    write_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FileEntry",
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "ImageRecord",
    "ImageWriteError",
    "InputItem",
    "InputSpec",
    "MANIFEST_NAME",
    "Manifest",
    "OutputOptions",
    "ProcessResult",
    "READ_FORMATS",
    "REPORT_NAME",
    "RunReport",
    "TMP_MARKER",
    "UsageError",
    "WRITE_FORMATS",
    "apply_orientation",
    "atomic_write_bytes",
    "check_output_location",
    "classify_input",
    "clean_exif",
    "decode_image",
    "discover",
    "encode_image",
    "format_from_extension",
    "normalize_format",
    "output_path",
    "output_relpath",
    "read_bytes",
    "read_image",
    "run_pipeline",
    "settings_hash",
    "sha256_file",
    "write_image",
]
