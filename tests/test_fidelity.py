"""Fidelity of splits and offload on a toy model: exact rows are exact, bytes are the codec's, and the CLI
writes its JSON and plot or says in one line what is wrong."""

import json
import statistics

import numpy as np
import torch
import pytest
from PIL import Image
from test_cli import run

from edgesplit.analysis import analyze
from edgesplit.cli import cli
from edgesplit.codecs import jpeg_encode, split_codec
from edgesplit.fidelity import (DEFAULT_CODECS, INPUT, NATURAL_PHOTOS, PIXELS, TOP1, FidelityReport, PixelRow,
                                evaluation_images, measure, natural_photos, plot, table, wilson_interval)
from edgesplit.models import load_model
from edgesplit.runtime.device_engines import TorchEngine

SHAPE = (3, 8, 8)
CUTS = ("conv1", "pool")
CODECS = ("fp32", "fp16", "int8", "int8:zstd", "int4c")
QUALITIES = (50, 90)
RESULT_KEYS = {"cut", "codec", "bytes", "fp32_bytes", "agreement", "agreement_ci", "kl", "max_logit_diff",
               "encode_ms", "decode_ms"}


def _photos(count=3):
    rng = np.random.default_rng(1)
    return {f"photo{k}": rng.integers(0, 256, (3, 30 + 4 * k, 40), dtype=np.uint8) for k in range(count)}


@pytest.fixture(scope="module")
def engine():
    loaded = load_model("toy_models:toy")
    return TorchEngine(analyze(loaded.module, SHAPE), loaded.normalization)


@pytest.fixture(scope="module")
def images():
    return evaluation_images(_photos(), SHAPE, augment=7, seed=0)


@pytest.fixture(scope="module")
def report(engine, images):
    rows = measure(engine, images, cuts=CUTS, codecs=CODECS, jpeg_qualities=QUALITIES, batch_size=4,
                   head_flops={c.name: c.head_flops for c in engine.analysis.cuts})
    return FidelityReport("toy_models:toy", tuple(_photos()), 7, tuple(rows))


def test_json_has_exactly_the_documented_keys(report, engine):
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"model", "images", "augmented", "seed", "results"}
    assert data["images"] == ["photo0", "photo1", "photo2"] and data["augmented"] == 7
    assert [(r["cut"], r["codec"]) for r in data["results"]] == \
        [(cut, codec) for cut in CUTS for codec in CODECS] + [(INPUT, "raw"), (INPUT, "jpeg:50"), (INPUT, "jpeg:90")]
    flops = {c.name: c.head_flops / 1e6 for c in engine.analysis.cuts} | {INPUT: 0.0}
    for row in data["results"]:
        assert set(row) == RESULT_KEYS | {"exact", "head_mflops"}
        assert row["head_mflops"] == flops[row["cut"]]  # the device's compute beside its bytes and agreement
        low, high = row["agreement_ci"]
        assert 0 <= low <= row["agreement"] <= high <= 1


def test_exact_rows_agree_with_the_whole_model(report):
    for cut in CUTS:
        row = report.row(cut, "fp32")
        assert row.exact and row.agreement == 1.0 and len(row.agrees) == 10
        assert row.max_logit_diff < 1e-5 and row.kl < 1e-9
    raw = report.row(INPUT, "raw")
    assert raw.exact and raw.agreement == 1.0 and raw.max_logit_diff == 0.0 and raw.kl == 0.0
    assert report.row("conv1", "int8").max_logit_diff > 0  # lossy codecs do change the logits


def test_lossless_compression_changes_bytes_not_answers(report):
    plain, compressed = report.row("conv1", "int8"), report.row("conv1", "int8:zstd")
    assert (plain.agrees, plain.kl, plain.max_logit_diff) == (compressed.agrees, compressed.kl,
                                                              compressed.max_logit_diff)


def test_bytes_are_the_payload_bytes_the_codec_sends(report, engine, images):
    x = np.concatenate([engine.normalize(image.pixels) for image in images])
    for cut in CUTS:
        crossing = engine.head(cut, x)
        for name in CODECS:
            codec, row = split_codec(name), report.row(cut, name)
            sent = [codec.roundtrip(crossing[i:i + 1])[1] for i in range(len(images))]
            assert row.bytes == pytest.approx(statistics.fmean(sent)), (cut, name)
            assert row.fp32_bytes == split_codec("fp32").payload_bytes(crossing[:1].shape)
    assert report.row("conv1", "fp32").bytes == 4 * 4 * 4 * 4 and report.row("pool", "int8").bytes == 4
    assert report.row("conv1", "int4c").bytes == 8 * 4 + 64 // 2  # a low and a step per channel, two codes a byte


def test_offload_rows_send_the_image(report, images):
    raw = report.row(INPUT, "raw")
    assert raw.bytes == 192 and raw.fp32_bytes == 4 * 192
    for quality in QUALITIES:
        row = report.row(INPUT, f"jpeg:{quality}")
        assert not row.exact and row.fp32_bytes == 4 * 192
        assert row.bytes == pytest.approx(statistics.fmean(len(jpeg_encode(i.pixels, quality)) for i in images))


@pytest.mark.parametrize("successes,trials,expected", [
    (5, 10, (0.2366, 0.7634)),  # symmetric about 1/2
    (10, 10, (0.7225, 1.0)),  # all agree: the lower end is n / (n + z²), not 1
    (0, 10, (0.0, 0.2775)),
    (81, 100, (0.7222, 0.8749)),
])
def test_wilson_interval_on_known_values(successes, trials, expected):
    assert wilson_interval(successes, trials) == pytest.approx(expected, abs=1e-4)


def test_crops_are_seeded_labelled_and_input_sized():
    first, again = (evaluation_images(_photos(2), SHAPE, augment=4, seed=3) for _ in range(2))
    assert [i.label for i in first] == ["photo0", "photo1", "photo0/crop-0", "photo1/crop-1", "photo0/crop-2",
                                        "photo1/crop-3"]
    assert all(a.pixels.shape == SHAPE and a.pixels.dtype == np.uint8 and np.array_equal(a.pixels, b.pixels)
               for a, b in zip(first, again))
    other = evaluation_images(_photos(2), SHAPE, augment=4, seed=4)
    assert not all(np.array_equal(a.pixels, b.pixels) for a, b in zip(first[2:], other[2:]))


def test_the_default_photos_are_distinct_colour_photos():
    photos = natural_photos()
    assert list(photos) == list(NATURAL_PHOTOS)
    assert all(p.ndim == 3 and p.shape[0] == 3 and p.dtype == np.uint8 and min(p.shape[1:]) >= 300
               for p in photos.values())
    assert len({p.tobytes()[:100_000] for p in photos.values()}) == len(photos)


def test_plot_is_written(report, tmp_path):
    plot(report, tmp_path / "fidelity.png")
    assert (tmp_path / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def photo_folder(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, pixels in _photos(2).items():
        Image.fromarray(pixels.transpose(1, 2, 0)).save(folder / f"{name}.png")
    return folder


def test_cli_writes_json_and_plot(monkeypatch, capsys, tmp_path, photo_folder):
    out_dir = tmp_path / "out"
    code, out, err = run(monkeypatch, capsys, "fidelity", "toy_models:toy", "--input-shape", "3,8,8", "--images",
                         str(photo_folder), "--augment", "3", "--codecs", "fp32,int8", "--jpeg-qualities", "90",
                         "--out", str(out_dir))
    assert code == 0 and err == "", err
    data = json.loads((out_dir / "fidelity.json").read_text())
    assert data["images"] == ["photo0.png", "photo1.png"] and data["augmented"] == 3
    assert [(r["cut"], r["codec"]) for r in data["results"]] == [
        ("conv1", "fp32"), ("conv1", "int8"), ("pool", "fp32"), ("pool", "int8"), ("input", "raw"),
        ("input", "jpeg:90")]  # the record-low cuts by default
    assert all(r["agreement"] == 1.0 for r in data["results"] if r["codec"] in ("fp32", "raw"))
    assert (out_dir / "fidelity.png").read_bytes()[:4] == b"\x89PNG"
    assert "agreement" in out and "jpeg:90" in out


def test_cli_default_codecs_are_the_library_defaults():
    options = {p.name: p for p in cli.commands["fidelity"].params}
    assert options["codec_spec"].default == ",".join(DEFAULT_CODECS)


@pytest.mark.parametrize("args,message", [
    (["--codecs", "fp32,int9"], "edgesplit: error: unknown codec 'int9'"),
    (["--codecs", "int8:gzip"], "edgesplit: error: codec 'int8:gzip': the argument names a lossless compression"),
    (["--jpeg-qualities", "90,101"], "edgesplit: error: input codec 'jpeg:101': write jpeg:Q with a quality Q"),
    (["--cuts", "conv9"], "edgesplit: error: unknown cut 'conv9'"),
])
def test_cli_errors_are_one_line(monkeypatch, capsys, tmp_path, photo_folder, args, message):
    code, out, err = run(monkeypatch, capsys, "fidelity", "toy_models:toy", "--input-shape", "3,8,8", "--images",
                         str(photo_folder), "--out", str(tmp_path / "out"), *args)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_cli_refuses_a_folder_without_images(monkeypatch, capsys, tmp_path, make):
    folder = tmp_path / "photos"
    if make == "empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("not a photo")
    code, _, err = run(monkeypatch, capsys, "fidelity", "toy_models:toy", "--input-shape", "3,8,8", "--images",
                       str(folder), "--out", str(tmp_path / "out"))
    expected = f"no images (.bmp, .jpeg, .jpg, .png) in {folder}" if make == "empty" else f"--images {folder}: not a folder"
    assert code == 2 and err.startswith(f"edgesplit: error: {expected}") and err.count("\n") == 1, err


def test_classifier_rows_carry_top1(report):
    assert report.metric == TOP1
    assert "agreement %" in table(report).columns[5].header


def test_several_crossing_tensors_are_each_sent_with_the_codec(engine, images):
    rows = measure(engine, images, cuts=("conv2",), codecs=("fp32", "int8", "int8:zstd"), jpeg_qualities=(),
                   batch_size=4)
    fp32, int8, compressed = rows[:3]
    assert fp32.exact and fp32.agreement == 1.0 and fp32.max_logit_diff < 1e-5
    assert fp32.fp32_bytes == fp32.bytes == 4 * (64 + 64)  # conv2's output and the residual y, both 4x4x4
    assert int8.bytes == 64 + 64 and int8.max_logit_diff > 0
    assert (int8.agrees, int8.kl) == (compressed.agrees, compressed.kl)


def test_cli_measures_a_cut_where_several_tensors_cross(monkeypatch, capsys, tmp_path, photo_folder):
    code, _, err = run(monkeypatch, capsys, "fidelity", "toy_models:toy", "--input-shape", "3,8,8", "--images",
                       str(photo_folder), "--cuts", "conv2", "--codecs", "fp32", "--jpeg-qualities", "",
                       "--out", str(tmp_path / "out"))
    assert code == 0 and err == "", err
    data = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    assert [(r["cut"], r["agreement"], r["fp32_bytes"]) for r in data["results"]] == [("conv2", 1.0, 512),
                                                                                       ("input", 1.0, 768)]


def test_cli_refuses_answers_it_cannot_compare(monkeypatch, capsys, tmp_path, photo_folder):
    code, _, err = run(monkeypatch, capsys, "fidelity", "toy_models:tiny_yolo", "--input-shape", "3,32,32",
                       "--images", str(photo_folder), "--codecs", "fp32", "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("edgesplit: error: fidelity compares a classifier's logits (batch, classes) or a "
                          "segmentation model's {'out': (batch, classes, H, W)}; this model answers "
                          "[(2, 27, 4, 4), (2, 27, 2, 2), (2, 27, 1, 1)]")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------
# Segmentation: the class of every pixel against the fp32 model's

SEG_SHAPE = (3, 64, 64)
SEG_CUTS = ("backbone_4_block_1_0", "add_10")
SEG_CODECS = ("fp32", "fp16", "int8", "int8:zstd", "int4c")
PIXEL_KEYS = {"cut", "codec", "bytes", "fp32_bytes", "pixel_agreement", "min_pixel_agreement", "miou", "encode_ms",
              "decode_ms", "exact", "head_mflops"}


@pytest.fixture(scope="module")
def seg_engine():
    """LRASPP with random weights, its two classifiers' biases zeroed: random weights alone answer one class
    at every pixel, which any codec keeps."""
    loaded = load_model("lraspp_mobilenet_v3_large")
    for classifier in (loaded.module.classifier.low_classifier, loaded.module.classifier.high_classifier):
        torch.nn.init.zeros_(classifier.bias)
    return TorchEngine(analyze(loaded.module, SEG_SHAPE), loaded.normalization)


@pytest.fixture(scope="module")
def seg_images():
    return evaluation_images(_photos(2), SEG_SHAPE, augment=2, seed=0)


@pytest.fixture(scope="module")
def seg_report(seg_engine, seg_images):
    rows = measure(seg_engine, seg_images, cuts=SEG_CUTS, codecs=SEG_CODECS, jpeg_qualities=(90,), batch_size=4,
                   head_flops={c.name: c.head_flops for c in seg_engine.analysis.cuts})
    return FidelityReport("lraspp_mobilenet_v3_large", tuple(_photos(2)), 2, tuple(rows))


def test_segmentation_masks_follow_the_image(seg_engine, seg_images):
    x = np.concatenate([seg_engine.normalize(image.pixels) for image in seg_images])
    assert all(len(np.unique(masks.argmax(axis=0))) > 1 for masks in seg_engine.local(x)["out"])


def test_segmentation_rows_compare_pixels(seg_report):
    assert seg_report.metric == PIXELS and all(isinstance(row, PixelRow) for row in seg_report.rows)
    for row in [seg_report.row(cut, "fp32") for cut in SEG_CUTS] + [seg_report.row(INPUT, "raw")]:
        assert row.exact and (row.pixel_agreement, row.min_pixel_agreement, row.miou) == (1.0, 1.0, 1.0)
        assert row.agreements == (1.0,) * 4
    for row in seg_report.rows:
        assert 0 <= row.min_pixel_agreement <= row.pixel_agreement <= 1 and 0 <= row.miou <= 1
        assert row.min_pixel_agreement == min(row.agreements)
    for cut in SEG_CUTS:
        plain, compressed = seg_report.row(cut, "int8"), seg_report.row(cut, "int8:zstd")
        assert (plain.agreements, plain.miou) == (compressed.agreements, compressed.miou)
        assert seg_report.row(cut, "fp32").bytes == seg_report.row(cut, "fp32").fp32_bytes
        assert seg_report.row(cut, "int4c").bytes < seg_report.row(cut, "int8").bytes


def test_segmentation_json_table_and_plot_name_their_metric(seg_report, tmp_path):
    data = json.loads(json.dumps(seg_report.to_dict()))
    assert [(r["cut"], r["codec"]) for r in data["results"]] == \
        [(cut, codec) for cut in SEG_CUTS for codec in SEG_CODECS] + [(INPUT, "raw"), (INPUT, "jpeg:90")]
    assert all(set(row) == PIXEL_KEYS for row in data["results"])
    headers = [column.header for column in table(seg_report).columns]
    assert headers[5:8] == ["pixel agreement %", "least %", "mIoU %"] and "KL" not in headers
    plot(seg_report, tmp_path / "fidelity.png")
    assert (tmp_path / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
