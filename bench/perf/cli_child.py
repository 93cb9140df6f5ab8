"""Child process of the throughput and growth benchmarks: runs ``advprotect`` CLI invocations in
one process with stage timers installed and writes what it saw as JSON.

    python bench/perf/cli_child.py SPEC.json RESULT.json

SPEC: ``{"runs": [{"name": str, "args": [cli args...], "out": output folder}, ...]}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.stages import StageTimer  # noqa: E402


def faces_in_report(out: Path) -> tuple[int, int]:
    rep = json.loads((out / ".advprotect-report.json").read_text())
    faces = sum(len((e.get("info") or {}).get("faces") or []) for e in rep["entries"])
    return faces, len(rep["entries"])


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    import typer.main

    from advprotect.cli import app

    cmd = typer.main.get_command(app)
    timer = StageTimer().install()
    results = []
    for run in spec["runs"]:
        timer.reset()
        t0 = time.perf_counter()
        rc = cmd.main(list(run["args"]), prog_name="advprotect", standalone_mode=False)
        wall = time.perf_counter() - t0
        out = Path(run["out"])
        rep = json.loads((out / ".advprotect-report.json").read_text())
        faces, files = faces_in_report(out)
        results.append({"name": run["name"], "exit_code": rc, "wall_s": round(wall, 4),
                        "pipeline_s": rep["seconds"], "faces": faces, "files": files,
                        "stages": timer.snapshot()})
    Path(sys.argv[2]).write_text(json.dumps({"runs": results}, indent=2))


if __name__ == "__main__":
    main()
