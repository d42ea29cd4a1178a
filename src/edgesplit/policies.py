"""Split policies: given what is known now, choose how to serve the next request.

A policy is pure: ``choose(state, options) -> Decision``, no clock, randomness or I/O inside, so the
simulator and the live client run the very same objects. ``options`` are the ones the policy may pick
(``--private`` and the exactness rule filter them before); static policies look theirs up by name.

    local          the whole model on the device
    offload        the raw input to the server (offload:jpeg:90 sends a JPEG instead)
    static:CUT     always the same option (a cut name, or a full option name such as split:add_1:fp16)
    best-static    the single option best at the trace's mean rate, as Neurosurgeon picks (fixed per run)
    dsc            the least expected latency (plus two standard errors) over how the link may turn out
                   (recent samples, spread by the estimate's age) at the server's reported load, an outage
                   costing at most the deadline plus the rest on the device; hedged, the least expected
                   first answer
    dsc:OBJECTIVE  the same, minimising OBJECTIVE instead: ``latency`` (= dsc), ``energy`` (the device's
                   joules per request, :mod:`edgesplit.energy`) or ``A*latency+B*energy`` (A per second,
                   B per joule; either term may be left out)
    oracle         argmin at the true current rate and load: the paper's idealisation, a lower bound
    oracle:OBJECTIVE  the least OBJECTIVE at the true current rate and load, priced as dsc prices it (the
                   deadline and the rest on the device)

Every caller passes the same options to ``choose``: those the device may pick. A fixed policy (local,
offload, static) resolves its option from all the options when it is built, so naming one that is not
there fails at once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgesplit.energy import DeviceEnergy
from edgesplit.estimators import RECENT_SAMPLES
from edgesplit.errors import EdgesplitError
from edgesplit.latency import (LinkState, Option, ServerState, find_option, hedged_latency, latencies_at, latency,
                               rest_on_device, scenario_latencies)
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
    radio_idle_s: float = math.inf  # since the device's radio last sent or received (0: it is busy; inf: never)
    probe_due_s: float = math.inf  # until the device probes beside a local run (0: now; inf: it never probes)
    probe_bytes: int = 0  # the size of its probes
    energy: DeviceEnergy = field(default_factory=DeviceEnergy)  # the device's compute power and radio


MAX_AGE_S = 10.0  # an estimate this old (or none at all) is as uncertain as it gets
MAX_LOG_SPREAD = 3.0  # and no scenario is more than e³ (20×) off its sample
STANDARD_ERRORS = 2.0  # dsc prices an option at its expectation plus this many standard errors of it


def with_margin(costs: Sequence[float], samples: int) -> tuple[float, float]:
    """The equally likely ``costs``' mean plus ``STANDARD_ERRORS`` standard errors (their spread over
    √``samples``: the mean is itself estimated from that many samples), and the mean."""
    expected = math.fsum(costs) / len(costs)
    spread = math.sqrt(math.fsum((c - expected) ** 2 for c in costs) / len(costs))
    return expected + STANDARD_ERRORS * spread / math.sqrt(samples), expected


def rate_scenarios(state: State) -> tuple[float, ...]:
    """Equally likely uplink rates for the next upload: the recent samples, scaled so that their harmonic
    mean is the estimate, each spread by a factor exp(±volatility·√age) once the newest sample has aged
    (the log-rate as a random walk; the age capped at ``MAX_AGE_S``, the exponent at ``MAX_LOG_SPREAD``).
    An estimate from fewer samples than the estimator keeps (``RECENT_SAMPLES``) counts as older by
    ``MAX_AGE_S / RECENT_SAMPLES`` for each one missing: one sample on connecting says little about the next
    second. A bound is a ceiling: it spreads only downwards (the link gave at most that when the device
    gave up)."""
    estimate = state.estimated.uplink_bps
    recent = state.recent_bps
    inverse_sum = sum(1.0 / r for r in recent)
    rates = tuple(r * estimate * inverse_sum / len(recent) for r in recent) or (estimate,)
    age = min(state.sample_age_s + MAX_AGE_S * max(0, RECENT_SAMPLES - len(recent)) / RECENT_SAMPLES, MAX_AGE_S)
    spread = math.exp(min(state.volatility * math.sqrt(age), MAX_LOG_SPREAD))
    if spread <= 1.0:
        return rates
    ceilings = state.ceilings if recent and len(state.ceilings) == len(recent) else (False,) * len(rates)
    return tuple(r * f for r, ceiling in zip(rates, ceilings) for f in (1 / spread, 1.0 if ceiling else spread))


@dataclass(frozen=True)
class Decision:
    option: Option
    predicted_s: float  # what the latency model expects, under the state the policy used


@dataclass(frozen=True)
class Objective:
    """What a policy minimises per request: ``latency_per_s`` × seconds + ``energy_per_j`` × device joules."""

    latency_per_s: float = 1.0
    energy_per_j: float = 0.0

    def cost(self, seconds: float, joules: float) -> float:
        return self.latency_per_s * seconds + self.energy_per_j * joules

    def __str__(self) -> str:
        terms = [f"{weight:g}*{name}" if weight != 1 else name
                 for weight, name in ((self.latency_per_s, "latency"), (self.energy_per_j, "energy")) if weight]
        return "+".join(terms)


LATENCY = Objective()
OBJECTIVE_HELP = "latency, energy or A*latency+B*energy (A per second, B per joule)"


def parse_objective(spec: str) -> Objective:
    """``latency``, ``energy`` or a weighted sum such as ``2*latency+0.5*energy`` (terms in any order, a
    weight 1 when left out); a clear error for anything else."""
    weights: dict[str, float] = {}
    for term in spec.split("+"):
        weight, times, name = term.strip().rpartition("*")
        name = name.strip()
        if name not in ("latency", "energy") or name in weights or (times and not weight.strip()):
            problem = f"{name!r} twice" if name in weights else f"{term.strip()!r} is not a term"
            raise EdgesplitError(f"objective {spec!r}: {problem}; use {OBJECTIVE_HELP}")
        try:
            value = float(weight) if times else 1.0
        except ValueError:
            raise EdgesplitError(f"objective {spec!r}: weight {weight.strip()!r} is not a number; use "
                                 f"{OBJECTIVE_HELP}") from None
        if not (math.isfinite(value) and value >= 0):
            raise EdgesplitError(f"objective {spec!r}: weight {weight.strip()!r} must be a finite number >= 0")
        weights[name] = value
    if not any(weights.values()):
        raise EdgesplitError(f"objective {spec!r} weighs nothing: give latency or energy a weight > 0")
    return Objective(weights.get("latency", 0.0), weights.get("energy", 0.0))


def scenario_energies(option: Option, state: State, link: LinkState, server: ServerState,
                      rates_bps: tuple[float, ...], rest_s: float, give_up_s: float) -> tuple[float, ...]:
    """The device's joules for ``option`` with the uplink at each of ``rates_bps`` (:mod:`edgesplit.energy`):
    its compute (the rest too when the answer would come after ``give_up_s``, or when hedged), and its
    radio: the gap since it was last busy (``state.radio_idle_s``, or the backlog it still sends), the
    upload (cut at ``give_up_s``), the wait for the answer and the answer. Local spends the whole model, and
    the probe the device sends beside it when one is due (``state.probe_due_s`` 0, on an idle uplink).

    The radio's tail is priced only where the option decides it: when the device transmits now whatever it
    picks (a probe is due), or will transmit before the tail since its last burst ends (its next probe),
    that tail is spent anyway, and the gaps cost nothing; otherwise the option pays them (its tail so far,
    and a promotion once the radio has gone idle)."""
    energy, radio = state.energy, state.energy.radio
    spent_anyway = state.probe_due_s == 0 or state.radio_idle_s + state.probe_due_s <= radio.tail_s

    def gap_j(seconds: float) -> float:
        return 0.0 if spent_anyway else radio.gap_j(seconds)

    if option.kind == "local":
        probing = state.probe_due_s == 0 and not link.backlog_bytes  # the device probes only on an idle uplink
        return tuple(energy.compute_j(option.head_s)
                     + (radio.burst_j(state.probe_bytes, state.probe_bytes * 8 / rate) if probing else 0.0)
                     for rate in rates_bps)
    ready = option.head_s + option.encode_s
    down_s = option.result_bytes * 8 / link.downlink_bps
    joules = []
    for rate, answer_s in zip(rates_bps, latencies_at(option, link, server, rates_bps)):
        drained_s = link.backlog_bytes * 8 / rate
        start = max(ready, drained_s)
        gap = max(0.0, ready - drained_s) if link.backlog_bytes else state.radio_idle_s + ready
        upload_s = option.bytes * 8 / rate
        if answer_s <= give_up_s:
            spent = (gap_j(gap) + radio.burst_j(option.bytes, upload_s) + gap_j(answer_s - down_s - start - upload_s)
                     + radio.burst_j(option.result_bytes, down_s, uplink=False)
                     + energy.compute_j(ready + (rest_s if state.hedged else 0.0)))
        else:
            sent_s = min(upload_s, max(0.0, give_up_s - start))
            spent = ((gap_j(gap) + radio.burst_j(rate * sent_s / 8, sent_s) if sent_s > 0 else 0.0)
                     + energy.compute_j(ready + rest_s))
        joules.append(spent)
    return tuple(joules)


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
    option whose expected latency plus ``STANDARD_ERRORS`` standard errors (the scenarios' spread over
    √samples) is least: it leaves a safe option only for a gain that is clear, and reports the expected
    latency. Hedged, a request sent to the server is never later than the device's own run, so what counts
    is the expected first answer over the estimator's recent samples: an option that may win is worth
    sending even when it loses at the estimate. Sending must be expected to save at least
    ``HEDGE_MIN_GAIN_S`` over running locally.

    With another ``objective`` than latency (``dsc:energy``, ``dsc:A*latency+B*energy``), dsc minimises
    that objective's expected cost plus ``STANDARD_ERRORS`` standard errors over the same scenarios
    (:func:`least_cost`)."""

    def __init__(self, objective: Objective = LATENCY) -> None:
        self.objective = objective
        self.name = "dsc" if objective == LATENCY else f"dsc:{objective}"

    def choose(self, state: State, options: list[Option]) -> Decision:
        if self.objective != LATENCY:
            return least_cost(self.objective, state, options, state.estimated, state.reported, rate_scenarios(state),
                              max(1, len(state.recent_bps)))
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
        """Unhedged, for each option: its expected latency plus ``STANDARD_ERRORS`` standard errors (what
        dsc minimises; the first least is chosen), its expected latency, and the option."""
        rates, deadline = rate_scenarios(state), state.deadline_s
        samples = max(1, len(state.recent_bps))
        priced = []
        for option in options:
            rest = rest_on_device(option, local.head_s)
            costs = scenario_latencies(option, state.estimated, state.reported, rates,
                                       lambda t, rest=rest: t if t <= deadline else deadline + rest)
            priced.append((*with_margin(costs, samples), option))
        return priced


def least_cost(objective: Objective, state: State, options: list[Option], link: LinkState, server: ServerState,
               rates_bps: tuple[float, ...], samples: int) -> Decision:
    """The option of least expected ``objective`` plus ``STANDARD_ERRORS`` standard errors (the scenarios'
    spread over √``samples``), the uplink at each of ``rates_bps``: each scenario costs its latency (settled as dsc
    settles it: past the deadline, the deadline plus the rest on the device; hedged, the first answer) and
    its joules (:func:`scenario_energies`). Reports the chosen option's expected latency."""
    local = next((o for o in options if o.kind == "local"), None)
    priced = []
    for option in options:
        rest = rest_on_device(option, local.head_s) if local else 0.0
        own = (local.head_s if local else math.inf) + option.encode_s
        give_up = min(own, state.deadline_s) if state.hedged else state.deadline_s
        settle: Callable[[float], float] = (lambda t, own=own: min(t, own)) if state.hedged else \
            (lambda t, rest=rest, give_up=give_up: t if t <= give_up else give_up + rest)
        times = scenario_latencies(option, link, server, rates_bps, settle)
        joules = scenario_energies(option, state, link, server, rates_bps, rest, give_up)
        costs = [objective.cost(t, j) for t, j in zip(times, joules)]
        priced.append((with_margin(costs, samples)[0], math.fsum(times) / len(times), option))
    _, expected_s, option = min(priced, key=lambda p: p[0])
    return Decision(option, expected_s)


class Oracle(Policy):
    """argmin at the true rate and load; needs a state that knows them."""

    def __init__(self, objective: Objective = LATENCY) -> None:
        self.objective = objective
        self.name = "oracle" if objective == LATENCY else f"oracle:{objective}"

    def choose(self, state: State, options: list[Option]) -> Decision:
        if state.actual is None:
            raise EdgesplitError("the oracle policy needs the true link rate: use it in simulation or over an "
                                 "emulated link")
        link, server = state.actual, state.current or state.reported
        if self.objective == LATENCY:
            return argmin(options, link, server)
        return least_cost(self.objective, state, options, link, server, (link.uplink_bps,), 1)


PolicyFactory = Callable[[str, LinkState, list[Option]], Policy]
POLICIES: Registry[PolicyFactory] = Registry("policy", EdgesplitError)
POLICIES.register("best-static")(lambda arg, mean, options: BestStatic(mean))
POLICIES.register("dsc")(lambda arg, mean, options: DynamicSplit(parse_objective(arg) if arg else LATENCY))
POLICIES.register("oracle")(lambda arg, mean, options: Oracle(parse_objective(arg) if arg else LATENCY))


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
    offload, and an objective for dsc and oracle); a clear error for an unknown name, a misplaced argument
    or a malformed objective."""
    name, _, arg = spec.partition(":")
    factory = POLICIES.get(name)
    if name in ("dsc", "oracle") and (arg or spec.endswith(":")):
        try:
            parse_objective(arg)
        except EdgesplitError as exc:
            raise EdgesplitError(f"policy {spec!r}: {exc}") from None
    elif arg and name not in ("static", "offload"):
        raise EdgesplitError(f"policy {name!r} takes no argument (got {spec!r})")
    if name == "static" and not arg:
        raise EdgesplitError("static needs an option: static:CUT (fp32) or static:split:CUT:CODEC")
    return factory, arg


def make_policy(spec: str, options: list[Option], mean_link: LinkState) -> Policy:
    """The policy for ``spec``; a fixed one resolves its option among ``options`` (all of them, not only
    those a dynamic policy may pick); best-static picks at ``mean_link``."""
    factory, arg = check_policy(spec)
    return factory(arg, mean_link, options)


def allowed_options(options: list[Option], private: bool, lossy: bool,
                    min_agreement: float | None = None, jpeg: bool = True) -> list[Option]:
    """The options dynamic policies may pick: exact ones unless ``lossy``, never offload when ``private``;
    with ``min_agreement``, lossy ones too but only those measured to agree with the exact answer at least
    that often (``edgesplit fidelity``). Without ``jpeg``, no JPEG offload (lossy input)."""
    if not jpeg:
        options = [o for o in options if o.exact or o.kind != "offload"]
    if min_agreement is not None:
        lossy_options = [o for o in options if not o.exact and not (private and o.kind == "offload")]
        if lossy_options and all(o.agreement is None for o in lossy_options):
            raise EdgesplitError(f"--min-agreement needs measured agreements, and none of the {len(lossy_options)} "
                                 "lossy options has one: pass --fidelity FILE (the fidelity.json of edgesplit "
                                 "fidelity) or a device profile made with edgesplit profile --fidelity FILE")
        return [o for o in options if (o.exact or (o.agreement is not None and o.agreement >= min_agreement))
                and not (private and o.kind == "offload")]
    return [o for o in options if (lossy or o.exact) and not (private and o.kind == "offload")]
