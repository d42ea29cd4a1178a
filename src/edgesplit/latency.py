"""The one latency model, shared by the simulator, the grid and the live client.

    T(option) = head_device + encode + bytes / uplink_rate + RTT + queue_wait + tail_server(batch)
                + decode + answer_server + result_bytes / downlink_rate

(plus, when the device's earlier uploads are still queued on the uplink, the part of that backlog that
the head's computation does not hide).

An :class:`Option` is one way to serve a request: ``local`` (the whole model on the device, nothing sent),
``offload`` (the input leaves the device: raw uint8 or JPEG) or ``split`` (head on the device, one codec for
the crossing tensor, tail on the server). :func:`build_options` turns a device and a server profile into
the options; :func:`latency` prices one of them for a link and a server state. A model's post-processing
(``Profile.answer_s``: a segmenter's classes, a detector's boxes) runs where the answer is made: on the
server after the tail, or on the device in ``local``'s time, and so in the rest a fallback computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from edgesplit.codecs import SplitCodec, input_codec, split_codec
from edgesplit.errors import EdgesplitError, ProfileError
from edgesplit.profile import CutProfile, Profile, interpolate_batch

Kind = Literal["local", "offload", "split"]


@dataclass(frozen=True)
class LinkState:
    """What the link offers (or is believed to offer) now."""

    uplink_bps: float
    rtt_s: float = 0.0
    downlink_bps: float = math.inf
    backlog_bytes: float = 0.0  # the device's own earlier bytes still queued on the uplink


@dataclass(frozen=True)
class ServerState:
    """What the server reports: how long a new request would wait, and the batch it would run in; how the
    wait changes per second after the report (``growth``, -1: draining, nothing arriving) and how old the
    report is when the device decides (:mod:`edgesplit.load`)."""

    queue_wait_s: float = 0.0
    batch_size: int = 1
    growth: float = 0.0
    age_s: float = 0.0
    met_s: float = 0.0  # the waits the device's own recent requests met (an average; 0: none lately)
    compute_scale: float = 1.0  # its compute for the device's recent requests over what its profile says

    def queue_at(self, after_s: float) -> float:
        """The wait a request meets at the server ``after_s`` seconds after the device decided: the report
        aged by its growth, but not below what the device's recent requests met."""
        projected = self.queue_wait_s if self.growth == 0.0 else self.queue_wait_s + self.growth * (self.age_s + after_s)
        return max(self.met_s, projected, 0.0)


@dataclass(frozen=True)
class Option:
    """One way to serve a request, with every cost that does not depend on the link or the load."""

    name: str  # "local", "offload:jpeg:90", "split:add_1:fp32", "split:add_1:int8:zstd"
    kind: Kind
    cut: str | None
    codec: str
    head_s: float  # device compute before sending (the whole model for local)
    encode_s: float
    bytes: int
    decode_s: float
    tail_s: dict[int, float]  # server compute per batch size (empty for local)
    result_bytes: int
    exact: bool  # the answer equals the whole model's on the uncompressed input
    agreement: float | None = None  # top-1 agreement with the exact answer: 1 if exact, measured, or unknown
    answer_s: float = 0.0  # the server's post-processing per request, after the tail (local: in head_s)

    def tail_at(self, batch_size: int) -> float:
        return interpolate_batch(self.tail_s, batch_size) if self.tail_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "cut": self.cut, "codec": self.codec, "bytes": self.bytes,
                "head_s": self.head_s, "tail_s_batch1": self.tail_at(1), "agreement": self.agreement}


def latency(option: Option, link: LinkState, server: ServerState) -> float:
    """Seconds from the request to its answer on the device, if the link and the load stay as given."""
    return latencies_at(option, link, server, (link.uplink_bps,))[0]


def rest_on_device(option: Option, local_s: float) -> float:
    """What a device that runs the whole model in ``local_s`` still computes when it finishes ``option``
    itself, after its head: the tail for a split, everything for offload, nothing for local."""
    return 0.0 if option.kind == "local" else local_s - (option.head_s if option.kind == "split" else 0.0)


def latencies_at(option: Option, link: LinkState, server: ServerState, rates_bps: tuple[float, ...]
                 ) -> tuple[float, ...]:
    """:func:`latency` with the uplink at each of ``rates_bps`` instead of ``link.uplink_bps`` (one pass
    over the option's fixed costs: dsc prices every option at several rates per request)."""
    if option.kind == "local":
        return (option.head_s,) * len(rates_bps)
    ready = option.head_s + option.encode_s
    fixed = (ready + link.rtt_s + option.tail_at(server.batch_size) * server.compute_scale + option.decode_s
             + option.answer_s + option.result_bytes * 8 / link.downlink_bps)
    uploads = [_upload_s(option, link, rate) for rate in rates_bps]
    return tuple(fixed + upload + server.queue_at(ready + upload + link.rtt_s / 2) for upload in uploads)


def _upload_s(option: Option, link: LinkState, rate_bps: float) -> float:
    """From the frame being ready to its last byte sent, at ``rate_bps``, behind the device's own backlog."""
    ready = option.head_s + option.encode_s
    return max(0.0, link.backlog_bytes * 8 / rate_bps - ready) + option.bytes * 8 / rate_bps


def queue_met(option: Option, link: LinkState, server: ServerState) -> float:
    """The wait a request sent as ``option`` now is expected to meet at the server (``link`` as given)."""
    ready = option.head_s + option.encode_s
    return server.queue_at(ready + _upload_s(option, link, link.uplink_bps) + link.rtt_s / 2)


def scenario_latencies(option: Option, link: LinkState, server: ServerState, rates_bps: tuple[float, ...],
                       settle: Callable[[float], float] = lambda t: t) -> tuple[float, ...]:
    """``settle`` applied to the latency at each of ``rates_bps``: what the device does about a late answer
    (give up at a deadline, race its own run); a local run is what it is."""
    times = latencies_at(option, link, server, rates_bps)
    return times if option.kind == "local" else tuple(settle(t) for t in times)


def expected_latency(option: Option, link: LinkState, server: ServerState, rates_bps: tuple[float, ...],
                     settle: Callable[[float], float] = lambda t: t) -> float:
    """The mean of :func:`scenario_latencies`: the rates taken as equally likely."""
    return math.fsum(scenario_latencies(option, link, server, rates_bps, settle)) / len(rates_bps)


def hedged_latency(option: Option, link: LinkState, server: ServerState, local_s: float,
                   rates_bps: tuple[float, ...] = ()) -> float:
    """Expected seconds to the answer when the device also runs the rest itself (``--hedge``): the first of
    the server's answer and the device's own run (``local_s`` for the whole model, from when the frame is
    ready), averaged over ``rates_bps`` as equally likely uplink rates (default: ``link``'s)."""
    own = local_s + option.encode_s
    return expected_latency(option, link, server, rates_bps or (link.uplink_bps,), lambda t: min(t, own))


def build_options(device: Profile, server: Profile, *, cuts: list[str] | None = None,
                  codecs: tuple[str, ...] = ("fp32",), jpeg: bool = True, private: bool = False) -> list[Option]:
    """Every option both profiles can price: local, offload (raw, JPEG) and each cut × codec.

    ``private`` drops offload: the raw input never leaves the device. Each option carries its top-1
    agreement with the exact answer: 1 when exact, else as either profile measured it (the device's first).
    """
    if (device.model, device.input_shape) != (server.model, server.input_shape):
        raise ProfileError(f"the device profile is of {device.model} {list(device.input_shape)} but the server "
                           f"profile of {server.model} {list(server.input_shape)}")
    for spec in codecs:
        split_codec(spec)
    options = [Option("local", "local", None, "-", device.tail_s(None, 1) + device.answer_s, 0.0, 0, 0.0, {}, 0, True)]
    if not private:
        for name, entry in server.input_codecs.items():
            codec = input_codec(name)
            if not codec.exact and not jpeg:
                continue
            encode = device.input_codecs.get(name, entry)["encode_s"]
            options.append(Option(
                f"offload:{codec.name}", "offload", None, codec.name, 0.0, encode, int(round(entry["bytes"])),
                entry["decode_s"], {b: t.median_s for b, t in server.model_s.items()}, server.output_bytes,
                exact=codec.exact, answer_s=server.answer_s))
    names = cuts if cuts is not None else [n for n in device.cuts if n in server.cuts]
    for name in names:
        head, tail = device.cut(name), server.cut(name)
        if head.index == 0:
            continue  # the input itself: that is offload:raw, priced with the input codecs
        for spec in codecs:
            codec = split_codec(spec)
            sent, received = _codec_costs(device, head, codec), _codec_costs(server, tail, codec)
            options.append(Option(
                f"split:{name}:{codec.name}", "split", name, codec.name, device.head_s(name), sent["encode_s"],
                int(round(sent["bytes"])), received["decode_s"],
                {b: t.median_s for b, t in tail.tail_s.items()}, server.output_bytes, codec.exact,
                answer_s=server.answer_s))
    measured = {**server.agreement, **device.agreement}
    options = [replace(o, agreement=1.0 if o.exact else measured.get(o.name)) for o in options]
    if len(options) == 1 and private:
        raise EdgesplitError("with --private and no cut in both profiles, local is the only option")
    return options


def _codec_costs(profile: Profile, cut: CutProfile, codec: SplitCodec) -> dict[str, float]:
    """What ``profile`` measured of ``codec`` at ``cut``: payload bytes (uncompressed where it measured no
    bytes), encode and decode time; fp32 costs nothing to encode. A compression the profile did not measure
    (profiles measure zstd, not lz4: lz4 saved nothing on int8 tensors) is priced as the codec without it."""
    entry = cut.codec_s.get(codec.name)
    if entry is None and codec.compression != "none":
        entry = cut.codec_s.get(codec.base, {} if codec.base == "fp32" else None)
    if entry is None and codec.name != "fp32":
        raise ProfileError(f"the {profile.role} profile of {profile.model} did not measure codec {codec.name!r} "
                           f"at {cut.name} (it has {', '.join(cut.codec_s) or 'none'}); profile again")
    entry = entry or {}
    shape = (1, *cut.shape) if cut.shape is not None else (1, cut.elements)
    return {"bytes": entry.get("bytes", codec.payload_bytes(shape)), "encode_s": entry.get("encode_s", 0.0),
            "decode_s": entry.get("decode_s", 0.0)}


def find_option(options: list[Option], name: str) -> Option:
    for option in options:
        if option.name == name:
            return option
    from edgesplit.registry import unknown_name_message

    raise EdgesplitError(unknown_name_message("option", name, [o.name for o in options]))
