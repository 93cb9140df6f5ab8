"""Performance benchmarks of issue #9, run together by ``python bench/run.py``.

Every module here has ``run(ctx: Context) -> dict`` returning its JSON section; timings are
ratios or medians of interleaved repeats taken inside one process, so a busy machine shifts both
sides of a ratio alike (the load average is recorded next to them).
"""
