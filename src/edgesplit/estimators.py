"""Uplink throughput estimators: predict the next transfer's throughput from completed ones.

The same estimators serve the trace-driven simulator and the live device client, so they hold no
clock, do no I/O and draw no random numbers: the caller measures each completed transfer and feeds
its goodput in bits/s::

    estimator = make_estimator("robust:5")
    for rate_bps in measured:
        expected = estimator.predict()   # None before the first sample
        estimator.update(rate_bps)       # also scores ``expected`` against ``rate_bps``
    estimator.mape()                     # mean absolute percentage error of those predictions

Specs are ``name`` or ``name:parameter``::

    last          the last sample
    ewma:ALPHA    exponentially weighted moving average, ALPHA in (0, 1] (default 0.3)
    harmonic:N    harmonic mean of the last N samples (default 5), as in FESTIVE and MPC
    robust:N      RobustMPC: that harmonic mean / (1 + the largest relative error of its last N
                  predictions) (default 5), as in Yin et al., SIGCOMM 2015, and Pensieve's code
"""

from __future__ import annotations

import inspect
import math
import numbers
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

from edgesplit.errors import EdgesplitError
from edgesplit.registry import Registry

RECENT_SAMPLES = 5  # how many past samples Estimator.recent() keeps (the harmonic mean's default window)


class Estimator(ABC):
    """Predicts the next transfer's throughput (bits/s) from the throughputs of completed transfers."""

    name: str

    def __init__(self) -> None:
        self.reset()

    def update(self, rate_bps: float) -> None:
        """Add one completed transfer's goodput and score the prediction made just before it."""
        if not (math.isfinite(rate_bps) and rate_bps > 0):
            raise ValueError(
                f"throughput sample must be finite and > 0 bits/s, got {rate_bps!r}; "
                "leave failed or empty transfers out instead of feeding them"
            )
        rate = float(rate_bps)
        predicted = self.predict()
        if predicted is not None:
            self._error_sum += abs(predicted - rate) / rate
            self._scored += 1
        self._recent.append(rate)
        self._observe(rate)

    @abstractmethod
    def predict(self) -> float | None:
        """The predicted throughput of the next transfer in bits/s, or None before the first sample."""

    def recent(self) -> tuple[float, ...]:
        """The last samples, oldest first (at most ``RECENT_SAMPLES``): a spread of what the link may do next."""
        return tuple(self._recent)

    def mape(self) -> float | None:
        """Mean absolute percentage error (e.g. 12.5) of the scored predictions, None before the first."""
        return None if self._scored == 0 else 100.0 * self._error_sum / self._scored

    def reset(self) -> None:
        """Forget all samples and all scored predictions."""
        self._error_sum = 0.0
        self._scored = 0
        self._recent: deque[float] = deque(maxlen=RECENT_SAMPLES)

    @abstractmethod
    def _observe(self, rate_bps: float) -> None:
        """Fold a validated sample into the estimator's state."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


ESTIMATORS: Registry[Callable[..., Estimator]] = Registry("estimator")


@ESTIMATORS.register("last")
class LastSample(Estimator):
    """Predicts that the next transfer runs at the last one's throughput."""

    name = "last"

    def predict(self) -> float | None:
        return self._last

    def reset(self) -> None:
        super().reset()
        self._last: float | None = None

    def _observe(self, rate_bps: float) -> None:
        self._last = rate_bps


@ESTIMATORS.register("ewma")
class Ewma(Estimator):
    """Exponentially weighted moving average: e <- alpha * sample + (1 - alpha) * e."""

    def __init__(self, alpha: float = 0.3) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha <= 1:
            raise EdgesplitError(
                f"ewma alpha must be a number in (0, 1], got {alpha!r}; "
                "a larger alpha follows changes faster (default 0.3)"
            )
        self.alpha = float(alpha)
        self.name = f"ewma:{self.alpha!r}"
        super().__init__()

    def predict(self) -> float | None:
        return self._estimate

    def reset(self) -> None:
        super().reset()
        self._estimate: float | None = None

    def _observe(self, rate_bps: float) -> None:
        if self._estimate is None:
            self._estimate = rate_bps
        else:
            self._estimate = self.alpha * rate_bps + (1 - self.alpha) * self._estimate


@ESTIMATORS.register("harmonic")
class HarmonicMean(Estimator):
    """Harmonic mean of the last ``window`` samples (FESTIVE, MPC)."""

    spec_name = "harmonic"

    def __init__(self, window: int = 5) -> None:
        if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
            raise EdgesplitError(
                f"{self.spec_name} window must be a positive integer, got {window!r}; "
                f"it counts the past transfers averaged (default 5, as in '{self.spec_name}:5')"
            )
        self.window = int(window)
        self.name = f"{self.spec_name}:{self.window}"
        super().__init__()

    def predict(self) -> float | None:
        if not self._samples:
            return None
        return len(self._samples) / sum(1.0 / rate for rate in self._samples)

    def reset(self) -> None:
        super().reset()
        self._samples: deque[float] = deque(maxlen=self.window)

    def _observe(self, rate_bps: float) -> None:
        self._samples.append(rate_bps)


@ESTIMATORS.register("robust")
class RobustHarmonicMean(HarmonicMean):
    """RobustMPC: the harmonic mean divided by 1 + the largest relative error of its last ``window``
    predictions, where the error of a harmonic-mean prediction is |prediction - actual| / actual."""

    spec_name = "robust"

    def predict(self) -> float | None:
        harmonic = super().predict()
        if harmonic is None:
            return None
        return harmonic / (1.0 + max(self._errors, default=0.0))

    def reset(self) -> None:
        super().reset()
        self._errors: deque[float] = deque(maxlen=self.window)

    def _observe(self, rate_bps: float) -> None:
        harmonic = super().predict()
        if harmonic is not None:
            self._errors.append(abs(harmonic - rate_bps) / rate_bps)
        super()._observe(rate_bps)


def make_estimator(spec: str) -> Estimator:
    """The estimator for ``spec``: ``last``, ``ewma[:ALPHA]``, ``harmonic[:N]`` or ``robust[:N]``."""
    name, *texts = spec.split(":")
    factory = ESTIMATORS.get(name)
    params = list(inspect.signature(factory).parameters)
    usage = ":".join([name, *(param.upper() for param in params)])
    if len(texts) > len(params):
        raise EdgesplitError(f"estimator spec {spec!r} has too many ':' parts; write {usage!r}")
    values: list[float] = []
    for text in texts:
        try:
            values.append(int(text))
        except ValueError:
            try:
                values.append(float(text))
            except ValueError:
                raise EdgesplitError(
                    f"estimator spec {spec!r}: parameter {text!r} is not a number; write {usage!r}"
                ) from None
    try:
        return factory(*values)
    except EdgesplitError as exc:
        raise EdgesplitError(f"estimator spec {spec!r}: {exc}") from None
