"""Split policies: given what is known now, choose how to serve the next request.

A policy is pure: ``choose(state, options) -> Decision``, no clock, randomness or I/O inside, so the
simulator and the live client run the very same objects. ``options`` are the ones the policy may pick
(``--private`` and the exactness rule filter them before); static policies look theirs up by name.

    local          the whole model on the device
    offload        the raw input to the server (offload:jpeg90 sends a JPEG instead)
    static:CUT     always the same option (a cut name, or a full option name such as split:add_1:fp16)
    best-static    the single option best at the trace's mean rate, as Neurosurgeon picks (fixed per run)
    dsc            the least expected latency (plus its standard error) over how the link may turn out
                   (recent samples, spread by the estimate's age) at the server's reported load, an outage
                   costing at most the deadline plus the rest on the device; hedged, the least expected
                   first answer
    oracle         argmin at the true current rate and load: the paper's idealisation, a lower bound

Every caller passes the same options to ``choose``: those the device may pick. A fixed policy (local,
offload, static) resolves its option from all the options when it is built, so naming one that is not
there fails at once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from edgesplit.errors import EdgesplitError
from edgesplit.latency import (LinkState, Option, ServerState, find_option, hedged_latency, latency, rest_on_device,
                               scenario_latencies)
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
    ceilings: tuple[bool, ...] = ()  # which of them are bounds (an upload given up: the rate was at most this)
    sample_age_s: float = 0.0  # since the newest sample was learnt (inf: none yet)
    volatility: float = 0.0  # standard deviation of the log-rate's change over one second
    deadline_s: float = math.inf  # the device gives up on the server this long after taking a request up


MAX_AGE_S = 10.0  # an estimate this old (or none at all) is as uncertain as it gets
MAX_LOG_SPREAD = 3.0  # and no scenario is more than e³ (20×) off its sample


def rate_scenarios(state: State) -> tuple[float, ...]:
    """Equally likely uplink rates for the next upload: the recent samples, scaled so that their harmonic
    mean is the estimate, each spread by a factor exp(±volatility·√age) once the newest sample has aged
    (the log-rate as a random walk; the age capped at ``MAX_AGE_S``, the exponent at ``MAX_LOG_SPREAD``).
    A bound is a ceiling: it spreads only downwards (the link gave at most that when the device gave up)."""
    estimate = state.estimated.uplink_bps
    recent = state.recent_bps
    inverse_sum = sum(1.0 / r for r in recent)
    rates = tuple(r * estimate * inverse_sum / len(recent) for r in recent) or (estimate,)
    spread = math.exp(min(state.volatility * math.sqrt(min(state.sample_age_s, MAX_AGE_S)), MAX_LOG_SPREAD))
    if spread <= 1.0:
        return rates
    ceilings = state.ceilings if recent and len(state.ceilings) == len(recent) else (False,) * len(rates)
    return tuple(r * f for r, ceiling in zip(rates, ceilings) for f in (1 / spread, 1.0 if ceiling else spread))


@dataclass(frozen=True)
class Decision:
    option: Option
    predicted_s: float  # what the latency model expects, under the state the policy used


class Policy(ABC):
    name: str

    @abstractmethod
    def choose(self, state: State, options: list[Option]) -> Decision: ...


def argmin(options: list[Option], link: LinkState, server: ServerState) -> Decision:
    """The option with the lowest modelled latency (ties: the earlier option, local first)."""
    best = min(options, key=lambda o: latency(o, link, server))
    return Decision(best, latency(best, link, server))


class Fixed(Policy):
    """Always the same option, whatever the device may otherwise pick."""

    def __init__(self, name: str, option: Option) -> None:
        self.name = name
        self.option = option

    def choose(self, state: State, options: list[Option]) -> Decision:
        return Decision(self.option, latency(self.option, state.estimated, state.reported))


class BestStatic(Policy):
    """The option best at a fixed link (the trace's mean rate) and load: chosen once, kept for the run."""

    name = "best-static"

    def __init__(self, mean_link: LinkState, load: ServerState = ServerState()) -> None:
        self.mean_link = mean_link
        self.load = load

    def choose(self, state: State, options: list[Option]) -> Decision:
        option = argmin(options, self.mean_link, self.load).option
        return Decision(option, latency(option, state.estimated, state.reported))


class DynamicSplit(Policy):
    """The paper's method made real: the least expected latency at the reported load.

    Unhedged, the expectation runs over :func:`rate_scenarios`, and a scenario in which the server would
    answer after the deadline costs the deadline plus the rest of the model on the device (the device
    gives up then): an option that is fast at the estimate but ruinous if the link dips loses to one that
    is safe either way. The expectation is itself estimated from a handful of samples, so dsc picks the
    option whose expected latency plus one standard error (the scenarios' spread over √samples) is least:
    it leaves a safe option only for a gain that is clear, and reports the expected latency. Hedged, a request sent to the server is never later than the device's own run, so
    what counts is the expected first answer over the estimator's recent samples: an option that may win
    is worth sending even when it loses at the estimate. Sending must be expected to save at least
    ``HEDGE_MIN_GAIN_S`` over running locally."""

    name = "dsc"

    def choose(self, state: State, options: list[Option]) -> Decision:
        local = next((o for o in options if o.kind == "local"), None)
        if local is None:
            return argmin(options, state.estimated, state.reported)
        if not state.hedged:
            bound, expected, option = min(self.bounds(state, options, local), key=lambda b: b[0])
            return Decision(option, expected)
        best = Decision(local, local.head_s)
        for option in options:
            expected = hedged_latency(option, state.estimated, state.reported, local.head_s, state.recent_bps)
            if expected < best.predicted_s - (HEDGE_MIN_GAIN_S if best.option is local else 0.0):
                best = Decision(option, expected)
        return best


    @staticmethod
    def bounds(state: State, options: list[Option], local: Option) -> list[tuple[float, float, Option]]:
        """Unhedged, for each option: its expected latency plus one standard error (what dsc minimises; the
        first least is chosen), its expected latency, and the option."""
        rates, deadline = rate_scenarios(state), state.deadline_s
        samples = max(1, len(state.recent_bps))
        priced = []
        for option in options:
            rest = rest_on_device(option, local.head_s)
            costs = scenario_latencies(option, state.estimated, state.reported, rates,
                                       lambda t, rest=rest: t if t <= deadline else deadline + rest)
            expected = math.fsum(costs) / len(costs)
            spread = math.sqrt(math.fsum((c - expected) ** 2 for c in costs) / len(costs))
            priced.append((expected + spread / math.sqrt(samples), expected, option))
        return priced


class Oracle(Policy):
    """argmin at the true rate and load; needs a state that knows them."""

    name = "oracle"

    def choose(self, state: State, options: list[Option]) -> Decision:
        if state.actual is None:
            raise EdgesplitError("the oracle policy needs the true link rate: use it in simulation or over an "
                                 "emulated link")
        return argmin(options, state.actual, state.current or state.reported)


PolicyFactory = Callable[[str, LinkState, list[Option]], Policy]
POLICIES: Registry[PolicyFactory] = Registry("policy", EdgesplitError)
POLICIES.register("best-static")(lambda arg, mean, options: BestStatic(mean))
POLICIES.register("dsc")(lambda arg, mean, options: DynamicSplit())
POLICIES.register("oracle")(lambda arg, mean, options: Oracle())


@POLICIES.register("local")
def _local(arg: str, mean: LinkState, options: list[Option]) -> Policy:
    return Fixed("local", find_option(options, "local"))


@POLICIES.register("offload")
def _offload(arg: str, mean: LinkState, options: list[Option], spec: str = "") -> Policy:
    spec = spec or (f"offload:{arg}" if arg else "offload")
    if not any(o.kind == "offload" for o in options):
        raise EdgesplitError(f"policy {spec!r} sends the input to the server, but these options keep it on the "
                             "device (--private): drop it from the policies")
    return Fixed(spec, find_option(options, f"offload:{arg or 'raw'}"))


@POLICIES.register("static")
def _static(arg: str, mean: LinkState, options: list[Option]) -> Policy:
    option = arg if arg.startswith(("split:", "offload:")) or arg == "local" else f"split:{arg}:fp32"
    if option.startswith("offload:"):
        return _offload(option.partition(":")[2], mean, options, f"static:{arg}")
    return Fixed(f"static:{arg}", find_option(options, option))


def check_policy(spec: str) -> tuple[PolicyFactory, str]:
    """The factory and argument of ``spec`` (a policy name, with an argument after ':' for static and
    offload); a clear error for an unknown name or a misplaced argument."""
    name, _, arg = spec.partition(":")
    factory = POLICIES.get(name)
    if arg and name not in ("static", "offload"):
        raise EdgesplitError(f"policy {name!r} takes no argument (got {spec!r})")
    if name == "static" and not arg:
        raise EdgesplitError("static needs an option: static:CUT (fp32) or static:split:CUT:CODEC")
    return factory, arg


def make_policy(spec: str, options: list[Option], mean_link: LinkState) -> Policy:
    """The policy for ``spec``; a fixed one resolves its option among ``options`` (all of them, not only
    those a dynamic policy may pick); best-static picks at ``mean_link``."""
    factory, arg = check_policy(spec)
    return factory(arg, mean_link, options)


def allowed_options(options: list[Option], private: bool, lossy: bool) -> list[Option]:
    """The options dynamic policies may pick: exact ones unless ``lossy``, never offload when ``private``."""
    return [o for o in options if (lossy or o.exact) and not (private and o.kind == "offload")]
