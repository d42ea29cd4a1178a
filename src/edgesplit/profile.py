"""Latency profiles as data: head and tail time of every cut, per batch size, on one machine.

Profiles are written by :mod:`edgesplit.measure` (``edgesplit profile``) and read back here as validated
JSON, never unpickled. This module needs neither torch nor a model, so a device with only ONNX Runtime
can price its options too.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edgesplit.errors import ProfileError

FORMAT = "edgesplit-profile/1"
Role = Literal["device", "server"]
Source = Literal["measured", "estimated"]


@dataclass(frozen=True)
class Timing:
    """Seconds for one piece of work: median and 10th/90th percentiles over ``repeats`` runs."""

    median_s: float
    p10_s: float
    p90_s: float
    repeats: int
    source: Source = "measured"

    @classmethod
    def of(cls, samples: list[float], source: Source = "measured") -> Timing:
        ordered = sorted(samples)
        return cls(statistics.median(ordered), quantile(ordered, 0.1), quantile(ordered, 0.9),
                   len(ordered), source)

    def scaled(self, factor: float) -> Timing:
        return Timing(self.median_s * factor, self.p10_s * factor, self.p90_s * factor, self.repeats, self.source)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median_s, "p10_s": self.p10_s, "p90_s": self.p90_s,
                "repeats": self.repeats, "source": self.source}


@dataclass(frozen=True)
class CutProfile:
    name: str
    index: int
    elements: int
    head_s: dict[int, Timing]
    tail_s: dict[int, Timing]
    codec_s: dict[str, dict[str, float]]  # split codec: {"bytes", "encode_s", "decode_s"} (batch 1, on photos)
    shape: tuple[int, ...] | None = None  # the crossing tensor's, without the batch dimension

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index, "elements": self.elements,
                "head_s": {str(b): t.to_dict() for b, t in self.head_s.items()},
                "tail_s": {str(b): t.to_dict() for b, t in self.tail_s.items()},
                "codec_s": self.codec_s, "shape": None if self.shape is None else list(self.shape)}


@dataclass(frozen=True)
class Profile:
    """Everything one machine measured about one model; see :func:`measure` and :func:`load_profile`."""

    model: str
    role: Role
    input_shape: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    method: str
    slowdown: float
    machine: dict[str, Any]
    model_s: dict[int, Timing]
    cuts: dict[str, CutProfile]
    input_codecs: dict[str, dict[str, float]]  # raw / jpeg<Q>: {"bytes", "encode_s", "decode_s"}
    output_bytes: int  # the frame that answers one request
    flops_per_s: dict[int, float] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)  # option name: top-1 agreement with fp32, measured
    # by edgesplit fidelity (lossy options only)
    answer_s: float = 0.0  # the model's post-processing per request, batch 1 (a segmenter's classes, a detector's
    # boxes): on the server after the tail, on the device after a local run; 0 for a model without one

    def cut(self, name: str) -> CutProfile:
        if name not in self.cuts:
            raise ProfileError(f"the {self.role} profile of {self.model} has no cut {name!r}; it has "
                               f"{', '.join(self.cuts) or 'none'} (profile again with --cuts)")
        return self.cuts[name]

    def tail_s(self, name: str | None, batch_size: int) -> float:
        """Server time to run from cut ``name`` (None: the whole model) to the end for ``batch_size``."""
        table = self.model_s if name is None else self.cut(name).tail_s
        return _at_batch(table, batch_size, f"{self.role} profile of {self.model}").median_s

    def head_s(self, name: str) -> float:
        return _at_batch(self.cut(name).head_s, 1, f"{self.role} profile of {self.model}").median_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "model": self.model, "role": self.role, "input_shape": list(self.input_shape),
            "batch_sizes": list(self.batch_sizes), "method": self.method, "slowdown": self.slowdown,
            "machine": self.machine, "model_s": {str(b): t.to_dict() for b, t in self.model_s.items()},
            "flops_per_s": {str(b): v for b, v in self.flops_per_s.items()},
            "cuts": [c.to_dict() for c in self.cuts.values()], "input_codecs": self.input_codecs,
            "output_bytes": self.output_bytes, "agreement": self.agreement, "answer_s": self.answer_s,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")


def _agreements(table: Any, source: str) -> dict[str, float]:
    agreements = {str(name): float(value) for name, value in table.items()}
    for name, value in agreements.items():
        if not 0.0 <= value <= 1.0:
            raise ProfileError(f"{source}: the agreement of {name} must be in [0, 1], got {value!r}")
    return agreements


def read_agreement(path: str | os.PathLike[str]) -> dict[str, float]:
    """The measured agreement of each option with the exact answer, from ``edgesplit fidelity``'s
    ``fidelity.json``: a classifier's top-1 agreement, a segmentation model's pixel agreement; option
    names as the latency model gives them (``split:CUT:CODEC``, ``offload:jpeg:Q``)."""
    source = os.fspath(path)
    try:
        data = json.loads(Path(path).read_text())
        table = {("offload:" if row["cut"] == "input" else f"split:{row['cut']}:") + str(row["codec"]):
                 float(row["agreement"] if "agreement" in row else row["pixel_agreement"])
                 for row in data["results"]}
    except OSError as exc:
        raise ProfileError(f"cannot read fidelity results {source}: {exc.strerror or exc}") from exc
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProfileError(f"{source} is not a fidelity.json of edgesplit fidelity ({type(exc).__name__}: {exc})"
                           ) from exc
    return _agreements(table, source)


def with_agreement(profile: Profile, agreement: dict[str, float]) -> Profile:
    """``profile`` carrying these measured agreements too (they replace any it had for the same options)."""
    return replace(profile, agreement={**profile.agreement, **agreement})


def _input_codecs(table: dict[str, Any]) -> dict[str, Any]:
    """Input codecs by spec; profiles written before codecs took arguments named JPEG ``jpeg90``."""
    return {f"jpeg:{name[4:]}" if name[4:].isdigit() and name.startswith("jpeg") else name: entry
            for name, entry in table.items()}


def interpolate_batch(seconds: dict[int, float], batch_size: int) -> float:
    """Time at ``batch_size`` from times at profiled sizes: linear between neighbours; beyond the largest,
    the largest's time per item; below the smallest, the smallest's time."""
    sizes = sorted(seconds)
    if batch_size in seconds:
        return seconds[batch_size]
    if batch_size < sizes[0]:
        return seconds[sizes[0]]
    if batch_size > sizes[-1]:
        return seconds[sizes[-1]] * batch_size / sizes[-1]
    upper = next(b for b in sizes if b > batch_size)
    lower = max(b for b in sizes if b < batch_size)
    share = (batch_size - lower) / (upper - lower)
    return seconds[lower] + (seconds[upper] - seconds[lower]) * share


def _at_batch(table: dict[int, Timing], batch_size: int, where: str) -> Timing:
    if batch_size in table:
        return table[batch_size]
    if not table or batch_size > max(table) or batch_size < min(table):
        raise ProfileError(f"the {where} has no batch size {batch_size} (it has {sorted(table)}); "
                           "profile again with --batch-sizes")
    return Timing(interpolate_batch({b: t.median_s for b, t in table.items()}, batch_size),
                  interpolate_batch({b: t.p10_s for b, t in table.items()}, batch_size),
                  interpolate_batch({b: t.p90_s for b, t in table.items()}, batch_size), 0, "estimated")


def require_batch_sizes(profile: Profile, largest: int) -> None:
    """A clear error when ``profile`` was not measured up to batch size ``largest``."""
    have = max(profile.batch_sizes)
    if have < largest:
        raise ProfileError(f"the {profile.role} profile of {profile.model} goes up to batch size {have} but "
                           f"{largest} is needed; profile again with --batch-sizes up to at least {largest}")


def with_slowdown(profile: Profile, factor: float) -> Profile:
    """Every time multiplied by ``factor`` (emulates slower or faster hardware; sizes are unchanged)."""
    def scale(table: dict[int, Timing]) -> dict[int, Timing]:
        return {b: t.scaled(factor) for b, t in table.items()}

    def scale_codecs(codecs: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        return {k: {f: (v * factor if f.endswith("_s") else v) for f, v in d.items()} for k, d in codecs.items()}

    cuts = {n: replace(c, head_s=scale(c.head_s), tail_s=scale(c.tail_s), codec_s=scale_codecs(c.codec_s))
            for n, c in profile.cuts.items()}
    return replace(profile, slowdown=profile.slowdown * factor, model_s=scale(profile.model_s), cuts=cuts,
                   input_codecs=scale_codecs(profile.input_codecs),
                   flops_per_s={b: v / factor for b, v in profile.flops_per_s.items()},
                   answer_s=profile.answer_s * factor)


def with_device_time(profile: Profile, whole_model_s: float) -> Profile:
    """The profile slowed (or sped up) so that the whole model at batch 1 takes ``whole_model_s``: a device
    given by an absolute time, not by a factor of how fast this machine happens to be today."""
    if not (math.isfinite(whole_model_s) and whole_model_s > 0):
        raise ProfileError(f"the device's whole-model time must be finite and > 0, got {whole_model_s!r} s")
    return with_slowdown(profile, whole_model_s / profile.model_s[1].median_s)


def with_flops_shape(profile: Profile, flops: dict[str, tuple[int, int]]) -> Profile:
    """The profile with each cut's head and tail taking the whole model's time in proportion to their FLOPs
    (``flops``: each cut's head and tail FLOPs, as :class:`~edgesplit.analysis.Cut` counts them), at every
    batch size: a device shaped the same on every run, not as this machine's per-layer times split today."""
    missing = sorted(set(profile.cuts) - set(flops))
    if missing:
        raise ProfileError(f"no FLOPs for the cuts {', '.join(missing)} of {profile.model}")
    uncountable = sorted(n for n in profile.cuts if sum(flops[n]) <= 0)
    if uncountable:
        raise ProfileError(f"the FLOPs of {profile.model} at {', '.join(uncountable)} could not be counted, so they "
                           "cannot shape its profile")

    def share(name: str, side: int) -> dict[int, Timing]:
        fraction = flops[name][side] / sum(flops[name])
        return {b: replace(whole.scaled(fraction), source="estimated") for b, whole in profile.model_s.items()}

    cuts = {n: replace(c, head_s=share(n, 0), tail_s=share(n, 1)) for n, c in profile.cuts.items()}
    return replace(profile, method="flops", cuts=cuts)


def with_batch_plan(profile: Profile, batch_from: str) -> Profile:
    """The profile of a server that runs batches one request at a time up to cut ``batch_from`` and as one
    batch from there (``TailEngine.plan_batching``): from an earlier cut, a batch of b takes b × the time
    from that cut to ``batch_from`` at batch 1, plus the measured tail of ``batch_from`` at b. The 10th and
    90th percentiles are composed the same way, an approximation (percentiles do not add), marked
    "estimated"."""
    boundary = profile.cut(batch_from)
    if 1 not in profile.batch_sizes:
        raise ProfileError(f"the {profile.role} profile of {profile.model} has no batch size 1 to plan batches with")

    def planned(table: dict[int, Timing]) -> dict[int, Timing]:
        one, rest = table[1], boundary.tail_s[1]
        return {b: t if b == 1 else Timing(*(b * (getattr(one, f) - getattr(rest, f)) + getattr(boundary.tail_s[b], f)
                                             for f in ("median_s", "p10_s", "p90_s")), t.repeats, "estimated")
                for b, t in table.items()}

    cuts = {n: c if c.index >= boundary.index else replace(c, tail_s=planned(c.tail_s))
            for n, c in profile.cuts.items()}
    return replace(profile, method=f"{profile.method}; batches run one request at a time before {batch_from}",
                   model_s=planned(profile.model_s), cuts=cuts)


def quantile(ordered: list[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, linear between neighbours (numpy's default)."""
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read a profile written by ``edgesplit profile`` (JSON, validated; never unpickled)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read profile {os.fspath(path)}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{os.fspath(path)} is not a profile (invalid JSON: {exc})") from exc
    return profile_from_dict(data, os.fspath(path))


def profile_from_dict(data: Any, source: str) -> Profile:
    """A profile from its JSON form (a file, or a server's GET /v1/profile), validated; ``source`` names it
    in errors."""
    try:
        if data.get("format") != FORMAT:
            raise ProfileError(f"{source} is not an edgesplit profile (format {data.get('format')!r}, "
                               f"expected {FORMAT!r})")

        def seconds(value: Any, what: str = "a time") -> float:
            value = float(value)
            if not (math.isfinite(value) and value >= 0):
                raise ProfileError(f"{source} is a malformed profile ({what} of {value!r} s)")
            return value

        def timings(table: dict[str, Any]) -> dict[int, Timing]:
            return {int(b): Timing(seconds(t["median_s"]), seconds(t["p10_s"]), seconds(t["p90_s"]),
                                   int(t["repeats"]), t["source"]) for b, t in table.items()}

        cuts = {c["name"]: CutProfile(c["name"], int(c["index"]), int(c["elements"]), timings(c["head_s"]),
                                      timings(c["tail_s"]), c["codec_s"],
                                      None if c.get("shape") is None else tuple(int(d) for d in c["shape"]))
                 for c in data["cuts"]}
        return Profile(data["model"], data["role"], tuple(data["input_shape"]), tuple(data["batch_sizes"]),
                       data["method"], float(data["slowdown"]), data["machine"], timings(data["model_s"]), cuts,
                       _input_codecs(data["input_codecs"]), int(data["output_bytes"]),
                       {int(b): float(v) for b, v in data.get("flops_per_s", {}).items()},
                       _agreements(data.get("agreement", {}), source),
                       seconds(data.get("answer_s", 0.0), "an answer_s"))  # older profiles: 0
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProfileError(f"{source} is a malformed profile ({type(exc).__name__}: {exc})") from exc
