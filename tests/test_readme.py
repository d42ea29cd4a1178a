"""The README's commands are tests: CI runs the README's test command, and every usage example runs."""

import re
import shlex
import sys
from pathlib import Path

import pytest

from edgesplit.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```sh\n(.*?)```", README, re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    setup = [line for block in BLOCKS for line in block.splitlines() if line.startswith("python3 -m venv")]
    assert len(setup) == 2
    main_job, tests = setup
    assert "edgesplit analyze efficientnet_lite0_pretrained" in main_job
    assert tests.endswith("-m pytest")
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


EXAMPLES = [line for block in BLOCKS for line in block.splitlines() if line.startswith("edgesplit ")]


@pytest.mark.parametrize("line", EXAMPLES)
def test_usage_example_runs(line, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    if "--weights my_resnet18.pt" in line:
        import torch

        from edgesplit.models import load_model

        torch.save(load_model("resnet18").module.state_dict(), tmp_path / "my_resnet18.pt")
    monkeypatch.setattr(sys, "argv", shlex.split(line))
    try:
        main()
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    assert capsys.readouterr().out


def test_python_example_runs(capsys):
    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
    exec(compile(code, "README.md", "exec"), {})
    assert "features_2_0_block_3_1" in capsys.readouterr().out
