"""Trace-driven simulation of a device, its uplink and a batching edge server; and of fleets of devices
sharing the edge's replicas."""

from edgesplit.sim.fleet import FleetDevice, FleetResult, FleetSimConfig, ReplicaStats, build_fleet, simulate_fleet
from edgesplit.sim.loop import SimConfig, Workload, simulate

__all__ = ["FleetDevice", "FleetResult", "FleetSimConfig", "ReplicaStats", "SimConfig", "Workload", "build_fleet",
           "simulate", "simulate_fleet"]
