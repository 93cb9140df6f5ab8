"""Report writers of ``advprotect evaluate``: JSON, CSV (one row per image), Markdown and a
self-contained HTML page. Each takes the report dict of
:func:`advprotect.evaluate.command.evaluate_command` and a path, and writes atomically."""

from .csv_report import csv_columns, write_csv
from .html import render_html, thumbnail_triplet, write_html
from .json_report import clean_json, write_json
from .markdown import render_markdown, write_markdown

__all__ = ["clean_json", "csv_columns", "render_html", "render_markdown", "thumbnail_triplet",
           "write_csv", "write_html", "write_json", "write_markdown"]
