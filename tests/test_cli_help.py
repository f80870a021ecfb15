"""The command line as a new user meets it: `--help` fast (no torch), help text in whole
paragraphs, `search --help` in panels, and output piped to a file not cut to 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cubesearch.cli import app, main, unwrap
from cubesearch.cli.app import PIPED_WIDTH


def run(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**environ, **env}, timeout=120)


def test_help_and_option_errors_do_not_import_torch():
    code = ("import sys\nfrom cubesearch.cli import main\n"
            "main(['--help']); main(['search', '--help']); main(['demo', '--help'])\n"
            "assert main(['search', 'm.py', '--budget', '70%%']) == 1\n"  # a typo: before torch
            "print('torch' in sys.modules, 'optuna' in sys.modules)")
    res = run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "False False"


def test_every_command_help_is_whole_paragraphs():
    assert unwrap("  One line\n  and its rest.\n\n  Second\n  paragraph.") == \
        "One line and its rest.\n\nSecond paragraph."
    for info in app.registered_commands:
        for paragraph in (info.help or "").split("\n\n"):
            assert "\n" not in paragraph, (info.callback.__name__, paragraph)


def test_search_help_groups_its_options_in_panels(capsys):
    assert main(["search", "--help"]) == 0
    out = capsys.readouterr().out
    panels = ["Budget and objectives", "Strategy", "Training", "Data", "Model", "Storage", "Ray",
              "Output"]
    at = [out.find(f"─ {p} ─") for p in panels]
    assert all(i >= 0 for i in at), dict(zip(panels, at, strict=True))
    assert at.index(min(at)) == 0  # budget first
    strategy = out[at[1]:at[2]]
    assert "--epochs-per-trial" in strategy and "--rungs" in strategy and "--timeout" in strategy


@pytest.mark.parametrize("columns, width", [(None, PIPED_WIDTH), ("100", 100)])
def test_output_piped_to_a_file_is_wide(columns, width):
    code = ("from cubesearch.cli.app import console, err_console\n"
            "print(console.width, err_console.width)")
    res = run(code, **({"COLUMNS": columns} if columns else {}))
    assert res.stdout.split() == [str(width), str(width)]


def test_counting_flops_prints_no_deprecation_warning():
    """fvcore's import calls torch.jit.script, which torch deprecates: `load()` and every FLOPs
    count printed that warning to a user who never asked for TorchScript."""
    code = ("import warnings\nwarnings.simplefilter('always')\nimport torch\n"
            "from cubesearch.models.flops import count_flops\n"
            "count_flops(torch.nn.Conv2d(3, 4, 3), (3, 8, 8))")
    res = run(code)
    assert res.returncode == 0 and "jit.script" not in res.stderr, res.stderr
