"""What a request costs the device's battery: its processor's compute and its radio's transfers.

    energy = compute_w × seconds the device computes + radio joules

The device computes the head (and the encoding) of a split or an offload, the whole model for local, and the
rest of the model too when it falls back (or hedges). Its radio follows the power model of Huang et al., "A
Close Examination of Performance and Power Characteristics of 4G LTE Networks", MobiSys 2012
(:data:`RADIOS`; docs/energy.md gives the numbers and where they come from):

- a burst sent at r Mbit/s draws ``α_u·r + β`` mW while it lasts (received: ``α_d·r + β``), that is
  ``α`` mJ per Mbit plus ``β`` mW over its duration;
- after its last burst the radio stays in a high-power *tail* (``tail_mw`` for ``tail_s``) before it goes
  idle; a burst that finds it idle first pays its *promotion* (``promotion_mw`` for ``promotion_s``).

A burst that starts within the tail of the previous one cuts that tail short: back-to-back transfers share
one tail. :class:`RadioMeter` charges each burst the radio's energy since the previous burst ended (that
tail, at most ``tail_s`` of it, plus a promotion when the gap outlasted the tail) and the burst itself. The
first burst of a run is charged a whole tail and a promotion (a gap of ``inf``): the tail is the one the
radio spends after the run's last burst, so the records of a run add up to its radio's energy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgesplit.errors import EdgesplitError
from edgesplit.registry import Registry

PHONE_COMPUTE_W = 3.0  # a phone SoC's big CPU cores under sustained inference (2–5 W is usual): an assumption


@dataclass(frozen=True, kw_only=True)
class Radio:
    """A radio's power model: transfers, tail and promotion (powers in mW, as the paper gives them)."""

    name: str
    uplink_mw_per_mbps: float  # α_u
    downlink_mw_per_mbps: float  # α_d
    active_mw: float  # β: drawn while a burst lasts, whatever its rate
    promotion_mw: float
    promotion_s: float
    tail_mw: float
    tail_s: float

    def burst_j(self, n_bytes: float, seconds: float, uplink: bool = True) -> float:
        """Joules to send (or receive) ``n_bytes`` over ``seconds``: ``(α·r + β)·t = α·Mbit + β·t``."""
        alpha = self.uplink_mw_per_mbps if uplink else self.downlink_mw_per_mbps
        return (alpha * n_bytes * 8e-6 + self.active_mw * seconds) / 1e3

    def gap_j(self, gap_s: float) -> float:
        """Joules the radio draws over ``gap_s`` between two bursts: its tail (at most ``tail_s``), and the
        next burst's promotion once the gap has outlasted the tail (``inf``: the radio was idle)."""
        if not gap_s > 0:
            return 0.0
        tail = self.tail_mw * min(gap_s, self.tail_s) / 1e3
        return tail + (self.promotion_mw * self.promotion_s / 1e3 if gap_s > self.tail_s else 0.0)


RADIOS: Registry[Radio] = Registry("radio")
# Huang et al. 2012: α_u, α_d, β from Table 4 (the data transfer power model); promotion and tail from Table 3.
RADIOS.register("lte")(Radio(name="lte", uplink_mw_per_mbps=438.39, downlink_mw_per_mbps=51.97, active_mw=1288.04,
                             promotion_mw=1210.7, promotion_s=0.2601, tail_mw=1060.0, tail_s=11.576))
RADIOS.register("wifi")(Radio(name="wifi", uplink_mw_per_mbps=283.17, downlink_mw_per_mbps=137.01, active_mw=132.86,
                              promotion_mw=124.4, promotion_s=0.0791, tail_mw=119.3, tail_s=0.2381))


@dataclass(frozen=True)
class DeviceEnergy:
    """What the device is made of, as far as its battery is concerned: its processor and its radio."""

    compute_w: float = PHONE_COMPUTE_W
    radio: Radio = field(default_factory=lambda: RADIOS.get("lte"))

    def __post_init__(self) -> None:
        if not (math.isfinite(self.compute_w) and self.compute_w >= 0):
            raise EdgesplitError(f"the device's compute power must be a finite number of watts >= 0, got "
                                 f"{self.compute_w!r}")

    def compute_j(self, seconds: float) -> float:
        return self.compute_w * seconds


class RadioMeter:
    """One device's radio over time: each burst is charged the gap since the previous burst ended and itself.

    Bursts are charged in the order they are reported; one that overlaps the previous is charged its base
    power only past the previous one's end (the radio is up once, whatever it carries)."""

    def __init__(self, radio: Radio) -> None:
        self.radio = radio
        self.last_end_s = -math.inf

    def idle_s(self, at_s: float) -> float:
        """Since the radio's last burst ended, at ``at_s`` (0 while one lasts; ``inf`` before the first)."""
        return max(0.0, at_s - self.last_end_s)

    def burst(self, start_s: float, seconds: float, n_bytes: float, uplink: bool = True) -> float:
        """Charge a burst of ``n_bytes`` from ``start_s`` for ``seconds``; returns its joules."""
        end_s = start_s + seconds
        overlap_s = max(0.0, min(end_s, self.last_end_s) - start_s)
        joules = (self.radio.gap_j(start_s - self.last_end_s) + self.radio.burst_j(n_bytes, seconds, uplink)
                  - self.radio.active_mw * overlap_s / 1e3)
        self.last_end_s = max(self.last_end_s, end_s)
        return joules
