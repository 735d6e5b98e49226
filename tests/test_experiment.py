"""Tests for dispatch.experiment: `-c experiment.toml` gives the same effective configuration as
the equivalent command line, the command line wins, and bad files fail with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dispatch.cli import main


def _show(capsys, *argv: str) -> dict:
    assert main([*argv, "--show-config"]) == 0
    return json.loads(capsys.readouterr().out)


def _toml(tmp_path: Path, text: str) -> str:
    p = tmp_path / "experiment.toml"
    p.write_text(text)
    return str(p)


FILE = """
rate = "30k"
netisr = 2
users = 2
policy = "source"
ithread-prio = true
cpu = ["ithread=0", "netisr=0,1"]
size = "imix"
no-rxcsum = true

[compare]
models = ["deferred", "polling"]
repeat = 2

[sweep]
model = ["deferred", "polling"]
rates = ["10k", "20k", "max"]
tolerance = 0.1

[run]
model = "hybrid"

[experiment]
name = "equivalence"
"""
CLI = ["--rate", "30k", "--netisr", "2", "--users", "2", "--policy", "source", "--ithread-prio",
       "--cpu", "ithread=0", "--cpu", "netisr=0,1", "--size", "imix", "--no-rxcsum"]


def test_file_and_command_line_give_the_same_configuration(tmp_path, capsys):
    f = _toml(tmp_path, FILE)
    for cmd, extra in (("run", ["--model", "hybrid"]),
                       ("compare", ["deferred", "polling", "--repeat", "2"]),
                       ("sweep", ["--model", "deferred,polling", "--rates", "10k,20k,max",
                                  "--tolerance", "0.1"])):
        from_file = _show(capsys, cmd, "-c", f)
        typed = _show(capsys, cmd, *CLI, *extra)
        assert from_file.pop("experiment")["meta"] == {"name": "equivalence"}
        assert from_file == typed, cmd
    assert from_file["config"]["cpus"] == {"ithread": [0], "netisr": [0, 1]}
    assert from_file["config"]["rxcsum"] is False
    assert from_file["rates"] == [10_000.0, 20_000.0, "max"]


def test_the_command_line_overrides_the_file(tmp_path, capsys):
    f = _toml(tmp_path, 'rate = "30k"\nnetisr = 2\nduration = 5\n')
    d = _show(capsys, "run", "-c", f, "--netisr", "3", "--count", "100")
    assert d["config"]["netisr"] == 3 and d["config"]["rate"] == 30_000.0
    # --count typed, duration in the file: they exclude each other, the typed one wins
    assert d["config"]["count"] == 100 and d["config"]["duration"] is None
    assert d["experiment"]["from_file"] == ["rate"]
    assert d["experiment"]["given_on_command_line"] == ["count", "netisr"]


def test_a_command_table_applies_only_to_its_command(tmp_path, capsys):
    f = _toml(tmp_path, 'netisr = 2\n[run]\nnetisr = 3\n[compare]\nrepeat = 5\n')
    assert _show(capsys, "run", "-c", f)["config"]["netisr"] == 3
    d = _show(capsys, "compare", "-c", f)
    assert d["config"]["netisr"] == 2 and d["repeat"] == 5


@pytest.mark.parametrize("text,msg", [
    ("bogus = 1\n", "unknown key 'bogus' for dispatch run; valid: batch,"),
    ('rate = "fast"\n', "rate = 'fast': bad rate"),
    ('netisr = "two"\n', "expected a number"),
    ("netisr = 1.5\n", "expected an integer"),
    ("ithread-prio = 1\n", "expected true or false"),
    ('policy = "random"\n', "valid: source, flow, cpu"),
    ("netisr = 0\n", "--netisr 0 is not valid"),
    ("repeat = 2\n", "'repeat' is an option of dispatch compare, not run: put it under "
                      "[compare]"),
    ("rate = 1e6\nduration = 1.5\nbatch = 64.0\n", None),
    ("netisr = \n", "not valid TOML"),
    ("run = 3\n", "[run] must be a table"),
])
def test_bad_files_exit_2_with_a_helpful_message(tmp_path, capsys, text, msg):
    f = _toml(tmp_path, text)
    if msg is None:  # numbers written as TOML floats are taken as typed
        cfg = _show(capsys, "run", "-c", f)["config"]
        assert (cfg["rate"], cfg["duration"], cfg["batch"]) == (1e6, 1.5, 64)
        return
    assert main(["run", "-c", f, "--show-config"]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.startswith("dispatch run: "), err


def test_missing_file_exits_2(capsys):
    assert main(["compare", "-c", "/nonexistent/experiment.toml"]) == 2
    assert "experiment file '/nonexistent/experiment.toml' not found" in capsys.readouterr().err


def test_result_document_records_the_configuration_version_and_file(tmp_path):
    f = _toml(tmp_path, 'rate = "10k"\ncount = 300\n[experiment]\nname = "recorded"\n')
    out = tmp_path / "run.json"
    r = subprocess.run([sys.executable, "-m", "dispatch.cli", "run", "-c", f, "--model",
                        "deferred", "--quiet", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    from dispatch import __version__

    assert doc["software"]["dispatch_emu"] == __version__
    assert doc["config"]["rate"] == 10_000.0 and doc["config"]["count"] == 300
    assert doc["config"]["model"] == "deferred"
    exp = doc["experiment"]
    assert exp["file"] == f and len(exp["sha256"]) == 64
    assert exp["meta"] == {"name": "recorded"} and exp["given_on_command_line"] == [
        "json", "model", "quiet"]


@pytest.mark.parametrize("name", ["direct-vs-deferred", "deferred-scaling", "receive-livelock"])
def test_shipped_experiments_parse(capsys, name):
    root = Path(__file__).resolve().parent.parent / "docs" / "experiments" / name
    cmd = "compare" if name == "direct-vs-deferred" else "sweep"
    d = _show(capsys, cmd, "-c", str(root / "experiment.toml"))
    assert d["experiment"]["meta"]["name"] == name
    assert (root / "README.md").exists()
