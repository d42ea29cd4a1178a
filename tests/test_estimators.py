"""Throughput estimators: hand-computed predictions, MAPE, windows, reset and spec parsing."""

import math

import numpy as np
import pytest

from edgesplit.errors import EdgesplitError
from edgesplit.estimators import (
    ESTIMATORS,
    Estimator,
    Ewma,
    HarmonicMean,
    LastSample,
    RobustHarmonicMean,
    make_estimator,
)

MBPS = 1e6


def _feed(estimator: Estimator, rates_mbps: list[float]) -> Estimator:
    for rate in rates_mbps:
        estimator.update(rate * MBPS)
    return estimator


def _predict_mbps(estimator: Estimator) -> float:
    prediction = estimator.predict()
    assert prediction is not None
    return prediction / MBPS


@pytest.mark.parametrize("spec", ["last", "ewma", "harmonic", "robust"])
def test_no_prediction_and_no_mape_before_the_first_sample(spec):
    estimator = make_estimator(spec)
    assert estimator.predict() is None and estimator.mape() is None
    estimator.update(3 * MBPS)
    assert estimator.predict() == 3 * MBPS  # every estimator starts from the first sample
    assert estimator.mape() is None  # nothing was predicted before it


def test_last_predicts_the_last_sample_and_scores_each_prediction():
    estimator = _feed(LastSample(), [10, 20, 5])
    assert _predict_mbps(estimator) == 5
    assert estimator.mape() == pytest.approx((10 / 20 + 15 / 5) / 2 * 100)  # 175 %


def test_ewma_starts_at_the_first_sample_then_blends():
    estimator = Ewma(0.5)
    estimator.update(4 * MBPS)
    assert _predict_mbps(estimator) == 4
    estimator.update(2 * MBPS)
    assert _predict_mbps(estimator) == 3  # 0.5*2 + 0.5*4
    estimator.update(8 * MBPS)
    assert _predict_mbps(estimator) == 5.5  # 0.5*8 + 0.5*3
    assert estimator.mape() == 81.25  # (|4-2|/2 + |3-8|/8) / 2 = (1 + 0.625) / 2


def test_ewma_default_alpha():
    estimator = _feed(Ewma(), [10, 20])
    assert estimator.alpha == 0.3
    assert _predict_mbps(estimator) == pytest.approx(0.3 * 20 + 0.7 * 10)  # 13


def test_harmonic_mean_of_one_two_four():
    estimator = _feed(HarmonicMean(), [1, 2, 4])
    assert _predict_mbps(estimator) == pytest.approx(3 / (1 + 1 / 2 + 1 / 4))  # 1.714285...
    assert _predict_mbps(estimator) == pytest.approx(1.7142857142857142)


def test_harmonic_uses_only_the_last_n_samples():
    estimator = _feed(HarmonicMean(2), [1, 2, 4])
    assert _predict_mbps(estimator) == pytest.approx(2 / (1 / 2 + 1 / 4))  # 8/3: the 1 Mbit/s fell out
    _feed(estimator, [100, 100])
    assert _predict_mbps(estimator) == pytest.approx(100)


def test_harmonic_mape():
    estimator = _feed(HarmonicMean(), [1, 2, 4])
    # predictions 1 (vs 2) and 4/3 (vs 4): errors 1/2 and 2/3
    assert estimator.mape() == pytest.approx((1 / 2 + 2 / 3) / 2 * 100)


def test_robust_divides_by_one_plus_the_largest_recent_harmonic_error():
    estimator = RobustHarmonicMean(2)
    estimator.update(4 * MBPS)
    assert _predict_mbps(estimator) == 4  # no error yet
    estimator.update(2 * MBPS)  # harmonic predicted 4: error |4-2|/2 = 1
    assert _predict_mbps(estimator) == pytest.approx((8 / 3) / (1 + 1))
    estimator.update(4 * MBPS)  # harmonic predicted 8/3: error 1/3; errors [1, 1/3]
    assert _predict_mbps(estimator) == pytest.approx((8 / 3) / (1 + 1))
    estimator.update(4 * MBPS)  # error 1/3 again; the error 1 left the window of 2
    assert _predict_mbps(estimator) == pytest.approx(4 / (1 + 1 / 3))  # 3
    # its own (robust) predictions were 4, 4/3, 4/3 against 2, 4, 4
    assert estimator.mape() == pytest.approx((1 + 2 / 3 + 2 / 3) / 3 * 100)


def _pensieve_robust_mpc(rates: list[float]) -> list[float]:
    """Pensieve's RobustMPC throughput prediction (rl_server/mpc_server.py), loop transcribed as is."""
    past_bandwidth_ests: list[float] = []
    past_errors: list[float] = []
    history: list[float] = []
    predictions = []
    for rate in rates:
        history.append(rate)
        curr_error = 0.0
        if len(past_bandwidth_ests) > 0:
            curr_error = abs(past_bandwidth_ests[-1] - history[-1]) / float(history[-1])
        past_errors.append(curr_error)
        past_bandwidths = history[-5:]
        harmonic_bandwidth = 1.0 / (sum(1 / float(v) for v in past_bandwidths) / len(past_bandwidths))
        error_pos = -5 if len(past_errors) >= 5 else -len(past_errors)
        max_error = float(max(past_errors[error_pos:]))
        predictions.append(harmonic_bandwidth / (1 + max_error))
        past_bandwidth_ests.append(harmonic_bandwidth)
    return predictions


def test_robust_matches_pensieves_robust_mpc():
    rates = [3.1, 0.4, 2.2, 5.0, 4.8, 0.9, 1.7, 6.3, 6.1, 6.0, 5.9, 2.5, 0.7, 3.3]
    estimator = RobustHarmonicMean()
    ours = []
    for rate in rates:
        estimator.update(rate)
        ours.append(estimator.predict())
    assert ours == pytest.approx(_pensieve_robust_mpc(rates), rel=1e-12)


@pytest.mark.parametrize("spec", ["last", "ewma:0.5", "harmonic:3", "robust:3"])
def test_reset_forgets_samples_and_errors(spec):
    estimator = _feed(make_estimator(spec), [1, 8, 2, 9])
    estimator.reset()
    assert estimator.predict() is None and estimator.mape() is None
    _feed(estimator, [6])
    assert _predict_mbps(estimator) == 6  # no stale samples nor (robust) stale errors
    assert estimator.mape() is None


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("spec", ["last", "ewma", "harmonic", "robust"])
def test_update_rejects_non_positive_or_non_finite_rates(spec, bad):
    estimator = _feed(make_estimator(spec), [2])
    with pytest.raises(ValueError, match=r"must be finite and > 0 bits/s, got .*leave failed or empty"):
        estimator.update(bad)
    assert _predict_mbps(estimator) == 2 and estimator.mape() is None  # the bad sample left no trace


def test_numpy_numbers_are_accepted():
    estimator = HarmonicMean(np.int64(3))
    assert estimator.name == "harmonic:3"
    estimator.update(np.float64(2e6))
    assert estimator.predict() == 2e6
    assert Ewma(np.float64(0.25)).name == "ewma:0.25"


def test_registry_names():
    assert ESTIMATORS.names() == ["ewma", "harmonic", "last", "robust"]


@pytest.mark.parametrize(
    ("spec", "cls", "name"),
    [
        ("last", LastSample, "last"),
        ("ewma", Ewma, "ewma:0.3"),
        ("ewma:0.5", Ewma, "ewma:0.5"),
        ("ewma:1", Ewma, "ewma:1.0"),
        ("harmonic", HarmonicMean, "harmonic:5"),
        ("harmonic:3", HarmonicMean, "harmonic:3"),
        ("robust", RobustHarmonicMean, "robust:5"),
        ("robust:8", RobustHarmonicMean, "robust:8"),
    ],
)
def test_make_estimator_parses_specs_and_defaults(spec, cls, name):
    estimator = make_estimator(spec)
    assert type(estimator) is cls
    assert estimator.name == name
    assert make_estimator(estimator.name).name == name  # the canonical name is itself a spec
    assert repr(estimator) == f"<{cls.__name__} {name}>"


def test_spec_parameters_reach_the_estimator():
    assert make_estimator("ewma:0.7").alpha == 0.7
    assert make_estimator("harmonic:2").window == 2
    assert make_estimator("robust:9").window == 9


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ewma:0", r"'ewma:0': ewma alpha must be a number in \(0, 1\], got 0; a larger alpha"),
        ("ewma:1.5", r"ewma alpha must be a number in \(0, 1\], got 1\.5"),
        ("ewma:-0.2", r"ewma alpha must be a number in \(0, 1\], got -0\.2"),
        ("ewma:nan", r"ewma alpha must be a number in \(0, 1\], got nan"),
        ("ewma:fast", r"estimator spec 'ewma:fast': parameter 'fast' is not a number; write 'ewma:ALPHA'"),
        ("ewma:", r"parameter '' is not a number; write 'ewma:ALPHA'"),
        ("ewma:0.3:1", r"estimator spec 'ewma:0\.3:1' has too many ':' parts; write 'ewma:ALPHA'"),
        ("last:3", r"estimator spec 'last:3' has too many ':' parts; write 'last'"),
        ("harmonic:0", r"'harmonic:0': harmonic window must be a positive integer, got 0;.*'harmonic:5'"),
        ("harmonic:-3", r"harmonic window must be a positive integer, got -3"),
        ("harmonic:2.5", r"harmonic window must be a positive integer, got 2\.5"),
        ("robust:0", r"'robust:0': robust window must be a positive integer, got 0;.*'robust:5'"),
        ("robust:x", r"parameter 'x' is not a number; write 'robust:WINDOW'"),
        ("robust:5:5", r"too many ':' parts; write 'robust:WINDOW'"),
    ],
)
def test_bad_parameters_are_explained(spec, message):
    with pytest.raises(EdgesplitError, match=message):
        make_estimator(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ewm", r"unknown estimator 'ewm'; did you mean 'ewma'\? \(known: ewma, harmonic, last, robust\)"),
        ("Robust:5", r"unknown estimator 'Robust'; did you mean 'robust'\?"),
        ("", r"unknown estimator ''.*\(known: ewma, harmonic, last, robust\)"),
    ],
)
def test_unknown_names_get_the_registry_message(spec, message):
    with pytest.raises(EdgesplitError, match=message):
        make_estimator(spec)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Ewma(True), r"ewma alpha must be a number in \(0, 1\], got True"),
        (lambda: Ewma("0.3"), r"ewma alpha must be a number in \(0, 1\], got '0\.3'"),
        (lambda: HarmonicMean(5.0), r"harmonic window must be a positive integer, got 5\.0"),
        (lambda: RobustHarmonicMean(False), r"robust window must be a positive integer, got False"),
    ],
)
def test_constructors_check_their_parameters(make, message):
    with pytest.raises(EdgesplitError, match=message):
        make()


def test_recent_keeps_the_last_five_samples_for_every_estimator():
    for spec in ("last", "ewma", "harmonic:2", "robust"):
        estimator = make_estimator(spec)
        assert estimator.recent() == ()
        for rate in range(1, 8):
            estimator.update(float(rate))
        assert estimator.recent() == (3.0, 4.0, 5.0, 6.0, 7.0)
        estimator.reset()
        assert estimator.recent() == ()
