"""Cut enumeration on models whose every cut is computed by hand."""

import pytest
import torch
from torch import nn

from edgesplit.analysis import analyze
from edgesplit.errors import CutNotFound, EdgesplitError, TraceError
from edgesplit.splitter import check_exact
from toy_models import DataDependent, ShapeBranch, Tokens, Toy, Upsample

TOY_SHAPE = (3, 8, 8)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return analyze(Toy().eval(), TOY_SHAPE, "toy")


def test_toy_cuts_crossing_values_and_sizes(toy):
    table = [(c.name, c.crossing, c.shapes, c.elements, c.single_tensor, c.natural_bottleneck) for c in toy.cuts]
    assert table == [
        ("x", ("x",), ((1, 3, 8, 8),), 192, True, False),
        ("conv1", ("conv1",), ((1, 4, 4, 4),), 64, True, True),
        ("relu", ("relu",), ((1, 4, 4, 4),), 64, True, True),
        ("conv2", ("relu", "conv2"), ((1, 4, 4, 4), (1, 4, 4, 4)), 128, False, False),  # the skip crosses too
        ("add", ("add",), ((1, 4, 4, 4),), 64, True, True),
        ("pool", ("pool",), ((1, 4, 1, 1),), 4, True, True),
        ("view", ("view",), ((1, 4),), 4, True, True),
    ]
    assert [c.index for c in toy.cuts] == list(range(7))
    assert toy.cuts[1].ratio == pytest.approx(1 / 3) and toy.cuts[5].ratio == pytest.approx(4 / 192)
    assert toy.cuts[1].bytes == {"fp32": 256, "fp16": 128, "bf16": 128, "int8": 64, "int8c": 64 + 8 * 4,
                                "int6c": 48 + 8 * 4, "int5c": 40 + 8 * 4, "int4c": 32 + 8 * 4,
                                **dict.fromkeys(("ecq6", "ecq5", "ecq4"), 64 + 2 * 4)}


def test_toy_flops_and_parameters(toy):
    conv1, conv2, fc = 2 * 64 * 27, 2 * 64 * 36, 2 * 4 * 5  # 2 x MACs, bias not counted
    total = conv1 + conv2 + fc
    assert [(c.head_flops, c.tail_flops) for c in toy.cuts] == [
        (0, total), (conv1, total - conv1), (conv1, total - conv1), (conv1 + conv2, fc),
        (conv1 + conv2, fc), (conv1 + conv2, fc), (conv1 + conv2, fc)]
    p1, p2, p3 = 4 * 27 + 4, 4 * 36 + 4, 4 * 5 + 5
    assert [(c.head_params, c.tail_params) for c in toy.cuts] == [
        (0, p1 + p2 + p3), (p1, p2 + p3), (p1, p2 + p3), (p1 + p2, p3), (p1 + p2, p3), (p1 + p2, p3),
        (p1 + p2, p3)]


def test_toy_record_low_and_pareto(toy):
    assert [c.name for c in toy.cuts if c.record_low] == ["conv1", "pool"]  # strictly below every earlier one
    # conv2 (more bytes than add at equal FLOPs) and add (more bytes than pool) are dominated
    assert [c.name for c in toy.cuts if c.pareto] == ["x", "conv1", "relu", "pool", "view"]
    assert toy.counts() == {"cuts": 7, "single_tensor_cuts": 6, "natural_bottlenecks": 5, "record_low": 2,
                            "pareto": 5}


def test_module_level_view_keeps_module_outputs_and_reflags(toy):
    blocks = toy.select("conv.|pool")
    assert [c.name for c in blocks.cuts] == ["conv1", "conv2", "pool"]
    assert [c.index for c in blocks.cuts] == [1, 3, 5]  # depth is kept
    assert [c.name for c in blocks.cuts if c.record_low] == ["conv1", "pool"]
    assert [c.name for c in toy.select("ReLU").cuts] == ["relu"]  # class names match too
    assert blocks.counts()["cuts"] == 3


def test_match_that_matches_nothing_lists_module_classes(toy):
    with pytest.raises(CutNotFound, match=r"--match 'MBConv' matches no module output; module classes with "
                                          r"cuts: AdaptiveAvgPool2d, Conv2d, ReLU$"):
        toy.select("MBConv")
    with pytest.raises(CutNotFound, match="not a valid regular expression"):
        toy.select("(")


def test_unknown_cut_name_suggests_close_names(toy):
    with pytest.raises(CutNotFound, match=r"unknown cut 'conv3'; did you mean 'conv2' or 'conv1'\? \(known: add, conv1, conv2, pool, relu, view, x\)"):
        toy.cut("conv3")


def test_batch_size_is_rederived_not_carried(toy):
    # bs = x.size(0) is used at the very end; it must not make every cut a two-value cut
    assert all("size" not in c.crossing for c in toy.cuts)
    assert toy.graph.shape_kinds == {"size": "batch"}


def test_a_shape_read_from_the_input_is_rederived_not_carried():
    analysis = check_exact(analyze(Upsample().eval(), TOY_SHAPE), cuts=None)
    conv = analysis.cut("conv")
    assert conv.crossing == ("conv",) and conv.natural_bottleneck and conv.exact_max_abs_diff == 0.0
    assert analysis.graph.shape_kinds == {"getattr_1": "derived", "getitem": "constant"}


def test_cuts_where_several_tensors_cross_count_when_allowed():
    torch.manual_seed(0)
    two = check_exact(analyze(Toy().eval(), TOY_SHAPE, "toy", max_tensors=2))
    conv2 = two.cut("conv2")
    assert (conv2.elements, conv2.natural_bottleneck, conv2.exact_max_abs_diff) == (128, True, 0.0)
    assert two.counts() == {"cuts": 7, "single_tensor_cuts": 6, "natural_bottlenecks": 6, "record_low": 2,
                            "pareto": 5}
    assert two.to_dict()["max_tensors"] == 2
    with pytest.raises(EdgesplitError, match="max_tensors must be >= 1, got 0"):
        analyze(Toy().eval(), TOY_SHAPE, max_tensors=0)


def test_parameter_only_values_are_recomputed_by_the_tail():
    analysis = analyze(Tokens().eval(), TOY_SHAPE)
    assert all("token" not in c.crossing for c in analysis.cuts)
    cut = analysis.cut("transpose")
    assert cut.crossing == ("transpose",) and cut.shapes == ((1, 4, 2),)


def test_json_has_exactly_the_documented_keys(toy):
    data = toy.to_dict()
    assert list(data) == ["model", "input_shape", "input_elements", "max_tensors", "cuts", "counts"]
    assert data["input_shape"] == [3, 8, 8] and data["input_elements"] == 192
    assert list(data["cuts"][1]) == [
        "name", "index", "shapes", "elements", "ratio", "bytes", "head_flops", "tail_flops", "head_params",
        "tail_params", "natural_bottleneck", "record_low", "pareto", "exact_max_abs_diff"]
    assert list(data["counts"]) == ["cuts", "single_tensor_cuts", "natural_bottlenecks", "record_low", "pareto"]
    assert data["cuts"][1]["exact_max_abs_diff"] is None


def test_export_is_used_where_fx_fails():
    analysis = analyze(ShapeBranch().eval(), TOY_SHAPE)
    assert analysis.tracer == "torch.export"
    assert [c.shapes for c in analysis.cuts] == [((1, 3, 8, 8),), ((1, 4, 4, 4),), ((1, 4),)]
    assert analysis.cuts[1].modules == ("conv",)


def test_untraceable_model_names_the_module_and_remedies(capfd):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), DataDependent()).eval()
    with pytest.raises(TraceError) as info:
        analyze(model, TOY_SHAPE)
    message = str(info.value)
    assert message.startswith("cannot trace module '1' (DataDependent): torch.fx: symbolically traced "
                              "variables cannot be used as inputs to control flow; torch.export: ")
    assert "torch.where" in message and "torch.fx.wrap" in message
    assert capfd.readouterr().err == ""  # torch.export's own dumps are kept off the terminal


def test_training_mode_is_restored():
    model = Toy().train()
    analyze(model, TOY_SHAPE)
    assert model.training


def test_very_deep_models_need_no_recursion():
    model = nn.Sequential(*[nn.ReLU() for _ in range(3000)], nn.Flatten(), nn.Linear(48, 2)).eval()
    analysis = analyze(model, (3, 4, 4))
    assert analysis.counts()["cuts"] == 3002 and analysis.cuts[-1].name == "_3000"  # the Flatten module
