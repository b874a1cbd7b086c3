"""`embed-kd` or a command group called alone prints its help (not a squashed one-line error)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv", [[], ["index"], ["score-teacher"]])
def test_group_alone_prints_its_help(argv):
    p = subprocess.run([sys.executable, "-m", "embed_kd", *argv], capture_output=True, text=True)
    assert p.stdout.startswith("Usage: "), p.stdout[:200]
    assert "Commands:" in p.stdout and "Error" not in p.stderr, p.stderr
    assert p.returncode in (0, 2)  # click >= 8.2 exits 2 after the help, older click 0


def test_unknown_command_is_one_error_line():
    p = subprocess.run([sys.executable, "-m", "embed_kd", "evall"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("Error: "), p.stderr
    assert "eval" in p.stderr
