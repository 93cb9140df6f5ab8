"""advprotect.io.run_pipeline: bad inputs never stop a run, reports, resume, kill -9 safety."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

import _io_corpus as C
import advprotect
from advprotect.io import (
    MANIFEST_NAME,
    TMP_MARKER,
    OutputOptions,
    ProcessResult,
    UsageError,
    read_image,
    run_pipeline,
    settings_hash,
)
from advprotect.io import pipeline as pipeline_mod

HERE = Path(__file__).resolve().parent


def identity(records):
    return [ProcessResult(pixels=r.pixels, info={"w": r.size[0]}) for r in records]


def quiet_console():
    buf = io.StringIO()
    return Console(file=buf, width=300, force_terminal=False, highlight=False), buf


def manifest_lines(out: Path) -> list[dict]:
    p = out / MANIFEST_NAME
    if not p.exists():
        return []
    lines = []
    for raw in p.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            pass
    return lines


def done_lines(out: Path) -> list[dict]:
    return [e for e in manifest_lines(out) if e.get("status") in ("done", "warned")]


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TMP_MARKER in p.name]


def small_folder(root: Path, n: int) -> list[Path]:
    return [C.save(Image.fromarray(C.smooth_rgb(16, 20, seed=i)), root / f"d{i % 3}" / f"img{i:02d}.png")
            for i in range(n)]


# --------------------------------------------------------------------------- the corpus run


def test_corpus_run_reports_each_bad_file_and_writes_the_good_ones(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    files = C.build_corpus(src)
    C.make_unreadable(files["unreadable"], monkeypatch)
    before = C.hash_tree(src)
    console, buf = quiet_console()
    events = []
    report = run_pipeline(src, out, identity, settings={"k": 1}, batch_size=3, console=console,
                          on_event=events.append, report_path=out / ".report.json")
    os.chmod(files["unreadable"], 0o644)

    by_rel = {e.rel: e for e in report.entries}
    expect_failed = {
        "zero.jpg": "empty file",
        "truncated.jpg": "truncated file",
        "notes_really.jpg": "not an image",
        "bomb.png": "exceeds max_pixels",
        "locked.png": "permission denied",
    }
    for rel, snippet in expect_failed.items():
        e = by_rel[rel]
        assert e.status == "failed" and snippet in e.messages[0], (rel, e.messages)
        assert e.output is None and not (out / rel).exists()
    assert len({by_rel[r].messages[0] for r in expect_failed}) == len(expect_failed)
    assert by_rel["animated.gif"].status == "warned" and "animated GIF" in by_rel["animated.gif"].messages[0]
    assert by_rel["cmyk.jpg"].status == "warned"
    good = ["good.png", "good.jpg", "sub/rotated.jpg", "sub/gray.png", "sub/rgba.png",
            "deep/gray16.png", "deep/rgb16.png", "palette.gif"]
    for rel in good:
        assert by_rel[rel].status == "done", (rel, by_rel[rel].messages)
    assert by_rel["palette.gif"].output == "palette.png" and (out / "palette.png").is_file()
    assert by_rel["animated.gif"].output == "animated.png"
    for e in report.entries:
        if e.output:
            Image.open(out / e.output).load()

    # what is on disk matches the inputs
    assert np.array_equal(np.asarray(Image.open(out / "good.png")), np.asarray(Image.open(src / "good.png")))
    assert Image.open(out / "sub" / "gray.png").mode == "L"
    assert Image.open(out / "sub" / "rgba.png").mode == "RGBA"
    assert read_image(out / "deep" / "gray16.png").bit_depth == 16
    assert read_image(out / "deep" / "rgb16.png").bit_depth == 16
    rot = Image.open(out / "sub" / "rotated.jpg")
    assert rot.size == (20, 40) and not rot.getexif().get_ifd(C.GPS_IFD)  # upright, GPS gone

    # inputs untouched; nothing ignored or hidden was processed
    assert C.hash_tree(src) == before
    assert len(report.entries) == 15 and len(events) == 15
    assert report.counts == {"done": 8, "warned": 2, "skipped": 0, "failed": 5, "total": 15}
    assert report.exit_code == 1

    # one "file: reason" line per failure on stderr, and in the saved report
    err = buf.getvalue()
    for rel, snippet in expect_failed.items():
        line = next(ln for ln in err.splitlines() if ln.startswith(str(src / rel) + ": "))
        assert snippet in line
    assert f"{src / 'animated.gif'}: warning: animated GIF" in err
    saved = json.loads((out / ".report.json").read_text())
    assert saved["counts"]["failed"] == 5 and saved["exit_code"] == 1
    assert json.loads(report.to_json())["settings_hash"] == report.settings_hash
    assert not temp_files(out)


def test_exit_code_zero_when_all_done_and_usage_errors(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    small_folder(src, 3)
    report = run_pipeline(src, out, identity, settings={}, progress=False)
    assert report.exit_code == 0 and report.counts["done"] == 3
    with pytest.raises(UsageError, match="inside the input folder"):
        run_pipeline(src, src / "protected", identity, settings={})
    with pytest.raises(UsageError, match="input folder"):
        run_pipeline(src, src, identity, settings={})
    with pytest.raises(UsageError, match="inside the output"):
        run_pipeline(src, tmp_path, identity, settings={})
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no image files"):
        run_pipeline(tmp_path / "empty", tmp_path / "out2", identity, settings={})
    with pytest.raises(UsageError, match="quality"):
        OutputOptions(quality=0)
    with pytest.raises(UsageError, match="unknown output format"):
        OutputOptions(fmt="gif")
    assert not (src / "protected").exists()


def test_process_exceptions_become_per_file_errors(tmp_path):
    src = tmp_path / "in"
    small_folder(src, 5)
    calls = []

    def flaky(records):
        calls.append([r.rel.name for r in records])
        if any(r.rel.name == "img03.png" for r in records):
            raise RuntimeError("CUDA out of memory (simulated)")
        return identity(records)

    console, buf = quiet_console()
    report = run_pipeline(src, tmp_path / "out", flaky, settings={}, batch_size=5, console=console)
    by_name = {Path(e.rel).name: e for e in report.entries}
    assert by_name["img03.png"].status == "failed"
    assert "processing failed: RuntimeError: CUDA out of memory" in by_name["img03.png"].messages[0]
    assert all(e.status == "done" for n, e in by_name.items() if n != "img03.png")
    assert len(calls[0]) == 5 and all(len(c) == 1 for c in calls[1:])  # batch retried one by one
    assert report.exit_code == 1

    def always_broken(records):
        raise ValueError("bad model")

    report = run_pipeline(src, tmp_path / "out2", always_broken, settings={}, batch_size=2, console=console)
    assert report.counts["failed"] == 5 and all("bad model" in e.messages[0] for e in report.entries)

    def wrong_count(records):
        return identity(records)[:-1] if len(records) > 1 else []

    report = run_pipeline(src, tmp_path / "out3", wrong_count, settings={}, batch_size=2, console=console)
    assert report.counts["failed"] == 5 and "results for" in report.entries[0].messages[0]


def test_process_results_error_warning_and_skip_write(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    small_folder(src, 3)

    def mixed(records):
        res = []
        for r in records:
            if r.rel.name == "img00.png":
                res.append(ProcessResult(error="no face found"))
            elif r.rel.name == "img01.png":
                res.append(ProcessResult(pixels=1 - r.pixels, warnings=["weak protection"], info={"psnr": np.float32(33.5)}))
            else:
                res.append(ProcessResult(skip_write=True, info={"faces": 0}))
        return res

    console, _ = quiet_console()
    report = run_pipeline(src, out, mixed, settings={}, console=console)
    by_name = {Path(e.rel).name: e for e in report.entries}
    assert by_name["img00.png"].status == "failed" and by_name["img00.png"].messages == ["no face found"]
    assert by_name["img01.png"].status == "warned" and by_name["img01.png"].info == {"psnr": np.float32(33.5)}
    assert json.loads(report.to_json())["entries"][1]["info"]["psnr"] == 33.5
    assert by_name["img02.png"].status == "done" and by_name["img02.png"].output is None
    assert not (out / "d2" / "img02.png").exists()
    # a rerun skips the done ones (including the analysis-only one), retries the failure
    seen = []
    report = run_pipeline(src, out, lambda rs: seen.extend(r.rel.name for r in rs) or mixed(rs),
                          settings={}, console=console)
    assert seen == ["img00.png"]


def test_format_option_changes_extension_and_detects_collisions(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    C.save(Image.fromarray(C.smooth_rgb()), src / "a.png")
    C.save(Image.fromarray(C.smooth_rgb()), src / "a.jpg", quality=95)
    C.save(Image.fromarray(C.smooth_rgb()), src / "b.tif")
    console, _ = quiet_console()
    report = run_pipeline(src, out, identity, settings={}, options=OutputOptions(fmt="jpeg", quality=90),
                          console=console)
    by_rel = {e.rel: e for e in report.entries}
    assert by_rel["a.jpg"].output == "a.jpg" and by_rel["b.tif"].output == "b.jpg"
    assert by_rel["a.png"].status == "failed" and "would also be written" in by_rel["a.png"].messages[0]
    assert Image.open(out / "b.jpg").format == "JPEG"


def test_foreign_output_not_overwritten_without_permission(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    small_folder(src, 2)
    foreign = out / "d0" / "img00.png"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"user's own file")
    console, _ = quiet_console()
    report = run_pipeline(src, out, identity, settings={}, console=console)
    e = next(e for e in report.entries if e.rel == "d0/img00.png")
    assert e.status == "failed" and "already exists" in e.messages[0]
    assert foreign.read_bytes() == b"user's own file"
    report = run_pipeline(src, out, identity, settings={}, console=console,
                          options=OutputOptions(overwrite=True))
    assert report.exit_code == 0 and Image.open(foreign).size == (20, 16)


def test_single_file_and_list_file_inputs(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    paths = small_folder(src, 3)
    elsewhere = C.save(Image.fromarray(C.smooth_rgb()), tmp_path / "other" / "x.png")
    console, buf = quiet_console()
    report = run_pipeline(paths[0], out / "single", identity, settings={}, console=console)
    assert [e.output for e in report.entries] == ["img00.png"] and (out / "single" / "img00.png").is_file()
    lst = src / "pick.lst"
    lst.write_text(f"d1/img01.png\nnope.jpg\n{elsewhere}\n")
    report = run_pipeline(lst, out / "list", identity, settings={}, console=console)
    by_rel = {e.rel: e for e in report.entries}
    assert by_rel["d1/img01.png"].status == "done" and (out / "list" / "d1" / "img01.png").is_file()
    assert by_rel["nope.jpg"].status == "failed" and "file not found" in by_rel["nope.jpg"].messages[0]
    assert by_rel["_external/x.png"].status == "done" and (out / "list" / "_external" / "x.png").is_file()
    assert f"{src / 'nope.jpg'}: file not found" in buf.getvalue()
    assert report.exit_code == 1


def test_progress_bar_on_a_terminal(tmp_path):
    src = tmp_path / "in"
    small_folder(src, 4)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    run_pipeline(src, tmp_path / "out", identity, settings={}, console=console, description="protecting")
    assert "protecting" in buf.getvalue() and "4/4" in buf.getvalue()
    buf2 = io.StringIO()
    run_pipeline(src, tmp_path / "out2", identity, settings={}, quiet=True,
                 console=Console(file=buf2, force_terminal=True, width=120))
    assert buf2.getvalue() == ""  # quiet: no bar (and no warnings; errors would still print)


# --------------------------------------------------------------------------- resume


def test_resume_skips_done_and_redoes_changed(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    paths = small_folder(src, 6)
    console, _ = quiet_console()
    seen: list[str] = []

    def spy(records):
        seen.extend(r.rel.as_posix() for r in records)
        return identity(records)

    r1 = run_pipeline(src, out, spy, settings={"eps": 0.03}, batch_size=4, console=console)
    assert r1.counts["done"] == 6 and len(seen) == 6

    seen.clear()
    r2 = run_pipeline(src, out, spy, settings={"eps": 0.03}, batch_size=4, console=console)
    assert seen == [] and r2.counts["skipped"] == 6 and r2.exit_code == 0

    # changed input bytes, a deleted output -> only those two are redone
    C.save(Image.fromarray(C.smooth_rgb(16, 20, seed=99)), paths[1])
    (out / paths[2].relative_to(src)).unlink()
    r3 = run_pipeline(src, out, spy, settings={"eps": 0.03}, batch_size=4, console=console)
    assert sorted(seen) == sorted(p.relative_to(src).as_posix() for p in (paths[1], paths[2]))
    assert r3.counts == {"done": 2, "warned": 0, "skipped": 4, "failed": 0, "total": 6}

    # other settings (or other output options) -> everything is redone, outputs replaced
    seen.clear()
    r4 = run_pipeline(src, out, spy, settings={"eps": 0.05}, batch_size=4, console=console)
    assert len(seen) == 6 and r4.counts["done"] == 6
    seen.clear()
    run_pipeline(src, out, spy, settings={"eps": 0.05}, console=console, options=OutputOptions(quality=80))
    assert len(seen) == 6
    seen.clear()
    run_pipeline(src, out, spy, settings={"eps": 0.05}, console=console, options=OutputOptions(quality=80, resume=False))
    assert len(seen) == 6


def test_settings_hash_is_stable():
    a = settings_hash({"b": 1, "a": [1, 2], "p": Path("/x")}, OutputOptions())
    b = settings_hash({"p": Path("/x"), "a": [1, 2], "b": 1}, OutputOptions(overwrite=True, resume=False, max_pixels=5))
    assert a == b and len(a) == 16
    assert a != settings_hash({"b": 2, "a": [1, 2], "p": Path("/x")})
    assert a != settings_hash({"b": 1, "a": [1, 2], "p": Path("/x")}, OutputOptions(fmt="png"))
    assert settings_hash({}, OutputOptions(fmt="jpg")) == settings_hash({}, OutputOptions(fmt="JPEG"))


def test_stale_temp_files_and_torn_manifest_are_handled(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    small_folder(src, 3)
    console, _ = quiet_console()
    run_pipeline(src, out, identity, settings={}, console=console)
    stale = out / "d0" / f".img00.png{TMP_MARKER}1234-abcd"
    stale.write_bytes(b"half a png")
    with open(out / MANIFEST_NAME, "a") as fh:
        fh.write('{"rel": "d1/img01.png", "status": "do')  # killed mid-append
    seen = []
    report = run_pipeline(src, out, lambda rs: seen.extend(rs) or identity(rs), settings={}, console=console)
    assert not stale.exists() and seen == [] and report.counts["skipped"] == 3
    assert any("temporary" in n for n in report.notes)
    # the next append starts on a fresh line: every complete line still parses
    (out / "d1" / "img01.png").unlink()
    run_pipeline(src, out, identity, settings={}, console=console)
    raw = (out / MANIFEST_NAME).read_text().splitlines()
    assert sum(1 for ln in raw if not ln.startswith("{") or not ln.endswith("}")) == 1  # only the torn one
    assert done_lines(out)[-1]["rel"] == "d1/img01.png"


def test_second_run_on_same_output_is_refused(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    small_folder(src, 2)
    started, release = threading.Event(), threading.Event()
    errors = []

    def slow(records):
        started.set()
        release.wait(10)
        return identity(records)

    t = threading.Thread(target=lambda: run_pipeline(src, out, slow, settings={}, progress=False))
    t.start()
    try:
        assert started.wait(20)
        with pytest.raises(UsageError, match="another advprotect run"):
            run_pipeline(src, out, identity, settings={}, progress=False)
    except Exception as exc:  # pragma: no cover
        errors.append(exc)
    finally:
        release.set()
        t.join(20)
    assert not errors


# --------------------------------------------------------------------------- streaming


def test_prefetch_is_bounded(tmp_path, monkeypatch):
    """The reader may only run a few batches ahead of ``process``: memory does not grow with the folder."""
    src = tmp_path / "in"
    small_folder(src, 40)
    decoded = []
    real = pipeline_mod.decode_image

    def counting(*a, **k):
        decoded.append(1)
        return real(*a, **k)

    monkeypatch.setattr(pipeline_mod, "decode_image", counting)
    processed = 0
    ahead = []

    def slow(records):
        nonlocal processed
        time.sleep(0.02)
        ahead.append(len(decoded) - processed)
        processed += len(records)
        return identity(records)

    run_pipeline(src, tmp_path / "out", slow, settings={}, batch_size=2, prefetch=2, progress=False)
    # this batch + 2 queued + 1 being filled (+1 blocked in put) at most
    assert max(ahead) <= 2 * (1 + 2 + 2), ahead


# --------------------------------------------------------------------------- kill -9


def _worker(src, out, log, sleep, batch=3):
    env = dict(os.environ)
    root = str(Path(advprotect.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.Popen(
        [sys.executable, str(HERE / "_pipeline_worker.py"), str(src), str(out), str(log), str(sleep), str(batch)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL semantics")
def test_kill_9_mid_run_then_resume(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    paths = small_folder(src, 12)
    all_rels = {p.relative_to(src).as_posix() for p in paths}
    before = C.hash_tree(src)

    proc = _worker(src, out, tmp_path / "seen1.log", sleep=0.25, batch=3)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and len(done_lines(out)) < 4:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        assert len(done_lines(out)) >= 4, "worker made no progress"
        time.sleep(0.3)  # now it is inside the next batch
    finally:
        proc.kill()  # SIGKILL: no cleanup handlers run
        proc.wait(30)
    assert proc.returncode == -9

    finished = {e["rel"] for e in done_lines(out)}
    assert 4 <= len(finished) < 12
    seen1 = (tmp_path / "seen1.log").read_text().split()
    assert set(seen1) - finished, "the kill was meant to land inside a batch"
    # every finished file is complete on disk; nothing half-written is visible as an output
    for rel in finished:
        assert np.array_equal(np.asarray(Image.open(out / rel)), np.asarray(Image.open(src / rel)))
    visible = {p.relative_to(out).as_posix() for p in out.rglob("*")
               if p.is_file() and not p.name.startswith(".")}
    assert visible <= all_rels
    for rel in visible - finished:  # written but killed before the manifest line: still complete
        Image.open(out / rel).load()

    proc = _worker(src, out, tmp_path / "seen2.log", sleep=0.0, batch=3)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    seen2 = (tmp_path / "seen2.log").read_text().split()
    assert not set(seen2) & finished, "finished files were processed again"
    assert set(seen2) == all_rels - finished and len(seen2) == len(set(seen2))
    assert f"{len(finished)} already done" in stdout

    lines = done_lines(out)
    assert sorted(e["rel"] for e in lines) == sorted(all_rels)  # each file recorded exactly once
    for rel in all_rels:
        assert np.array_equal(np.asarray(Image.open(out / rel)), np.asarray(Image.open(src / rel)))
    assert not temp_files(out)
    assert C.hash_tree(src) == before


# ------------------------------------------------------------------ allocator settings (#9)
def test_configure_allocator(monkeypatch):
    import sys as _sys

    from advprotect import runtime

    monkeypatch.setenv("ADVPROTECT_MMAP_THRESHOLD", "0")
    assert runtime.configure_allocator() is None            # 0: glibc's own default kept
    monkeypatch.setenv("ADVPROTECT_MMAP_THRESHOLD", "lots")
    with pytest.raises(ValueError, match="ADVPROTECT_MMAP_THRESHOLD must be a number of bytes"):
        runtime.configure_allocator()
    monkeypatch.delenv("ADVPROTECT_MMAP_THRESHOLD")
    got = runtime.configure_allocator()
    if _sys.platform.startswith("linux") and runtime._glibc():
        assert got == runtime.MMAP_THRESHOLD
    runtime.release_free_memory()                            # safe to call anywhere
