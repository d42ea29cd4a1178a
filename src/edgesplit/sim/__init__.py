"""Trace-driven simulation of a device, its uplink and a batching edge server."""

from edgesplit.sim.loop import Request, SimConfig, Workload, simulate, summarize

__all__ = ["Request", "SimConfig", "Workload", "simulate", "summarize"]
