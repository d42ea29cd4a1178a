"""The command line as a user meets it: tables, files, and one clear line for every mistake."""

import json
import sys

import pytest

from edgesplit.cli import main


def run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["edgesplit", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_writes_json_and_plot(monkeypatch, capsys, tmp_path):
    json_path, png = tmp_path / "out" / "toy.json", tmp_path / "toy.png"
    code, out, err = run(monkeypatch, capsys, "analyze", "toy_models:toy", "--input-shape", "3,8,8", "--check",
                         "--json", str(json_path), "--plot", str(png))
    assert code == 0 and err == ""
    assert "7 cuts, 6 single tensor cuts, 5 natural bottlenecks, 2 record low, 5 pareto; exact split " \
           "checked at 5 cuts, max |diff| 0" in out
    data = json.loads(json_path.read_text())
    assert data["model"] == "toy_models:toy" and data["counts"]["natural_bottlenecks"] == 5
    assert [c["exact_max_abs_diff"] for c in data["cuts"]] == [None, 0.0, 0.0, None, 0.0, 0.0, 0.0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_analyze_with_cuts_where_two_tensors_cross(monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys, "analyze", "toy_models:toy", "--input-shape", "3,8,8", "--check",
                         "--max-tensors", "2")
    assert code == 0 and err == ""
    assert "7 cuts, 6 single tensor cuts, 6 natural bottlenecks, 2 record low, 5 pareto; exact split " \
           "checked at 6 cuts, max |diff| 0" in out
    assert "4×4×4 + 4×4×4" in out
    code, _, err = run(monkeypatch, capsys, "analyze", "toy_models:toy", "--max-tensors", "0")
    assert code == 2 and "Invalid value for '--max-tensors': 0 is not in the range x>=1" in err


def test_analyze_block_level_view_reproduces_the_paper(monkeypatch, capsys, tmp_path):
    json_path = tmp_path / "b0.json"
    code, out, _ = run(monkeypatch, capsys, "analyze", "efficientnet_b0", "--match", "MBConv|FusedMBConv",
                       "--json", str(json_path))
    assert code == 0
    data = json.loads(json_path.read_text())
    assert data["counts"] == {"cuts": 16, "single_tensor_cuts": 16, "natural_bottlenecks": 15, "record_low": 4,
                              "pareto": 5}
    assert "features.2.0" in out  # the table names the block


def test_models_lists_names(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, "models", "efficientnet_b")
    assert code == 0 and out.split() == [f"efficientnet_b{i}" for i in range(8)]


@pytest.mark.parametrize("args,message", [
    (["analyze", "efficientnet_b9"], "edgesplit: error: unknown model 'efficientnet_b9'; did you mean"),
    (["analyze", "toy_models:toy", "--input-shape", "3,x,8"], "edgesplit: error: malformed input shape '3,x,8'"),
    (["analyze", "toy_models:toy", "--input-shape", "3,8,8", "--weights", "/nonexistent.pt"],
     "edgesplit: error: cannot read weights file /nonexistent.pt: no such file"),
    (["analyze", "toy_models:toy", "--input-shape", "3,8,8", "--match", "MBConv"],
     "edgesplit: error: --match 'MBConv' matches no module output"),
    (["analyze", "toy_models:untraceable", "--input-shape", "3,8,8"],
     "edgesplit: error: cannot trace module '1' (DataDependent)"),
    (["analyze", "toy_models:toy", "--input-size", "abc"], "Invalid value for '--input-size'"),
    (["analyze"], "Missing argument 'MODEL'"),
])
def test_mistakes_give_one_line_and_exit_code_2(monkeypatch, capsys, args, message):
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    if message.startswith("edgesplit: error"):
        assert err.count("\n") == 1 and out == ""


def test_unwritable_output_is_one_line(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(monkeypatch, capsys, "analyze", "toy_models:toy", "--input-shape", "3,8,8",
                       "--json", str(blocker / "x.json"))
    assert code == 2 and err == f"edgesplit: error: cannot write {blocker / 'x.json'}: File exists\n"


def test_weights_that_are_not_weights(monkeypatch, capsys, tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a checkpoint")
    code, _, err = run(monkeypatch, capsys, "analyze", "toy_models:toy", "--weights", str(bogus))
    assert code == 2 and err.startswith(f"edgesplit: error: {bogus} is not a PyTorch weights file")
