"""split(): exact head/tail pairs that share the original parameters."""

import pytest
import torch

from edgesplit import analyze, check_exact, split
from edgesplit.splitter import segment
from edgesplit.errors import CutNotFound
from toy_models import ShapeBranch, Tokens, Toy

SHAPE = (3, 8, 8)


def _compose(head, tail, x):
    mid = head(x)
    return tail(*mid) if isinstance(mid, tuple) else tail(mid)


@pytest.mark.parametrize("factory", [Toy, Tokens, ShapeBranch])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_every_cut_composes_to_the_model_bit_exactly(factory, batch_size):
    torch.manual_seed(0)
    model = factory().eval()
    analysis = analyze(model, SHAPE)
    x = torch.randn(batch_size, *SHAPE)
    with torch.inference_mode():
        expected = model(x)
        for cut in analysis.cuts:
            head, tail = split(analysis, cut)
            assert torch.equal(_compose(head, tail, x), expected), cut.name


def test_head_and_tail_share_the_original_parameters():
    model = Toy().eval()
    head, tail = split(analyze(model, SHAPE), "add")
    assert head.conv1.weight is model.conv1.weight and head.conv2.weight is model.conv2.weight
    assert tail.fc.weight is model.fc.weight
    assert not hasattr(tail, "conv1") and not hasattr(head, "fc")  # each side holds only what it runs


def test_multi_value_cut_passes_a_tuple_in_crossing_order():
    model = Toy().eval()
    analysis = analyze(model, SHAPE)
    head, tail = split(analysis, "conv2")
    x = torch.randn(2, *SHAPE)
    relu, conv2 = head(x)
    assert relu.shape == conv2.shape == (2, 4, 4, 4)
    assert torch.equal(tail(relu, conv2), model(x))


def test_tail_reads_the_batch_size_from_the_crossing_tensor():
    analysis = analyze(Toy().eval(), SHAPE)
    _, tail = split(analysis, "pool")
    assert "pool.size(0)" in tail.code and "view(size, -1)" in tail.code.replace("view(size_1", "view(size")


def test_segments_between_cuts_compose_to_the_model_bit_exactly():
    torch.manual_seed(0)
    model = Toy().eval()
    analysis = analyze(model, SHAPE)
    x = torch.randn(3, *SHAPE)
    with torch.inference_mode():
        expected = model(x)
        single = [c for c in analysis.cuts if c.single_tensor]
        for start, end in zip(single, single[1:]):
            head, _ = split(analysis, start)
            _, tail = split(analysis, end)
            assert torch.equal(tail(segment(analysis, start, end)(head(x))), expected), (start.name, end.name)
        assert torch.equal(segment(analysis, "x", "pool")(x), split(analysis, "pool")[0](x))


def test_segment_runs_forward_only():
    analysis = analyze(Toy().eval(), SHAPE)
    with pytest.raises(ValueError, match="a segment runs forward: cut 'relu' does not come after 'pool'"):
        segment(analysis, "pool", "relu")
    with pytest.raises(ValueError, match="does not come after 'pool'"):
        segment(analysis, "pool", "pool")


def test_split_by_unknown_name_lists_the_cuts():
    with pytest.raises(CutNotFound, match=r"unknown cut 'nope'.*known: add, conv1, conv2, pool, relu, view, x"):
        split(analyze(Toy().eval(), SHAPE), "nope")


def test_check_exact_records_zero_at_every_natural_bottleneck():
    checked = check_exact(analyze(Toy().eval(), SHAPE))
    assert [(c.name, c.exact_max_abs_diff) for c in checked.cuts] == [
        ("x", None), ("conv1", 0.0), ("relu", 0.0), ("conv2", None), ("add", 0.0), ("pool", 0.0), ("view", 0.0)]
