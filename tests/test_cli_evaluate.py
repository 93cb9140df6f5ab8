"""`advprotect evaluate` through the CLI: JSON on stdout and the exit codes scripts rely on."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from advprotect.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, celebrity_train):
    root = tmp_path_factory.mktemp("evalcli")
    for person in ("madonna", "mindy_kaling"):
        d = root / "orig" / person
        d.mkdir(parents=True)
        for i, p in enumerate(celebrity_train[person][:2]):
            im = Image.open(p).convert("RGB")
            im.thumbnail((300, 300))
            im.save(d / f"{i}.png")
    shutil.copytree(root / "orig", root / "copy")
    return root


def test_identical_copy_json_and_fail_under_exit_3(folders):
    args = ["--json", "evaluate", "--original", str(folders / "orig"), "--protected", str(folders / "copy"),
            "--models", "facenet128", "--transforms", "jpeg:75"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["summary"]["mean_asr"]["facenet128"] == 0
    res = runner.invoke(app, args + ["--fail-under", "0.5"])
    assert res.exit_code == 3


def test_usage_errors_exit_2(folders, tmp_path):
    res = runner.invoke(app, ["evaluate", "--original", str(tmp_path / "missing"), "--protected", str(folders / "copy")])
    assert res.exit_code == 2
    res = runner.invoke(app, ["evaluate", "--original", str(folders / "orig"), "--protected", str(folders / "copy"),
                              "--transforms", "jpeg:abc"])
    assert res.exit_code == 2
