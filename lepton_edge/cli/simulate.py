"""`lepton-edge simulate`: a fleet of simulated devices speaking the real protocol."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

from lepton_edge.scheduler.simulator import PER_DEVICE_LIMIT, FleetSimulator, parse_broker, run_until

log = logging.getLogger("lepton_edge.cli.simulate")

DESCRIPTION = "Simulate a fleet of devices (births, telemetry, desired/reported configs) against a broker."
EPILOG = """examples:
  lepton-edge simulate --devices 50 --broker 127.0.0.1:1883
  lepton-edge simulate --devices 10000 --broker 127.0.0.1:1883 --rate 1 --mode bulk --duration 60 \\
      --stats-file out/simulator.json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, required=True, help="number of simulated devices")
    p.add_argument("--broker", required=True, help="MQTT broker as host:port")
    p.add_argument("--rate", type=float, default=1.0, help="telemetry messages per second per device (default 1)")
    p.add_argument("--prefix", default="sim", help="device ids are <prefix>-00000, ... (default sim)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C/SIGTERM)")
    p.add_argument("--mode", choices=["auto", "device", "bulk"], default="auto",
                   help=f"one connection per device (with a last will) or a few shared ones; auto: per device up "
                   f"to {PER_DEVICE_LIMIT} devices")
    p.add_argument("--connections", type=int, default=2, help="connections in bulk mode (default 2)")
    p.add_argument("--cuda-fraction", type=float, default=0.0, help="share of devices with CUDA + TensorRT")
    p.add_argument("--capacity", type=float, default=60.0, help="fps a CPU device can run (CUDA: 4x)")
    p.add_argument("--stats-file", help="write the final statistics here as JSON")


def run(args: argparse.Namespace) -> int:
    """Run the fleet until the duration ends or SIGTERM/SIGINT."""
    host, port = parse_broker(args.broker)
    sim = FleetSimulator(host, port, args.devices, rate_hz=args.rate, prefix=args.prefix, mode=args.mode,
                         connections=args.connections, cuda_fraction=args.cuda_fraction,
                         capacity_fps=args.capacity)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    log.info("simulating %d devices (%s mode) on %s:%d at %.2f msg/s each", args.devices, sim.mode, host, port,
             args.rate)
    stats = run_until(sim, done, args.duration)
    if args.stats_file:
        Path(args.stats_file).write_text(json.dumps(stats, indent=2))
    return 0
