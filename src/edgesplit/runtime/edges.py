"""One device, several edge servers: (edge, cut, codec) are the options.

Each edge has its own :class:`~edgesplit.runtime.client.DeviceClient`, so its own device core: a link
estimate of its own (the paths to two edges share little past the radio, and an edge's receive stamps time
only its own path), its own load reports, probes, backoff and options priced with its own profile (a GPU
edge and a CPU edge differ). Per request, every edge's policy decides at the same instant; the device sends
to the edge whose choice is expected to answer first, and runs locally only when no edge's policy prefers
sending. An edge that fails fast (unreachable, refusing with 429/503, down since an earlier failure, another
model) hands the request to the next-best edge; only a request that none could take, or whose deadline
passed, ends on the device. A request is recorded by the edge it was last sent to (``edge`` in its
record), a local one by the first edge's core, so the records count every request once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgesplit.device import DEADLINE_PASSED, HEDGE_WON, Outcome, RequestRecord, summarize
from edgesplit.errors import EdgesplitError
from edgesplit.policies import Decision, State
from edgesplit.runtime.client import DeviceClient


class MultiEdgeClient:
    """A device that may send each request to any of several edge servers (one client per edge)."""

    def __init__(self, clients: list[DeviceClient]) -> None:
        if not clients:
            raise EdgesplitError("a device needs at least one edge server")
        urls = [c.url for c in clients]
        if len(set(urls)) != len(urls):
            raise EdgesplitError(f"an edge server is listed twice: {', '.join(urls)}")
        if any(c.engine is not clients[0].engine for c in clients):
            raise EdgesplitError("every edge's client must run the same device engine: one device, one model")
        if any(c.config.device.hedge for c in clients):
            raise EdgesplitError("--hedge with several edge servers is not supported: hedge with one --server")
        self.clients = clients
        for client in clients[1:]:
            client.epoch = clients[0].epoch  # one clock for every record
        self.records: list[RequestRecord] = []

    def connect(self) -> list[str]:
        """Connect to every edge (see :meth:`DeviceClient.connect`); a line per edge."""
        return [client.connect() for client in self.clients]

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def __enter__(self) -> MultiEdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, image: np.ndarray, arrived: float | None = None) -> RequestRecord:
        """Answer one uint8 image (3, H, W) at the edge expected to answer first, or here; always exactly
        one result (see :meth:`DeviceClient.infer`)."""
        begun, x = self.clients[0].take_up(image)
        arrived = begun if arrived is None else arrived
        plans = [(client, *client.plan(begun)) for client in self.clients]
        sending = sorted((p for p in plans if p[1].option.kind != "local"), key=lambda p: p[1].predicted_s)
        output, mid, last = None, None, None
        for client, decision, state, stale in sending:
            if last is not None and (decision.option.kind, decision.option.cut) != (last[1].option.kind,
                                                                                   last[1].option.cut):
                mid = None  # another cut: its head runs anew
            output, outcome, mid = client.attempt(decision.option, image, x, begun, mid)
            last = (client, decision, state, stale, outcome)
            if output is not None or outcome.fallback_reason in (DEADLINE_PASSED, HEDGE_WON):
                break  # answered, or out of time: no other edge can help any more
        if last is None:
            return self._keep(self._local(plans, x, arrived))
        client, decision, state, stale, outcome = last
        if output is None:
            output = client.finish_locally(decision.option, x, mid)
        probed = client.maybe_probe() if stale and outcome.measured_bps is None else 0
        return self._keep(client.keep(arrived, decision, state, outcome, output, probed, client.url))

    def _local(self, plans: list[tuple[DeviceClient, Decision, State, bool]], x: np.ndarray,
               arrived: float) -> RequestRecord:
        """No edge's policy prefers sending: run here, and let every edge whose estimate is stale probe."""
        output = self.clients[0].engine.local(x)
        probed = sum(client.maybe_probe() for client, _, _, stale in plans if stale)
        client, decision, state, _ = plans[0]
        return client.keep(arrived, decision, state, Outcome("local"), output, probed)

    def _keep(self, record: RequestRecord) -> RequestRecord:
        record = dataclasses.replace(record, index=len(self.records))
        self.records.append(record)
        return record

    def summary(self) -> dict:
        """Every request once (see :func:`~edgesplit.device.summarize`), and how many each edge answered."""
        deadline = min(client.core.deadline_s for client in self.clients)
        summary = summarize(self.records, deadline)
        summary["edges"] = {client.url: sum(r.edge == client.url and r.executed != "local" for r in self.records)
                            for client in self.clients}
        return summary
