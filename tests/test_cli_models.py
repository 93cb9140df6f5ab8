"""`advprotect` top-level CLI and the `models` group, end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from advprotect import __version__
from advprotect.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def test_help_and_version():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "Exit codes" in res.output and "models" in res.output
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "advprotect.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_bad_device_is_usage_error():
    res = runner.invoke(app, ["--device", "tpu", "models", "list"])
    assert res.exit_code == 2


def test_models_list_json(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVPROTECT_HOME", str(tmp_path))
    res = runner.invoke(app, ["--json", "models", "list"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    names = {m["name"] for m in data["models"]}
    assert {"mtcnn", "facenet128", "dlib-resnet"} <= names
    assert all(m["cached"] is False for m in data["models"])
    assert all(re.fullmatch(r"[0-9a-f]{64}", m["sha256"]) for m in data["models"])


def test_models_pull_verify_and_second_pull_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVPROTECT_HOME", str(tmp_path))
    res = runner.invoke(app, ["--json", "models", "pull", "mtcnn"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["models"][0]["was_cached"] is False
    res = runner.invoke(app, ["--json", "models", "pull", "mtcnn"])
    assert json.loads(res.stdout)["models"][0]["was_cached"] is True
    res = runner.invoke(app, ["--json", "models", "verify"])
    assert res.exit_code == 0
    rows = {r["name"]: r for r in json.loads(res.stdout)["models"]}
    assert rows["mtcnn"]["ok"] is True
    # damage the cached file: verify reports it and exits 1
    (tmp_path / "models" / "mtcnn.pt").write_bytes(b"garbage")
    res = runner.invoke(app, ["--json", "models", "verify"])
    assert res.exit_code == 1


def test_unknown_model_is_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVPROTECT_HOME", str(tmp_path))
    res = runner.invoke(app, ["models", "pull", "no-such-model"])
    assert res.exit_code == 2
    assert "known models" in res.output


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2, "README must open with an install+run and an install+test command"
    test_cmd = blocks[1].strip()
    assert test_cmd in ci


def test_models_calibrate_rejects_unknown_model():
    res = runner.invoke(app, ["models", "calibrate", "--models", "nope"])
    assert res.exit_code == 2 and "unknown face model" in res.output


def test_global_options_may_follow_the_subcommand():
    from advprotect.cli import hoist_global_options

    assert hoist_global_options(["models", "list", "--json", "--device", "cpu"]) == \
        ["--json", "--device", "cpu", "models", "list"]
    assert hoist_global_options(["evaluate", "-q", "--seed=3", "--", "--json"]) == \
        ["-q", "--seed=3", "evaluate", "--", "--json"]
    out = subprocess.run([sys.executable, "-c", "import sys; sys.argv=['advprotect','models','list','--json'];"
                          "from advprotect.cli import main; main()"], capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["models"]
