"""The streaming runner the subcommands share: discover -> decode (background thread, bounded
prefetch) -> ``process`` a batch -> write atomically (background thread) -> manifest + report."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.text import Text

from .discover import InputItem, UsageError, _is_within, check_output_location, discover
from .formats import normalize_format, output_relpath
from .manifest import Manifest, OutputLock, dumps
from .reader import DEFAULT_MAX_PIXELS, ImageReadError, ImageRecord, decode_image, read_bytes, sha256_bytes
from ..runtime import configure_allocator, release_free_memory
from .writer import atomic_write_bytes, clean_temp_files, write_image

#: bump when the output encoding changes in a way that should invalidate resumed outputs
IO_SCHEMA_VERSION = 1

REPORT_NAME = ".advprotect-report.json"


@dataclass
class OutputOptions:
    """How outputs are written and how a rerun treats earlier ones.

    - ``fmt``: None = same format as each input (GIF -> PNG); else png/jpeg/webp/tiff/bmp;
    - ``quality``: JPEG/WebP quality 1-100 (JPEG is 4:4:4; WebP 100 = lossless);
    - ``keep_metadata``: keep EXIF (GPS included; orientation reset to 1). Default strips it;
    - ``max_pixels``: refuse images with more pixels (from the header, before decoding);
    - ``resume``: skip files already done with the same input bytes and settings;
    - ``overwrite``: replace output files this tool did not write (default: such a file fails).
    """

    fmt: str | None = None
    quality: int = 95
    keep_metadata: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    resume: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        try:
            self.fmt = normalize_format(self.fmt)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise UsageError(f"quality must be an integer from 1 to 100, got {self.quality!r}")
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise UsageError(f"max_pixels must be positive, got {self.max_pixels}")

    def output_settings(self) -> dict:
        """The options that change output bytes (part of the settings hash)."""
        return {"fmt": self.fmt, "quality": self.quality, "keep_metadata": bool(self.keep_metadata)}


@dataclass
class ProcessResult:
    """What ``process`` returns for one record.

    - ``pixels``: new (3,H,W) float image in [0,1] (tensor or array, any device) to write;
    - ``info``: per-file facts for the report (JSON-able; tensors/numpy scalars are converted);
    - ``warnings``: per-file warnings (the file still counts as done, status "warned");
    - ``error``: set to fail this file (nothing written);
    - ``skip_write``: the file is done but nothing is written (e.g. analysis-only commands).
    """

    pixels: Any = None
    info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    skip_write: bool = False

    @classmethod
    def failed(cls, error: str, **info) -> "ProcessResult":
        return cls(error=error, info=dict(info))


@dataclass
class FileEntry:
    """Outcome for one input file. ``status``: done | warned (done, with warnings) | skipped
    (already done by an earlier run) | failed. ``messages`` are one-line reasons/warnings."""

    rel: str
    source: str
    status: str
    output: str | None = None
    messages: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        """``"file: message"`` lines for stderr/logs."""
        if self.status == "failed":
            return [f"{self.source}: {self.messages[0] if self.messages else 'failed'}"] + [
                f"{self.source}: warning: {m}" for m in self.messages[1:]
            ]
        return [f"{self.source}: warning: {m}" for m in self.messages]


STATUSES = ("done", "warned", "skipped", "failed")


@dataclass
class RunReport:
    input: str
    out_dir: str
    settings: dict
    settings_hash: str
    entries: list[FileEntry] = field(default_factory=list)
    started_at: str = ""
    finished_at: str = ""
    seconds: float = 0.0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        c = {s: 0 for s in STATUSES}
        for e in self.entries:
            c[e.status] = c.get(e.status, 0) + 1
        c["total"] = len(self.entries)
        return c

    @property
    def failed(self) -> list[FileEntry]:
        return [e for e in self.entries if e.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0: every file done (or already done); 1: some file failed or the run was interrupted."""
        return 1 if (self.interrupted or any(e.status == "failed" for e in self.entries)) else 0

    def summary(self) -> str:
        c = self.counts
        parts = [f"{c['done'] + c['warned']} written" if c["done"] + c["warned"] else "0 written"]
        if c["warned"]:
            parts.append(f"{c['warned']} with warnings")
        if c["skipped"]:
            parts.append(f"{c['skipped']} already done")
        if c["failed"]:
            parts.append(f"{c['failed']} failed")
        return f"{c['total']} files: " + ", ".join(parts) + f" in {self.seconds:.1f}s"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counts"] = self.counts
        d["exit_code"] = self.exit_code
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_bytes(path, (self.to_json() + "\n").encode("utf-8"))


def settings_hash(settings: dict, options: OutputOptions | None = None) -> str:
    """Stable hash of the processing settings plus the output options that change output bytes."""
    options = options or OutputOptions()
    payload = {"io_schema": IO_SCHEMA_VERSION, "settings": settings, "output": options.output_settings()}
    text = dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------- the runner

ProcessFn = Callable[[list[ImageRecord]], Sequence[ProcessResult]]

_STOP = object()


def run_pipeline(
    input: str | os.PathLike,
    out_dir: str | os.PathLike,
    process: ProcessFn,
    *,
    settings: dict,
    batch_size: int = 8,
    options: OutputOptions | None = None,
    progress: bool = True,
    quiet: bool = False,
    on_event: Callable[[FileEntry], None] | None = None,
    prefetch: int = 2,
    console: Console | None = None,
    report_path: str | os.PathLike | None = None,
    description: str = "processing",
    after_write: Callable[[ImageRecord, Path], list[str] | None] | None = None,
) -> RunReport:
    """Run ``process`` over every image of ``input`` (file, folder or list file), writing results
    under ``out_dir`` (mirroring the input tree). See the module docs for the guarantees.

    ``process(records)`` gets up to ``batch_size`` decoded :class:`ImageRecord` and returns one
    :class:`ProcessResult` per record, in order. If it raises, each record of the batch is retried
    on its own; a record that still raises fails with the exception's message. Bad inputs and
    failed writes are per-file failures; nothing but a usage problem stops the run.

    Raises :class:`UsageError` (CLI exit 2) for a missing input, an output folder inside the input
    tree (or vice versa), no images found, or another run holding ``out_dir``.

    ``after_write(record, output_path)`` (optional) runs after an output is in place and before it
    is recorded as done (e.g. to embed an erasure payload); it may return warnings; if it raises,
    the file fails and a rerun redoes it. Ctrl-C finishes the
    writes already under way, saves the report if asked, and re-raises KeyboardInterrupt.
    """
    options = options or OutputOptions()
    try:
        configure_allocator()  # fixed mmap threshold: the peak RSS stays flat over long runs
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    console = console or Console(stderr=True, highlight=False, soft_wrap=True)
    input_p, out_p = Path(input), Path(out_dir)
    check_output_location(input_p, out_p)
    items = discover(input_p)
    if not items:
        raise UsageError(f"no image files found in {input_p}")

    out_p.mkdir(parents=True, exist_ok=True)
    lock = OutputLock(out_p)
    if not lock.acquire():
        raise UsageError(f"another advprotect run is writing to {out_p}; wait for it or choose another output")
    t0 = time.monotonic()
    report = RunReport(
        input=str(input_p),
        out_dir=str(out_p),
        settings=settings,
        settings_hash=settings_hash(settings, options),
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    manifest = None
    try:
        removed = clean_temp_files(out_p)
        if removed:
            report.notes.append(f"removed {len(removed)} temporary file(s) left by an interrupted run")
        manifest = Manifest(out_p)
        runner = _Runner(items, out_p, process, options, report, manifest, batch_size, max(1, prefetch),
                         console, progress and not quiet, quiet, on_event, description, after_write)
        try:
            runner.run()
        except KeyboardInterrupt:
            report.interrupted = True
            raise
        finally:
            report.seconds = round(time.monotonic() - t0, 3)
            report.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            if report_path is not None:
                report.save(report_path)
    finally:
        if manifest is not None:
            manifest.close()
        lock.release()
    return report


class _Runner:
    def __init__(self, items, out_dir, process, options, report, manifest, batch_size, prefetch,
                 console, show_progress, quiet, on_event, description, after_write=None):
        self.items: list[InputItem] = items
        self.out_dir: Path = out_dir
        self.out_real = Path(os.path.realpath(out_dir))
        self.process = process
        self.opt: OutputOptions = options
        self.report: RunReport = report
        self.manifest: Manifest = manifest
        self.batch_size = batch_size
        self.console: Console = console
        self.quiet = quiet
        self.on_event = on_event
        self.after_write = after_write
        self.description = description
        self.show_progress = show_progress and console.is_terminal
        self.read_q: queue.Queue = queue.Queue(maxsize=prefetch)
        self.write_q: queue.Queue = queue.Queue(maxsize=prefetch)
        self.finished_q: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.out_rels: dict[str, str] = {}
        self.plan_errors: dict[int, str] = {}
        self._plan()

    # ---- planning: output names, collisions, inputs inside OUT
    def _plan(self) -> None:
        owner: dict[str, str] = {}
        for i, it in enumerate(self.items):
            out_rel = output_relpath(it.rel, self.opt.fmt).as_posix()
            self.out_rels[str(it.rel)] = out_rel
            if it.error:
                continue
            if _is_within(Path(os.path.realpath(it.path)), self.out_real):
                self.plan_errors[i] = f"input is inside the output folder {self.out_dir}; not processed"
            elif out_rel in owner:
                self.plan_errors[i] = (
                    f"output {out_rel} would also be written for {owner[out_rel]}; rename one of them"
                )
            else:
                owner[out_rel] = str(it.rel)

    # ---- background reader
    def _put(self, q: queue.Queue, obj) -> bool:
        while not self.stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _reader(self) -> None:
        batch: list[ImageRecord] = []
        h = self.report.settings_hash
        try:
            for i, it in enumerate(self.items):
                if self.stop.is_set():
                    return
                err = it.error or self.plan_errors.get(i)
                if err:
                    if not self._put(self.read_q, ("fail", it, err)):
                        return
                    continue
                try:
                    data = read_bytes(it.path)
                    sha = sha256_bytes(data)
                    done = self.manifest.done_entry(str(it.rel), sha, h) if self.opt.resume else None
                    if done is not None:
                        del data
                        if not self._put(self.read_q, ("skip", it, done)):
                            return
                        continue
                    rec = decode_image(data, it.path, max_pixels=self.opt.max_pixels, rel=it.rel, sha256=sha)
                    del data
                except ImageReadError as exc:
                    if not self._put(self.read_q, ("fail", it, exc.reason)):
                        return
                    continue
                except Exception as exc:  # a bug must not end the run
                    if not self._put(self.read_q, ("fail", it, f"internal error while reading: {exc!r}")):
                        return
                    continue
                batch.append(rec)
                if len(batch) >= self.batch_size:
                    if not self._put(self.read_q, ("batch", batch, None)):
                        return
                    batch = []
            if batch and not self._put(self.read_q, ("batch", batch, None)):
                return
        except BaseException as exc:  # pragma: no cover - defensive
            self._put(self.read_q, ("crash", exc, traceback.format_exc()))
            return
        self._put(self.read_q, ("end", None, None))

    # ---- background writer
    def _writer(self) -> None:
        while True:
            job = self.write_q.get()
            if job is _STOP:
                return
            for rec, res in job:
                try:
                    entry = self._finish(rec, res)
                except Exception as exc:  # defensive: one file, never the run
                    entry = FileEntry(str(rec.rel), str(rec.source), "failed",
                                      messages=[f"internal error while writing: {exc!r}"])
                self.finished_q.put(entry)

    def _finish(self, rec: ImageRecord, res: ProcessResult) -> FileEntry:
        rel = str(rec.rel)
        warns = list(dict.fromkeys([*rec.warnings, *(res.warnings or [])]))
        info = dict(res.info or {})
        if res.error:
            return FileEntry(rel, str(rec.source), "failed", messages=[str(res.error), *warns], info=info)
        out_rel = None
        if not res.skip_write:
            out_rel = self.out_rels[rel]
            out_path = self.out_dir / out_rel
            if out_path.exists() or out_path.is_symlink():
                if out_path.is_dir():
                    return FileEntry(rel, str(rec.source), "failed", info=info,
                                     messages=[f"output {out_path} is a folder; not overwritten", *warns])
                try:
                    same = os.path.samefile(out_path, rec.source)
                except OSError:
                    same = False
                if same:
                    return FileEntry(rel, str(rec.source), "failed", info=info,
                                     messages=[f"output {out_path} is the input file itself; not written", *warns])
                if not (self.opt.overwrite or self.manifest.is_ours(out_rel)):
                    return FileEntry(rel, str(rec.source), "failed", info=info, messages=[
                        f"output {out_path} already exists and was not written by advprotect; "
                        "not replaced (use the overwrite option)", *warns])
            if res.pixels is None:
                return FileEntry(rel, str(rec.source), "failed", info=info,
                                 messages=["processing returned no pixels (and did not ask to skip the write)", *warns])
            self.manifest.append({"rel": rel, "status": "writing", "output": out_rel}, sync=False)
            notes: list[str] = []
            try:
                write_image(out_path, res.pixels, rec, fmt=self.opt.fmt, quality=self.opt.quality,
                            keep_metadata=self.opt.keep_metadata, warnings_out=notes)
            except Exception as exc:
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                return FileEntry(rel, str(rec.source), "failed", info=info,
                                 messages=[f"cannot write {out_path}: {reason}", *warns])
            if self.after_write is not None:
                try:
                    notes += list(self.after_write(rec, out_path) or [])
                except Exception as exc:
                    return FileEntry(rel, str(rec.source), "failed", info=info,
                                     messages=[f"{out_path}: {exc}", *warns])
            warns = list(dict.fromkeys([*warns, *notes]))
        status = "warned" if warns else "done"
        self.manifest.append({
            "rel": rel,
            "status": status,
            "input_sha256": rec.sha256,
            "settings_hash": self.report.settings_hash,
            "output": out_rel,
            "warnings": warns,
            "info": info,
        })
        return FileEntry(rel, str(rec.source), status, output=out_rel, messages=warns, info=info)

    # ---- calling process
    def _call(self, records: list[ImageRecord]) -> list[ProcessResult]:
        try:
            return self._call_batch(records)
        finally:
            release_free_memory()

    def _call_batch(self, records: list[ImageRecord]) -> list[ProcessResult]:
        try:
            results = self.process(records)
            return self._check(records, results)
        except Exception as exc:
            if len(records) == 1:
                return [ProcessResult(error=f"processing failed: {_exc_line(exc)}")]
            out: list[ProcessResult] = []
            for rec in records:  # isolate the record(s) that break the batch
                try:
                    out.extend(self._check([rec], self.process([rec])))
                except Exception as exc1:
                    out.append(ProcessResult(error=f"processing failed: {_exc_line(exc1)}"))
            return out

    @staticmethod
    def _check(records, results) -> list[ProcessResult]:
        results = list(results) if results is not None else []
        if len(results) != len(records):
            raise RuntimeError(f"process returned {len(results)} results for {len(records)} images")
        fixed = []
        for r in results:
            if isinstance(r, ProcessResult):
                fixed.append(r)
            elif r is None:
                raise RuntimeError("process returned None for an image")
            else:  # a bare tensor/array counts as new pixels
                fixed.append(ProcessResult(pixels=r))
        return fixed

    # ---- main loop
    def _emit(self, entry: FileEntry, progress, task) -> None:
        self.report.entries.append(entry)
        printer = progress.console if progress is not None else self.console
        if entry.status == "failed" or (entry.status == "warned" and not self.quiet):
            for line in entry.lines():
                style = "red" if entry.status == "failed" and not line.startswith(f"{entry.source}: warning") else "yellow"
                printer.print(Text(line, style=style))
        if progress is not None:
            progress.advance(task)
        if self.on_event is not None:
            try:
                self.on_event(entry)
            except Exception as exc:  # a broken callback must not stop the run
                printer.print(Text(f"on_event callback failed: {exc!r}", style="red"))

    def _drain(self, progress, task) -> None:
        while True:
            try:
                entry = self.finished_q.get_nowait()
            except queue.Empty:
                return
            self._emit(entry, progress, task)

    def run(self) -> None:
        progress = task = None
        if self.show_progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=self.console, transient=False)
            progress.start()
            task = progress.add_task(self.description, total=len(self.items))
        reader = threading.Thread(target=self._reader, name="advprotect-reader", daemon=True)
        writer = threading.Thread(target=self._writer, name="advprotect-writer", daemon=True)
        reader.start()
        writer.start()
        try:
            while True:
                self._drain(progress, task)
                try:
                    kind, a, b = self.read_q.get(timeout=0.2)
                except queue.Empty:
                    if not reader.is_alive() and self.read_q.empty():
                        break
                    continue
                if kind == "end":
                    break
                if kind == "crash":
                    raise RuntimeError(f"input reader crashed: {a!r}\n{b}")
                if kind == "fail":
                    self._emit(FileEntry(str(a.rel), str(a.path), "failed", messages=[b]), progress, task)
                elif kind == "skip":
                    self._emit(FileEntry(str(a.rel), str(a.path), "skipped", output=b.get("output"),
                                         info=b.get("info") or {}), progress, task)
                elif kind == "batch":
                    results = self._call(a)
                    pairs = list(zip(a, results))
                    while True:
                        try:
                            self.write_q.put(pairs, timeout=0.2)
                            break
                        except queue.Full:
                            self._drain(progress, task)
                            if not writer.is_alive():
                                raise RuntimeError("output writer stopped unexpectedly")
        finally:
            self.stop.set()
            self.write_q.put(_STOP)  # the writer finishes the queued writes first
            writer.join()
            self._drain(progress, task)
            if progress is not None:
                progress.stop()


def _exc_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
