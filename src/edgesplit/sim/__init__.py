"""Trace-driven simulation of a device, its uplink and a batching edge server."""

from edgesplit.sim.loop import SimConfig, Workload, simulate

__all__ = ["SimConfig", "Workload", "simulate"]
