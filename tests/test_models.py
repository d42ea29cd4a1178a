"""Model sources, weights files and input shapes, including every way to get them wrong."""

import pickle

import pytest
import torch

from edgesplit.errors import EdgesplitError, InputShapeError, ModelNotFound, WeightsError
from edgesplit.models import load_model, parse_input_shape


def test_torchvision_model_with_native_resolution_and_seeded_weights():
    a, b = load_model("efficientnet_b3"), load_model("efficientnet_b3")
    assert a.native_input_shape == (3, 300, 300)
    assert a.weights == "random weights (seed 0)" and not a.module.training
    assert all(torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))


def test_seeded_construction_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("resnet18")
    assert torch.equal(torch.rand(3), expected)


def test_timm_model_reports_its_native_input():
    loaded = load_model("timm:vit_small_patch16_224")
    assert loaded.native_input_shape == (3, 224, 224)


def test_user_factory(tmp_path):
    loaded = load_model("toy_models:toy")
    assert type(loaded.module).__name__ == "Toy" and loaded.native_input_shape == (3, 224, 224)


@pytest.mark.parametrize("spec,message", [
    ("efficientnet_b9", r"^unknown model 'efficientnet_b9'; did you mean 'efficientnet_b7' or 'efficientnet_b6' or "
                        r"'efficientnet_b5'\? \(87 known\); list them with edgesplit models; other sources"),
    ("resnet_18", r"unknown model 'resnet_18'; did you mean 'resnet18'"),
    ("timm:resnet_500", r"unknown timm model 'resnet_500'; did you mean"),
    ("no_such_package.sub:make", r"cannot import 'no_such_package.sub' for model 'no_such_package.sub:make'"),
    ("toy_models:missing", r"module 'toy_models' has no factory 'missing'"),
    ("toy_models:not_a_module", r"toy_models:not_a_module returned str, not a torch.nn.Module"),
    ("toy models:toy", r"malformed model 'toy models:toy': expected package.module:factory"),
])
def test_unknown_or_broken_model_names(spec, message):
    with pytest.raises(ModelNotFound, match=message):
        load_model(spec)


def test_weights_roundtrip(tmp_path):
    source = load_model("toy_models:toy").module
    with torch.no_grad():
        source.fc.bias.fill_(7.0)
    path = tmp_path / "toy.pt"
    torch.save(source.state_dict(), path)
    loaded = load_model("toy_models:toy", weights=path)
    assert torch.equal(loaded.module.fc.bias, torch.full((5,), 7.0))
    assert loaded.weights == f"weights from {path}"
    torch.save({"state_dict": source.state_dict()}, path)  # the common checkpoint wrapper
    assert torch.equal(load_model("toy_models:toy", weights=path).module.fc.bias, torch.full((5,), 7.0))


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    state = load_model("toy_models:toy").module.state_dict()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(2, 3, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as info:
        load_model("toy_models:toy", weights=path)
    assert str(info.value) == (
        f"weights in {path} do not fit the model: missing keys: fc.bias; unexpected keys: extra.weight; "
        "shape mismatch for 1 key(s), e.g. conv1.weight: file (2, 3, 3, 3), model (4, 3, 3, 3)")


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_weights_files_that_are_not_weights(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(WeightsError, match=r"notes.txt is not a PyTorch weights file"):
        load_model("toy_models:toy", weights=text)
    code = tmp_path / "evil.pt"
    code.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(WeightsError, match=r"evil.pt is not a PyTorch weights file"):
        load_model("toy_models:toy", weights=code)  # weights_only=True refuses to run code
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(WeightsError, match=r"tensor.pt does not hold a state_dict"):
        load_model("toy_models:toy", weights=tensor)
    with pytest.raises(WeightsError, match=r"cannot read weights file .*missing.pt: no such file"):
        load_model("toy_models:toy", weights=tmp_path / "missing.pt")


def test_input_shapes():
    native = (3, 224, 224)
    assert parse_input_shape(None, None, native) == native
    assert parse_input_shape("3,128,96", None, native) == (3, 128, 96)
    assert parse_input_shape(None, 160, native) == (3, 160, 160)
    for bad in ["3,224", "3,,224", "a,b,c", "3,0,224", "-3,224,224", ""]:
        if bad == "3,224":
            assert parse_input_shape(bad, None, native) == (3, 224)  # rank is the model's business
            continue
        with pytest.raises(InputShapeError, match="malformed input shape"):
            parse_input_shape(bad, None, native)
    with pytest.raises(InputShapeError, match="--input-size must be a positive integer, got 0"):
        parse_input_shape(None, 0, native)
    with pytest.raises(InputShapeError, match="either --input-shape or --input-size, not both"):
        parse_input_shape("3,8,8", 8, native)


def test_errors_share_one_base():
    assert issubclass(ModelNotFound, EdgesplitError) and issubclass(WeightsError, EdgesplitError)
