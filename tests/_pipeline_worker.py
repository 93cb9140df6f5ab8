"""Subprocess used by test_pipeline's kill -9 test: runs run_pipeline with an identity transform that
sleeps per file and logs every file ``process`` sees.

usage: python _pipeline_worker.py INPUT OUT SEEN_LOG SLEEP_SECONDS BATCH_SIZE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from advprotect.io import OutputOptions, ProcessResult, run_pipeline


def main() -> int:
    src, out, seen_log, sleep_s, batch = sys.argv[1:6]
    sleep_s = float(sleep_s)

    def process(records):
        results = []
        for rec in records:
            with open(seen_log, "a") as fh:
                fh.write(f"{rec.rel.as_posix()}\n")
                fh.flush()
            time.sleep(sleep_s)
            results.append(ProcessResult(pixels=rec.pixels.clone(), info={"identity": True}))
        return results

    report = run_pipeline(Path(src), Path(out), process, settings={"transform": "identity"},
                          batch_size=int(batch), options=OutputOptions(), progress=False)
    print(report.summary(), flush=True)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
