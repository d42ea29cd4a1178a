"""Chaos: the edge server is killed (SIGKILL) mid-run and restarted on the same port; every request is still
answered, locally while the server is down, and every device goes back to the server once it is up.

``edgesplit serve resnet18 --input-size 64 --warm-up`` runs in its own process; ``--devices`` device
threads (as in ``soak.py``, each a :class:`~edgesplit.runtime.client.DeviceClient` at ``--rate``
requests/s) run static policies only, offload and every natural bottleneck, so each of them wants the
server whenever it can have it. After ``--before-s`` the server is killed; ``--down-s`` later it is
started again on the same port, and the run goes on ``--after-s`` from when it answers again. Reported:
the share of requests answered (target 100 %), how long the new server took to answer after its start,
per device how long after that it used the server again (its backoff, doubling from 0.5 s to at most
8 s while the server was down, decides), and the fallbacks by reason.

    python benchmarks/chaos.py [--devices 8] [--before-s 10] [--down-s 5] [--after-s 20]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; the servers inherit it

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from rich.table import Table  # noqa: E402

from edgesplit.demo import free_ports, server_process  # noqa: E402
from soak import (INPUT_SIZE, LOGS, MODEL, RESULTS, Device, Fleet, console, policies_for, print_tally,  # noqa: E402
                  serve_command, tally)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second per device")
    parser.add_argument("--before-s", type=float, default=10.0, help="the server's first life")
    parser.add_argument("--down-s", type=float, default=5.0, help="from the kill to the restart")
    parser.add_argument("--after-s", type=float, default=20.0, help="from when the new server answers")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--input-size", type=int, default=INPUT_SIZE)
    parser.add_argument("--out", type=Path, default=RESULTS / "chaos.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the devices share this machine's cores with the server
    device = Device.build(args.model, args.input_size)
    policies = policies_for(device, dynamic=False)
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    command = serve_command(args.model, args.input_size, port)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(server_process(command, url, LOGS / "chaos-server-1.log"))
        fleet = Fleet(url, device, policies, args.devices, args.rate)
        fleet.start()
        time.sleep(args.before_s)
        first.kill()
        killed = time.monotonic()
        console.print(f"killed the server (pid {first.pid}) with SIGKILL")
        time.sleep(args.down_s)
        restarted = time.monotonic()
        second = stack.enter_context(server_process(command, url, LOGS / "chaos-server-2.log"))
        ready = time.monotonic()
        console.print(f"restarted it on port {port} (pid {second.pid}); it answered {ready - restarted:.1f} s later")
        time.sleep(args.after_s)
        fleet.stop()
    counts = tally(fleet)
    remote_after = [s for s in fleet.served if s.at > ready and s.record.executed != "local"]
    back = {k: min((s.at - ready for s in remote_after if s.device == k), default=None) for k in range(args.devices)}
    answered_share = counts["answered"] / counts["sent"]
    down = [s for s in fleet.served if killed <= s.at < ready]
    down_locally = sum(s.record.executed == "local" for s in down)
    print_tally(f"chaos: {args.devices} devices × {args.rate:g} requests/s, server killed after {args.before_s:g} s, "
                f"restarted {args.down_s:g} s later", counts,
                [("answered", f"{100 * answered_share:.1f} %"),
                 ("answered while the server was down", f"{len(down)} ({down_locally} locally)"),
                 ("restart → server answers", f"{ready - restarted:.1f} s")])
    table = Table(title="back on the server: seconds from when the restarted server answered")
    for column in ("device", "policy", "requests", "remote", "local", "back after s"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for k in range(args.devices):
        mine = [s.record for s in fleet.served if s.device == k]
        local = sum(r.executed == "local" for r in mine)
        table.add_row(str(k), policies[k % len(policies)], str(len(mine)), str(len(mine) - local), str(local),
                      "never" if back[k] is None else f"{back[k]:.2f}")
    console.print(table)
    returned = [b for b in back.values() if b is not None]
    verdict = counts["lost"] == 0 and counts["answered"] == counts["sent"] and len(returned) == args.devices
    console.print(f"{'PASS' if verdict else 'FAIL'}: {100 * answered_share:.1f} % answered (target 100 %), "
                  f"{len(returned)}/{args.devices} devices back on the server, median "
                  f"{statistics.median(returned) if returned else float('nan'):.2f} s, at most "
                  f"{max(returned, default=float('nan')):.2f} s after it answered", style="green" if verdict else "red")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "model": args.model, "input_size": args.input_size, "devices": args.devices, "rate": args.rate,
        "before_s": args.before_s, "down_s": args.down_s, "after_s": args.after_s, "policies": policies,
        "restart_to_ready_s": round(ready - restarted, 3), "answered_share": answered_share, **counts,
        "back_on_server_s": {str(k): None if b is None else round(b, 3) for k, b in back.items()}}, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
