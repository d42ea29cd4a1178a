"""Split policies: given what is known now, choose how to serve the next request.

A policy is pure: ``choose(state, options) -> Decision``, no clock, randomness or I/O inside, so the
simulator and the live client run the very same objects. ``options`` are the ones the policy may pick
(``--private`` and the exactness rule filter them before); static policies look theirs up by name.

    local          the whole model on the device
    offload        the raw input to the server (offload:jpeg90 sends a JPEG instead)
    static:CUT     always the same option (a cut name, or a full option name such as split:add_1:fp16)
    best-static    the single option best at the trace's mean rate, as Neurosurgeon picks (fixed per run)
    dsc            argmin of the latency model at the estimator's rate and the server's reported load
    oracle         argmin at the true current rate and load: the paper's idealisation, a lower bound
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from edgesplit.errors import EdgesplitError
from edgesplit.latency import LinkState, Option, ServerState, find_option, hedged_latency, latency
from edgesplit.registry import Registry


HEDGE_MIN_GAIN_S = 0.001  # hedged, a request goes to the server only if expected to save this much


@dataclass(frozen=True)
class State:
    """What a policy may know when it decides."""

    estimated: LinkState  # from the estimator (or the prior before the first sample)
    reported: ServerState  # the load the server reported last
    actual: LinkState | None = None  # the true link now: simulation and emulated links only
    current: ServerState | None = None  # the true load now: simulation only
    hedged: bool = False  # the device runs the rest itself while it waits (--hedge)
    recent_bps: tuple[float, ...] = ()  # the estimator's last samples: how the link may turn out


@dataclass(frozen=True)
class Decision:
    option: Option
    predicted_s: float  # what the latency model expects, under the state the policy used


class Policy(ABC):
    name: str
    dynamic = False  # picks among the allowed options (exactness, --private) rather than one named option

    @abstractmethod
    def choose(self, state: State, options: list[Option]) -> Decision: ...


def argmin(options: list[Option], link: LinkState, server: ServerState) -> Decision:
    """The option with the lowest modelled latency (ties: the earlier option, local first)."""
    best = min(options, key=lambda o: latency(o, link, server))
    return Decision(best, latency(best, link, server))


class Fixed(Policy):
    """Always the same option, looked up by name."""

    def __init__(self, name: str, option_name: str) -> None:
        self.name = name
        self.option_name = option_name

    def choose(self, state: State, options: list[Option]) -> Decision:
        option = find_option(options, self.option_name)
        return Decision(option, latency(option, state.estimated, state.reported))


class BestStatic(Policy):
    """The option best at a fixed link (the trace's mean rate) and load: chosen once, kept for the run."""

    name = "best-static"
    dynamic = True

    def __init__(self, mean_link: LinkState, load: ServerState = ServerState()) -> None:
        self.mean_link = mean_link
        self.load = load

    def choose(self, state: State, options: list[Option]) -> Decision:
        option = argmin(options, self.mean_link, self.load).option
        return Decision(option, latency(option, state.estimated, state.reported))


class DynamicSplit(Policy):
    """The paper's method made real: argmin at the estimated rate and the reported load.

    Hedged, a request sent to the server is never later than the device's own run, so what counts is
    the expected first answer over how the link may turn out (the estimator's recent samples): an option
    that may win is worth sending even when it loses at the estimate. Sending must be expected to save at
    least ``HEDGE_MIN_GAIN_S`` over running locally."""

    name = "dsc"
    dynamic = True

    def choose(self, state: State, options: list[Option]) -> Decision:
        local = next((o for o in options if o.kind == "local"), None)
        if not state.hedged or local is None:
            return argmin(options, state.estimated, state.reported)
        best = Decision(local, local.head_s)
        for option in options:
            expected = hedged_latency(option, state.estimated, state.reported, local.head_s, state.recent_bps)
            if expected < best.predicted_s - (HEDGE_MIN_GAIN_S if best.option is local else 0.0):
                best = Decision(option, expected)
        return best


class Oracle(Policy):
    """argmin at the true rate and load; needs a state that knows them."""

    name = "oracle"
    dynamic = True

    def choose(self, state: State, options: list[Option]) -> Decision:
        if state.actual is None:
            raise EdgesplitError("the oracle policy needs the true link rate: use it in simulation or over an "
                                 "emulated link")
        return argmin(options, state.actual, state.current or state.reported)


PolicyFactory = Callable[[str, LinkState], Policy]
POLICIES: Registry[PolicyFactory] = Registry("policy", EdgesplitError)
POLICIES.register("local")(lambda arg, mean: Fixed("local", "local"))
POLICIES.register("offload")(lambda arg, mean: Fixed(f"offload:{arg}" if arg else "offload",
                                                     f"offload:{arg or 'raw'}"))
POLICIES.register("best-static")(lambda arg, mean: BestStatic(mean))
POLICIES.register("dsc")(lambda arg, mean: DynamicSplit())
POLICIES.register("oracle")(lambda arg, mean: Oracle())


@POLICIES.register("static")
def _static(arg: str, mean: LinkState) -> Policy:
    if not arg:
        raise EdgesplitError("static needs an option: static:CUT (fp32) or static:split:CUT:CODEC")
    option = arg if arg.startswith(("split:", "offload:")) or arg == "local" else f"split:{arg}:fp32"
    return Fixed(f"static:{arg}", option)


def make_policy(spec: str, mean_link: LinkState) -> Policy:
    """``spec`` is a policy name, with an argument after ':' for static and offload."""
    name, _, arg = spec.partition(":")
    factory = POLICIES.get(name)
    if arg and name not in ("static", "offload"):
        raise EdgesplitError(f"policy {name!r} takes no argument (got {spec!r})")
    return factory(arg, mean_link)


def allowed_options(options: list[Option], private: bool, lossy: bool) -> list[Option]:
    """The options dynamic policies may pick: exact ones unless ``lossy``, never offload when ``private``."""
    return [o for o in options if (lossy or o.exact) and not (private and o.kind == "offload")]
