"""The scheduler benchmark runs end to end on a small fleet and reports what it measured."""

from __future__ import annotations

import pytest

from lepton_edge.tools.bench_scheduler import (
    bench_failover,
    bench_ingest_ceiling,
    bench_ingestion,
    bench_packing,
    print_table,
)
from tests.support.mosquitto import require_mosquitto

pytestmark = pytest.mark.integration


def test_small_benchmark_reports_ingestion_and_failover(tmp_path, capsys) -> None:
    require_mosquitto()
    ingestion = bench_ingestion(devices=40, duration_s=3, rate_hz=4, workdir=tmp_path / "ingest", warmup_s=2)
    assert ingestion["offered_msg_per_s"] == 160
    assert ingestion["received_msg_per_s"] > 0 and ingestion["written_msg_per_s"] > 0
    assert ingestion["simulator"]["telemetry"] > 0 and ingestion["samples"]
    ingestion["ceiling"] = bench_ingest_ceiling(devices=50, rounds=2, workdir=tmp_path / "ceiling")
    assert ingestion["ceiling"]["messages"] == 100 and ingestion["ceiling"]["msg_per_s"] > 0

    failover = bench_failover(deaths=3, devices=8, workloads=4, workdir=tmp_path / "failover")
    assert failover["moved"] == 3 and failover["missed"] == 0
    assert 0 < failover["median_ms"] <= failover["p99_ms"] < 10_000

    placement = {"n_workloads": 10, "n_devices": 5, "plan_s": 0.001, "replan_s": 0.001, "failover_s": 0.001,
                 "moved_on_failover": 0, "workloads_on_failed_devices": 0, "balance": {"max_over_lower_bound": 1.0}}
    packing = bench_packing(devices=3, workloads=9, workdir=tmp_path / "packing")
    assert packing["workloads_per_device"] == {"min": 3, "mean": 3.0, "max": 3}
    assert packing["expected_capacity_fps"] == [40.0 * 1.5]  # three streams batched
    assert packing["learned_capacity_fps"]["min"] > 40.0  # more than one stream gives: batched throughput learned
    dead = packing["failover"]
    assert dead["moved"] == dead["device_workloads"] == 3 and dead["others_moved"] == dead["survivor_restarts"] == 0

    print_table({"ingestion": ingestion, "placement": placement, "failover": failover, "packing": packing})
    out = capsys.readouterr().out
    assert "scheduler ingestion" in out and "scheduler failover" in out and "median" in out
    assert "scheduler packing" in out and "3 of 3 moved" in out
