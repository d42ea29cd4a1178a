"""Network-rate and server-load traces for the trace-driven simulator.

A :class:`RateTrace` is a piecewise-constant link rate that repeats forever; it answers how long a
transfer takes when the rate changes under it (``transfer_time``) and how much a link delivers in a
window (``delivered_bits``), exactly and in O(log n + segments crossed). A :class:`LoadTrace` is the
same kind of step function for server load (concurrent clients, batch size).

``read_trace`` detects the file format from its first non-blank line::

    mahimahi    one integer per line: a ms timestamp at which one 1500-byte packet can cross the
                link (repeated when several fit in one ms); binned into ``window_s`` windows. Rates are
                goodput, as everywhere in edgesplit: each packet carries 1448 bytes of TCP payload (20 B
                IP and 32 B TCP header with timestamps)
    two-column  ``time_s  Mbit/s`` per line, whitespace-separated (the Norway HSDPA traces)
    CSV         the header ``time_s,mbps``, then ``time_s,mbps`` rows

``read_load_trace`` reads the two-column format or CSV with the header ``time_s,value``. In both
column formats each sample holds until the next one, the last for the median sample spacing, and
times are re-based so that the first sample is at 0. Every problem with a file raises
:class:`~edgesplit.errors.TraceFileError` naming the file and, for a bad line, its number.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import numpy as np

from edgesplit.errors import TraceFileError

SEGMENT_BYTES = 1448  # TCP payload of one 1500-byte packet (20 B IP, 32 B TCP header with timestamps)
_RATE_HEADER = re.compile(r"time_s\s*,\s*mbps")
_LOAD_HEADER = re.compile(r"time_s\s*,\s*value")
_FORMATS = "a mahimahi timestamp (one integer, ms), two numbers (time_s Mbit/s) or the CSV header time_s,mbps"


@dataclass(frozen=True)
class RateTrace:
    """Piecewise-constant link rate in bits/s; segment i holds on [times_s[i], times_s[i+1]), the last
    one until duration_s; the trace repeats after duration_s."""

    name: str
    times_s: tuple[float, ...]
    rates_bps: tuple[float, ...]
    duration_s: float
    _cum_bits: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        times, rates, duration = _check_steps("RateTrace", self.name, self.times_s, self.rates_bps, self.duration_s)
        if not any(rates):
            raise ValueError(
                f"RateTrace {self.name!r}: every rate is 0, so the link never delivers anything; "
                "give at least one segment a positive rate"
            )
        object.__setattr__(self, "times_s", times)
        object.__setattr__(self, "rates_bps", rates)
        object.__setattr__(self, "duration_s", duration)
        ends = times[1:] + (duration,)
        bits = (rate * (end - start) for start, end, rate in zip(times, ends, rates))
        object.__setattr__(self, "_cum_bits", tuple(accumulate(bits, initial=0.0)))

    def rate_at(self, t_s: float) -> float:
        """The rate in bits/s at time ``t_s`` (taken modulo the duration)."""
        return self.rates_bps[self._locate(t_s)[2]]

    def mean_bps(self) -> float:
        """Time-weighted mean rate over one period, in bits/s."""
        return self._cum_bits[-1] / self.duration_s

    def transfer_time(self, start_s: float, n_bytes: int) -> float:
        """Seconds needed to deliver ``n_bytes`` starting at ``start_s``, following every rate change,
        outage and wrap-around on the way; whole periods are skipped arithmetically."""
        if n_bytes < 0:
            raise ValueError(f"n_bytes must be >= 0, got {n_bytes!r}")
        if n_bytes == 0:
            return 0.0
        _, offset, i = self._locate(start_s)
        # Bits the link must have delivered, counted from the start of start_s's period, when the last
        # bit arrives; split into whole periods and the rest in (0, period], where the curve reaches it.
        target = self._cum_bits[i] + self.rates_bps[i] * (offset - self.times_s[i]) + 8 * n_bytes
        periods, rest = divmod(target, self._cum_bits[-1])
        if rest == 0.0:
            periods, rest = periods - 1, self._cum_bits[-1]
        j = bisect_left(self._cum_bits, rest) - 1  # cum[j] < rest <= cum[j + 1], so rates_bps[j] > 0
        end = periods * self.duration_s + self.times_s[j] + (rest - self._cum_bits[j]) / self.rates_bps[j]
        return end - offset

    def delivered_bits(self, start_s: float, end_s: float) -> float:
        """Bits the link delivers between ``start_s`` and ``end_s`` (the integral of the rate)."""
        if not end_s >= start_s:
            raise ValueError(f"end_s must be >= start_s, got start_s={start_s!r}, end_s={end_s!r}")
        return self._bits_before(end_s) - self._bits_before(start_s)

    def segment(self, start_s: float, duration_s: float) -> RateTrace:
        """The window [start_s, start_s + duration_s) as a trace of its own starting at 0; the window
        may wrap around the end of this trace, any number of times."""
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"segment duration_s must be finite and > 0, got {duration_s!r}")
        _, offset, i = self._locate(start_s)
        times, rates = [0.0], [self.rates_bps[i]]
        base = -offset  # where the current period starts, relative to the window
        while True:
            i += 1
            if i == len(self.times_s):
                i, base = 0, base + self.duration_s
            t = base + self.times_s[i]
            if t >= duration_s:
                break
            times.append(t)
            rates.append(self.rates_bps[i])
        return RateTrace(f"{self.name}[{start_s:g}s+{duration_s:g}s]", tuple(times), tuple(rates), duration_s)

    def scaled(self, factor: float) -> RateTrace:
        """The same trace with every rate multiplied by ``factor`` (> 0)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"scale factor must be finite and > 0, got {factor!r}")
        rates = tuple(rate * factor for rate in self.rates_bps)
        return RateTrace(f"{self.name}*{factor:g}", self.times_s, rates, self.duration_s)

    @classmethod
    def constant(cls, rate_bps: float, duration_s: float = 1.0, name: str = "constant") -> RateTrace:
        """A link that always runs at ``rate_bps``."""
        return cls(name, (0.0,), (rate_bps,), duration_s)

    def to_dict(self) -> dict[str, object]:
        """A summary: ``{"name", "duration_s", "mean_mbps"}``."""
        return {"name": self.name, "duration_s": self.duration_s, "mean_mbps": self.mean_bps() / 1e6}

    def _locate(self, t_s: float) -> tuple[float, float, int]:
        """(whole periods before ``t_s``, its offset in its period, the index of its segment)."""
        if not math.isfinite(t_s):
            raise ValueError(f"time must be finite, got {t_s!r}")
        periods, offset = divmod(t_s, self.duration_s)
        if offset >= self.duration_s:  # divmod can round a tiny negative offset up to the period
            periods, offset = periods + 1, 0.0
        return periods, offset, bisect_right(self.times_s, offset) - 1

    def _bits_before(self, t_s: float) -> float:
        """Bits delivered between time 0 and ``t_s``, whole periods included."""
        periods, offset, i = self._locate(t_s)
        within = self._cum_bits[i] + self.rates_bps[i] * (offset - self.times_s[i])
        return periods * self._cum_bits[-1] + within


@dataclass(frozen=True)
class LoadTrace:
    """Server load over time (e.g. concurrent clients or batch size): step function, value i holds
    from times_s[i]; repeats after duration_s."""

    name: str
    times_s: tuple[float, ...]
    values: tuple[float, ...]
    duration_s: float

    def __post_init__(self) -> None:
        times, values, duration = _check_steps("LoadTrace", self.name, self.times_s, self.values, self.duration_s)
        object.__setattr__(self, "times_s", times)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "duration_s", duration)

    def at(self, t_s: float) -> float:
        """The load at time ``t_s`` (taken modulo the duration)."""
        if not math.isfinite(t_s):
            raise ValueError(f"time must be finite, got {t_s!r}")
        return self.values[bisect_right(self.times_s, t_s % self.duration_s) - 1]

    @classmethod
    def constant(cls, value: float, name: str = "constant") -> LoadTrace:
        """A load that never changes."""
        return cls(name, (0.0,), (value,), 1.0)


def read_trace(path: str | os.PathLike[str], *, window_s: float = 0.1, name: str | None = None) -> RateTrace:
    """A rate trace from a mahimahi, two-column or CSV file (see the module docstring); mahimahi
    packets are counted in ``window_s`` bins. ``name`` defaults to the file name."""
    if not (math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"window_s must be a finite number of seconds > 0, got {window_s!r}")
    lines = _read_lines(path)
    first = _first_sample(path, lines)
    label = Path(path).name if name is None else name
    text = lines[first].strip()
    if _RATE_HEADER.fullmatch(text):
        times, mbps, duration = _columns(path, lines, first + 1, csv=True, quantity="rate in Mbit/s")
    elif len(text.split()) == 2:
        times, mbps, duration = _columns(path, lines, first, csv=False, quantity="rate in Mbit/s")
    elif _is_int(text):
        return _mahimahi(path, lines, window_s, label)
    else:
        raise TraceFileError(_line_message(path, first + 1, text, f"not a trace line; expected {_FORMATS}"))
    if not any(mbps):
        raise TraceFileError(
            f"trace file {path}: every rate is 0, so the link never delivers anything; "
            "a rate trace needs at least one sample above 0 Mbit/s"
        )
    return RateTrace(label, times, tuple(rate * 1e6 for rate in mbps), duration)


def read_load_trace(path: str | os.PathLike[str]) -> LoadTrace:
    """A load trace from CSV with the header ``time_s,value``, or from two whitespace-separated columns."""
    lines = _read_lines(path)
    first = _first_sample(path, lines)
    if _LOAD_HEADER.fullmatch(lines[first].strip()):
        times, values, duration = _columns(path, lines, first + 1, csv=True, quantity="load value")
    else:
        times, values, duration = _columns(path, lines, first, csv=False, quantity="load value")
    return LoadTrace(Path(path).name, times, values, duration)


def _check_steps(
    kind: str, name: str, times_s: Sequence[float], values: Sequence[float], duration_s: float
) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """Validated step-function fields as floats; a ValueError that names the bad field otherwise."""
    where = f"{kind} {name!r}"
    times = tuple(float(t) for t in times_s)
    vals = tuple(float(v) for v in values)
    duration = float(duration_s)
    if not times or len(vals) != len(times):
        raise ValueError(
            f"{where}: got {len(times)} times and {len(vals)} values; give one value per time, at least one"
        )
    if times[0] != 0.0:
        raise ValueError(f"{where}: times_s must start at 0.0, got {times[0]!r}; re-base the times")
    for i in range(1, len(times)):
        if not (math.isfinite(times[i]) and times[i] > times[i - 1]):
            raise ValueError(
                f"{where}: times_s[{i}] = {times[i]!r} does not follow {times[i - 1]!r}; "
                "times must be finite and strictly increasing"
            )
    for i, value in enumerate(vals):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{where}: value {i} is {value!r}; values must be finite and >= 0")
    if not (math.isfinite(duration) and duration > times[-1]):
        raise ValueError(
            f"{where}: duration_s = {duration!r} must be finite and greater than the last time, {times[-1]!r}"
        )
    return times, vals, duration


def _read_lines(path: str | os.PathLike[str]) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise TraceFileError(
            f"trace file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); expected {_FORMATS}"
        ) from None
    except OSError as exc:
        raise TraceFileError(f"cannot read trace file {path}: {exc.strerror or exc}; check the path") from None


def _first_sample(path: str | os.PathLike[str], lines: list[str]) -> int:
    """Index of the first non-blank line; an error when there is none."""
    for index, line in enumerate(lines):
        if line.strip():
            return index
    raise TraceFileError(f"trace file {path} is empty: no samples; expected {_FORMATS}")


def _clip(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


def _line_message(path: str | os.PathLike[str], number: int, text: str, problem: str) -> str:
    return f"{path}, line {number}: {_clip(text)!r}: {problem}"


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _mahimahi(path: str | os.PathLike[str], lines: list[str], window_s: float, name: str) -> RateTrace:
    """Packets per ``window_s`` bin as bits/s; the period is the last timestamp rounded up to a whole window."""
    stamps = _mahimahi_stamps(path, lines)
    window_ms = round(window_s * 1000, 9)
    bins = max(1, math.ceil(round(int(stamps[-1]) / window_ms, 9)))
    index = np.minimum(stamps // window_ms, bins - 1).astype(np.int64)  # the final stamp may end the last bin
    counts = np.bincount(index, minlength=bins)
    times = tuple(k * window_s for k in range(bins))
    rates = tuple((counts * SEGMENT_BYTES * 8 / window_s).tolist())
    return RateTrace(name, times, rates, bins * window_s)


def _mahimahi_stamps(path: str | os.PathLike[str], lines: list[str]) -> np.ndarray:
    """The timestamps, parsed at numpy speed when the file is clean; otherwise line by line, which
    skips blank lines and names the first bad one."""
    try:
        stamps = np.array(lines, dtype=np.int64)
    except (ValueError, OverflowError):
        return _mahimahi_stamps_by_line(path, lines)
    if stamps.min() >= 0 and (np.diff(stamps) >= 0).all():
        return stamps
    return _mahimahi_stamps_by_line(path, lines)


def _mahimahi_stamps_by_line(path: str | os.PathLike[str], lines: list[str]) -> np.ndarray:
    stamps: list[int] = []
    previous = 0
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        try:
            stamp = int(text)
        except ValueError:
            problem = "expected one integer per line (a ms timestamp), as in a mahimahi trace"
            raise TraceFileError(_line_message(path, number, text, problem)) from None
        if stamp < 0:
            raise TraceFileError(
                _line_message(path, number, text, "negative timestamp; mahimahi timestamps count ms from 0")
            )
        if stamps and stamp < stamps[-1]:
            problem = f"timestamp below the previous one ({stamps[-1]} ms, line {previous}); they must not decrease"
            raise TraceFileError(_line_message(path, number, text, problem))
        stamps.append(stamp)
        previous = number
    return np.array(stamps, dtype=np.int64)


def _columns(
    path: str | os.PathLike[str], lines: list[str], start: int, *, csv: bool, quantity: str
) -> tuple[tuple[float, ...], tuple[float, ...], float]:
    """(times re-based to 0, values, duration) from ``time_s value`` rows from ``lines[start]`` on;
    the last sample lasts the median sample spacing."""
    layout = "comma-separated" if csv else "whitespace-separated"
    expected = f"expected two {layout} numbers: time_s and the {quantity}"
    times: list[float] = []
    values: list[float] = []
    previous = 0
    for number, line in enumerate(lines[start:], start + 1):
        text = line.strip()
        if not text:
            continue
        columns = [c.strip() for c in text.split(",")] if csv else text.split()
        if len(columns) != 2:
            raise TraceFileError(_line_message(path, number, text, f"found {len(columns)} column(s); {expected}"))
        try:
            t, value = (float(c) for c in columns)
        except ValueError:
            raise TraceFileError(_line_message(path, number, text, f"not a number; {expected}")) from None
        if not (math.isfinite(t) and math.isfinite(value)):
            raise TraceFileError(_line_message(path, number, text, f"not a finite number; {expected}"))
        if t < 0:
            raise TraceFileError(_line_message(path, number, text, "negative time; times count seconds from 0"))
        if value < 0:
            raise TraceFileError(_line_message(path, number, text, f"negative {quantity}; it must be >= 0"))
        if times and t <= times[-1]:
            problem = f"time {t:g} s is not after {times[-1]:g} s (line {previous}); times must strictly increase"
            raise TraceFileError(_line_message(path, number, text, problem))
        times.append(t)
        values.append(value)
        previous = number
    if len(times) < 2:
        found = "no samples" if not times else f"one sample (line {previous})"
        raise TraceFileError(
            f"trace file {path} has {found}; need at least two, to know how long each sample lasts"
        )
    spacing = statistics.median(b - a for a, b in zip(times, times[1:]))
    origin = times[0]
    return tuple(t - origin for t in times), tuple(values), times[-1] - origin + spacing
