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
    assert main_job.endswith("edgesplit demo")
    assert tests.endswith("-m pytest")
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


EXAMPLE_BLOCKS = [[line for line in block.splitlines() if line.startswith("edgesplit ")] for block in BLOCKS]
EXAMPLE_BLOCKS = [lines for lines in EXAMPLE_BLOCKS if lines]
SHARED = ROOT.parent / "shared"


SLOW_MARKERS = ("--batch-sizes", "edgesplit serve", "edgesplit demo")


@pytest.mark.parametrize("lines", [pytest.param(b, marks=pytest.mark.slow) if any(m in line for line in b for m in SLOW_MARKERS)
                                   else b for b in EXAMPLE_BLOCKS], ids=lambda lines: lines[0][:60])
def test_usage_examples_run_in_order(lines, monkeypatch, tmp_path, capsys):
    """Each block's commands run one after the other in one folder, beside a link to ../shared."""
    work = tmp_path / "work"
    work.mkdir()
    if SHARED.exists():
        (tmp_path / "shared").symlink_to(SHARED)
    elif any("../shared" in line for line in lines):
        pytest.skip(f"{SHARED} is missing: the examples read its traces")
    monkeypatch.chdir(work)
    servers = []
    try:
        _run_block(lines, work, servers, monkeypatch, capsys)
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)
            server.stderr.close()


def _run_block(lines, work, servers, monkeypatch, capsys):
    for line in lines:
        if line.startswith("edgesplit serve"):
            servers.append(_start_server(line, work))
            continue
        if "--images photos/" in line:
            from PIL import Image

            (work / "photos").mkdir(exist_ok=True)
            Image.new("RGB", (300, 240), (200, 120, 40)).save(work / "photos" / "orange.png")
        if "--weights my_resnet18.pt" in line:
            import torch

            from edgesplit.models import load_model

            torch.save(load_model("resnet18").module.state_dict(), work / "my_resnet18.pt")
        monkeypatch.setattr(sys, "argv", shlex.split(line))
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), (line, capsys.readouterr().err)
        assert capsys.readouterr().out, line


def _start_server(line, work):
    """A README `edgesplit serve` line, run as a process until /healthz answers."""
    import subprocess
    import time

    import httpx

    args = shlex.split(line)
    port = args[args.index("--port") + 1]
    process = subprocess.Popen([str(Path(sys.executable).parent / "edgesplit"), *args[1:]], cwd=work,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError(f"{line!r} did not come up in 120 s")


def test_python_example_runs(capsys):
    (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
    exec(compile(code, "README.md", "exec"), {})
    assert "features_2_0_block_3_1" in capsys.readouterr().out
