"""Rate and load traces: the three file formats, exact transfer times, and every file error."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from edgesplit.errors import EdgesplitError, TraceFileError
from edgesplit.traces import LoadTrace, RateTrace, read_load_trace, read_trace

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason=f"shared trace folder {TRACES} not found")

# 1 Mbit/s for 1 s, then 3 Mbit/s for 1 s: 4 Mbit per 2 s period.
STEP = RateTrace("step", (0.0, 1.0), (1e6, 3e6), 2.0)
# 1 Mbit/s, an outage, 1 Mbit/s again: 2 Mbit per 3 s period.
OUTAGE = RateTrace("outage", (0.0, 1.0, 2.0), (1e6, 0.0, 1e6), 3.0)
LONG = " ".join(["1"] * 50)  # a 99-character line, clipped to 60 in messages


def write(tmp_path: Path, text: str, name: str = "trace.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- file formats -----------------------------------------------------------------------------------


def test_mahimahi_packets_per_window(tmp_path):
    stamps = [0] * 4 + list(range(10, 100, 15)) + [100] * 10 + list(range(120, 200, 4))  # 10 then 30 packets
    path = write(tmp_path, "\n".join(map(str, stamps)) + "\n", "link.up")
    trace = read_trace(path, window_s=0.1)
    assert trace.name == "link.up"
    assert trace.times_s == (0.0, 0.1)
    packet = 1448 * 8  # goodput: the TCP payload of one 1500-byte packet
    assert trace.rates_bps == pytest.approx((10 * packet / 0.1, 30 * packet / 0.1), rel=1e-12)
    assert trace.duration_s == pytest.approx(0.2)  # last stamp 196 ms, rounded up to whole windows
    assert trace.mean_bps() == pytest.approx(20 * packet / 0.1)

    one_bin = read_trace(path, window_s=1.0, name="coarse")
    assert (one_bin.name, one_bin.times_s, one_bin.duration_s) == ("coarse", (0.0,), 1.0)
    assert one_bin.rates_bps == pytest.approx((40 * 1448 * 8.0,))  # goodput: 1448 B of payload per packet


def test_mahimahi_final_stamp_and_blank_lines(tmp_path):
    # The last stamp ends the last window exactly; it counts in that window, not in an extra one.
    trace = read_trace(write(tmp_path, "0\n50\n\n100\n200\n"), window_s=0.1)
    assert trace.times_s == (0.0, 0.1)
    assert trace.rates_bps == pytest.approx((2 * 115_840.0, 2 * 115_840.0))  # 2 packets of 1448 B per 0.1 s
    # A trace that is all at ms 0 still lasts one window.
    single = read_trace(write(tmp_path, "0\n0\n0\n", "zero.up"), window_s=0.1)
    assert single.duration_s == pytest.approx(0.1)
    assert single.rates_bps == pytest.approx((3 * 115_840.0,))


def test_two_column_trace(tmp_path):
    trace = read_trace(write(tmp_path, "0.0\t1.0\n0.5  2.0\n\n1.5 0.5\n", "bus.tsv"))
    assert trace.times_s == (0.0, 0.5, 1.5)
    assert trace.rates_bps == (1e6, 2e6, 0.5e6)
    assert trace.duration_s == 2.25  # last time + median spacing (0.5 and 1.0)
    assert trace.mean_bps() == pytest.approx((0.5 * 1e6 + 1.0 * 2e6 + 0.75 * 0.5e6) / 2.25)


def test_csv_trace_and_rebase(tmp_path):
    csv = read_trace(write(tmp_path, "time_s , mbps\n0, 1\n0.5,2\n1.5 ,0.5\n", "t.csv"))
    assert (csv.times_s, csv.rates_bps, csv.duration_s) == ((0.0, 0.5, 1.5), (1e6, 2e6, 0.5e6), 2.25)
    shifted = read_trace(write(tmp_path, "10 4\n11 0\n13 8\n", "late.tsv"))
    assert (shifted.times_s, shifted.rates_bps, shifted.duration_s) == ((0.0, 1.0, 3.0), (4e6, 0.0, 8e6), 4.5)


def test_load_traces(tmp_path):
    csv = read_load_trace(write(tmp_path, "time_s,value\n0,1\n2,4\n3,2\n", "load.csv"))
    assert (csv.name, csv.times_s, csv.values, csv.duration_s) == ("load.csv", (0.0, 2.0, 3.0), (1.0, 4.0, 2.0), 4.5)
    assert [csv.at(t) for t in (0.0, 1.99, 2.0, 3.5, 4.4, 4.5, 6.6)] == [1.0, 1.0, 4.0, 2.0, 2.0, 1.0, 4.0]
    columns = read_load_trace(write(tmp_path, "0 3\n1 5\n", "load.tsv"))
    assert (columns.values, columns.duration_s) == ((3.0, 5.0), 2.0)
    flat = LoadTrace.constant(8.0, name="batch")
    assert (flat.name, flat.at(0.0), flat.at(1e6)) == ("batch", 8.0, 8.0)


# --- transfer times ---------------------------------------------------------------------------------


def test_rate_at_and_mean():
    assert [STEP.rate_at(t) for t in (0.0, 0.99, 1.0, 1.5, 2.0, 3.2, -0.5)] == [1e6, 1e6, 3e6, 3e6, 1e6, 3e6, 3e6]
    assert STEP.mean_bps() == 2e6
    assert OUTAGE.mean_bps() == pytest.approx(2e6 / 3)
    assert STEP.to_dict() == {"name": "step", "duration_s": 2.0, "mean_mbps": 2.0}
    # divmod rounds a tiny negative time to a full period; it must count as the start of the next one.
    assert STEP.segment(-1e-20, 1.5) == RateTrace("step[-1e-20s+1.5s]", (0.0, 1.0), (1e6, 3e6), 1.5)


def test_transfer_time_across_rate_change():
    assert STEP.transfer_time(0.5, 250_000) == pytest.approx(0.5 + 1.5 / 3)  # 2 Mbit: 0.5 at 1, 1.5 at 3
    assert STEP.transfer_time(0.0, 125_000) == pytest.approx(1.0)
    assert STEP.transfer_time(0.3, 0) == 0.0


def test_transfer_time_across_outage():
    assert OUTAGE.transfer_time(0.5, 125_000) == pytest.approx(2.0)  # 0.5 Mbit, stall 1 s, 0.5 Mbit
    assert OUTAGE.transfer_time(1.5, 125_000) == pytest.approx(1.5)  # starts in the outage
    assert OUTAGE.transfer_time(0.0, 125_000) == pytest.approx(1.0)  # ends where the outage begins


def test_transfer_time_across_wraparound_and_periods():
    assert STEP.transfer_time(1.5, 250_000) == pytest.approx(1.0)  # 1.5 Mbit at 3, wrap, 0.5 at 1
    assert STEP.transfer_time(0.5, 5_062_500) == pytest.approx(20.5)  # 10 periods of 4 Mbit, then 0.5 Mbit
    assert STEP.transfer_time(40.5, 5_062_500) == pytest.approx(20.5)  # the same, 20 periods later
    trailing = RateTrace("trailing", (0.0, 1.0), (1e6, 0.0), 2.0)
    assert trailing.transfer_time(0.0, 125_000) == pytest.approx(1.0)  # a whole period's bits, no stall
    assert trailing.transfer_time(0.0, 250_000) == pytest.approx(3.0)
    long = RateTrace.constant(1e6, duration_s=0.001)
    assert long.transfer_time(0.25, 10**12) == pytest.approx(8e6)  # 8e9 periods, skipped arithmetically


def test_delivered_bits():
    assert STEP.delivered_bits(0.5, 2.5) == pytest.approx(0.5e6 + 3e6 + 0.5e6)
    assert STEP.delivered_bits(3.0, 3.0) == 0.0
    assert OUTAGE.delivered_bits(1.0, 2.0) == 0.0
    assert STEP.delivered_bits(0.0, 200.0) == pytest.approx(400e6)
    with pytest.raises(ValueError, match="end_s must be >= start_s"):
        STEP.delivered_bits(2.0, 1.0)


def test_delivered_bits_inverts_transfer_time():
    rng = random.Random(20240601)
    times = (0.0, *sorted(rng.uniform(0.0, 10.0) for _ in range(30)))
    rates = tuple(rng.choice([0.0, rng.uniform(1e5, 5e7)]) for _ in times)
    trace = RateTrace("random", times, rates, 10.5)
    for _ in range(500):
        start = rng.uniform(0.0, 100.0)
        n_bytes = rng.randrange(1, 50_000_000)
        elapsed = trace.transfer_time(start, n_bytes)
        assert elapsed > 0
        assert trace.delivered_bits(start, start + elapsed) == pytest.approx(8 * n_bytes, rel=1e-9)
        assert trace.transfer_time(start, n_bytes + 1000) > elapsed


def test_segment_and_scaled():
    trace = RateTrace("abc", (0.0, 1.0, 2.0), (1e6, 2e6, 3e6), 3.0)
    window = trace.segment(2.5, 2.0)
    assert window == RateTrace("abc[2.5s+2s]", (0.0, 0.5, 1.5), (3e6, 1e6, 2e6), 2.0)
    assert window.transfer_time(0.0, 250_000) == pytest.approx(trace.transfer_time(2.5, 250_000))
    long = trace.segment(1.0, 7.5)
    assert long.times_s == pytest.approx((0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0))
    assert long.rates_bps == (2e6, 3e6, 1e6, 2e6, 3e6, 1e6, 2e6, 3e6)
    assert trace.segment(0.0, 3.0) == RateTrace("abc[0s+3s]", trace.times_s, trace.rates_bps, 3.0)

    double = trace.scaled(2.0)
    assert (double.name, double.rates_bps) == ("abc*2", (2e6, 4e6, 6e6))
    assert double.mean_bps() == 2 * trace.mean_bps()
    assert double.transfer_time(0.5, 250_000) == pytest.approx(trace.transfer_time(0.5, 125_000))
    with pytest.raises(ValueError, match="scale factor must be finite and > 0"):
        trace.scaled(0.0)
    with pytest.raises(ValueError, match="never delivers anything"):
        OUTAGE.segment(1.0, 1.0)


def test_constant_rate():
    link = RateTrace.constant(8e6)
    assert (link.name, link.times_s, link.rates_bps, link.duration_s) == ("constant", (0.0,), (8e6,), 1.0)
    assert link.transfer_time(123.4, 1_000_000) == pytest.approx(1.0)
    assert link.delivered_bits(0.25, 3.75) == pytest.approx(28e6)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (((0.0, 1.0), (1e6,), 2.0), "got 2 times and 1 values"),
        (((), (), 1.0), "got 0 times and 0 values"),
        (((0.5, 1.0), (1e6, 1e6), 2.0), "times_s must start at 0.0, got 0.5"),
        (((0.0, 1.0, 1.0), (1e6, 1e6, 1e6), 2.0), r"times_s\[2\] = 1.0 does not follow 1.0"),
        (((0.0, float("nan")), (1e6, 1e6), 2.0), r"times_s\[1\] = nan"),
        (((0.0, 1.0), (1e6, -1.0), 2.0), "value 1 is -1.0; values must be finite and >= 0"),
        (((0.0, 1.0), (1e6, float("inf")), 2.0), "value 1 is inf"),
        (((0.0, 1.0), (1e6, 1e6), 1.0), "duration_s = 1.0 must be finite and greater than the last time, 1.0"),
        (((0.0, 1.0), (0.0, 0.0), 2.0), "every rate is 0, so the link never delivers anything"),
    ],
)
def test_rate_trace_rejects_inconsistent_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        RateTrace("bad", *fields)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_bytes must be >= 0, got -1"):
        STEP.transfer_time(0.0, -1)
    with pytest.raises(ValueError, match="time must be finite, got nan"):
        STEP.transfer_time(float("nan"), 1)
    with pytest.raises(ValueError, match="segment duration_s must be finite and > 0, got 0"):
        STEP.segment(0.0, 0)
    with pytest.raises(ValueError, match="window_s must be a finite number of seconds > 0, got 0"):
        read_trace("unused", window_s=0)
    with pytest.raises(ValueError, match="value 0 is -1.0"):
        LoadTrace.constant(-1.0)


# --- file errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty: no samples; expected a mahimahi timestamp"),
        ("\n  \n\n", "is empty: no samples"),
        ("time_s,mbps\n", "has no samples; need at least two"),
        ("0 1.5\n", r"has one sample \(line 1\); need at least two"),
        ("0\n5\n12 34\n", "line 3: '12 34': expected one integer per line"),
        ("0\n5\n7.5\n", "line 3: '7.5': expected one integer per line"),
        ("-5\n0\n", "line 1: '-5': negative timestamp; mahimahi timestamps count ms from 0"),
        ("0\n\n10\n9\n", r"line 4: '9': timestamp below the previous one \(10 ms, line 3\)"),
        ("0 1\n0.5 2 3\n", r"line 2: '0.5 2 3': found 3 column\(s\); expected two whitespace-separated numbers"),
        ("\n\n0 1\n0.5 x\n", "line 4: '0.5 x': not a number; expected two"),
        ("0 1\n0.5 nan\n", "line 2: '0.5 nan': not a finite number"),
        ("0 1\ninf 2\n", "line 2: 'inf 2': not a finite number"),
        ("0 1\n1 -0.5\n", "line 2: '1 -0.5': negative rate in Mbit/s; it must be >= 0"),
        ("-1 1\n1 1\n", "line 1: '-1 1': negative time; times count seconds from 0"),
        ("0 1\n1 2\n1 3\n", r"line 3: '1 3': time 1 s is not after 1 s \(line 2\); times must strictly"),
        ("0 1\n2 2\n1 3\n", "line 3: '1 3': time 1 s is not after 2 s"),
        ("time_s,mbps\n0,1\n1 2\n", r"line 3: '1 2': found 1 column\(s\); expected two comma-separated numbers"),
        ("0 0\n1 0\n2 0\n", "every rate is 0, so the link never delivers anything"),
        ("time,rate\n0,1\n", "line 1: 'time,rate': not a trace line; expected a mahimahi timestamp"),
        ("0 1\n" + LONG + "\n", "line 2: " + re.escape(repr(LONG[:57] + "...")) + ": found 50 column"),
    ],
)
def test_malformed_rate_files(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(TraceFileError, match=message) as caught:
        read_trace(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("time_s,value\n0,1\n1,-2\n", "line 3: '1,-2': negative load value; it must be >= 0"),
        ("time_s,mbps\n0,1\n1,2\n", r"line 1: 'time_s,mbps': found 1 column\(s\); expected two whitespace-separated"),
        ("0 1\n", r"has one sample \(line 1\)"),
    ],
)
def test_malformed_load_files(tmp_path, text, message):
    with pytest.raises(TraceFileError, match=message):
        read_load_trace(write(tmp_path, text))


def test_unreadable_files(tmp_path):
    with pytest.raises(TraceFileError, match="cannot read trace file .*missing.up: No such file or directory"):
        read_trace(tmp_path / "missing.up")
    with pytest.raises(TraceFileError, match="cannot read trace file"):
        read_load_trace(tmp_path)
    binary = tmp_path / "binary.up"
    binary.write_bytes(b"0\n\xff\xfe\n")
    with pytest.raises(TraceFileError, match=r"is not UTF-8 text \(byte 2"):
        read_trace(binary)
    assert issubclass(TraceFileError, EdgesplitError)


# --- the shared real traces -------------------------------------------------------------------------


@needs_traces
def test_mahimahi_uplinks_match_readme():
    paths = sorted((TRACES / "mahimahi").glob("*.up"))
    assert len(paths) == 8
    traces = {path.name: read_trace(path, window_s=1.0) for path in paths}
    means = {name: trace.mean_bps() / 1e6 for name, trace in traces.items()}
    assert min(means, key=means.__getitem__) == "ATT-LTE-driving.up"
    assert max(means, key=means.__getitem__) == "TMobile-LTE-driving.up"
    goodput = 1448 / 1500  # the README counts 1500-byte packets; edgesplit's rates are TCP payload
    assert means["ATT-LTE-driving.up"] == pytest.approx(0.83 * goodput, rel=0.02)
    assert means["TMobile-LTE-driving.up"] == pytest.approx(19.3 * goodput, rel=0.02)
    assert all(0.83 * goodput * 0.98 <= mean <= 19.3 * goodput * 1.02 for mean in means.values())
    assert all(120 <= trace.duration_s <= 1366 for trace in traces.values())
    assert any(0.0 in trace.rates_bps for trace in traces.values())  # seconds with no capacity at all


@needs_traces
def test_norway_traces_load():
    paths = sorted((TRACES / "norway-hsdpa").glob("*.tsv"))
    assert len(paths) >= 20
    for path in paths:
        trace = read_trace(path)
        # The README's 0.6-4.6 Mbit/s are per-sample means to one decimal; ours are time-weighted.
        assert 0.55 <= trace.mean_bps() / 1e6 <= 4.65, path.name
        assert 44 <= trace.duration_s <= 320, path.name
