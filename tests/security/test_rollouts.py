"""Issue #12, items 1, 2 and 6: staged rollouts as an attack path, replayed against a real scheduler (SQLite,
its API on loopback, real mosquitto) and two real device agents of one group, each running a workload.

A rollout writes desired configs to a whole group, so it is what a stolen token would use. Without the
operator role it is refused; with it, a change that leaves the device's sandbox is refused by the canary's
remote policy, which aborts the rollout there: the other device never receives it, and both keep serving.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lepton_edge.device.agent import DeviceAgent
from lepton_edge.scheduler.api import ApiServer, serve
from lepton_edge.scheduler.models import Workload
from lepton_edge.scheduler.rollouts import get_rollout
from lepton_edge.scheduler.service import SchedulerService
from tests.device.helpers import idle_config
from tests.support.api_client import ApiClient, make_token
from tests.support.mosquitto import MosquittoBroker
from tests.support.scheduler import fast_config, wait_until

pytestmark = pytest.mark.integration

AREA = "rollouts"
GROUP = "gate"
ESCAPE = {"model": {"labels": "/etc/passwd"}}


class Fleet:
    """The scheduler, its API and the two devices of group ``gate``."""

    def __init__(self, service: SchedulerService, server: ApiServer, devices: list[str]) -> None:
        self.service, self.store, self.devices = service, service.store, devices
        self.url = server.url

    def serving(self) -> bool:
        """Both devices online, running their workload (fps in their latest telemetry)."""
        devices = [self.store.get_device(d) for d in self.devices]
        return all(d is not None and d.online and (d.telemetry or {}).get("fps", 0) > 0 for d in devices)


@pytest.fixture(scope="module")
def fleet(color_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    folder = tmp_path_factory.mktemp("rollouts")
    prefix = f"ro{uuid.uuid4().hex[:6]}"
    devices = [f"{prefix}-a", f"{prefix}-b"]
    with MosquittoBroker(folder / "broker") as broker:
        service = SchedulerService(fast_config(broker.port, f"sqlite:///{folder}/fleet.db")).start()
        agents = [DeviceAgent(idle_config(folder, broker.port, d)) for d in devices]
        try:
            for agent in agents:
                agent.start()
            wait_until(lambda: all((d := service.store.get_device(x)) and d.online for x in devices), what="online")
            for i, device_id in enumerate(devices):
                service.store.set_device_group(device_id, GROUP)
                service.add_workload(
                    Workload(
                        workload_id=f"door-{i}",
                        source_uri="synthetic://shapes?fps=5&width=64&height=48",
                        model=str(color_model),
                        required_fps=2,
                        config={
                            "backend": {"type": "onnxruntime", "intra_op_threads": 1, "warmup_runs": 0},
                            "postprocess": {"type": "classify", "top_k": 2},
                        },
                    )
                )
            with serve(service, "127.0.0.1", 0) as server:
                running = Fleet(service, server, devices)
                wait_until(
                    lambda: (
                        running.serving() and sum(a.status == "applied" for a in service.store.list_assignments()) == 2
                    ),
                    timeout=40,
                    what="both workloads applied and running",
                )
                yield running
        finally:
            for agent in agents:
                agent.stop()
            service.stop()


def test_a_rollout_without_the_operator_role(fleet: Fleet, attack: Any) -> None:
    body = {"rollout_id": "sneaky", "group": GROUP, "config_patch": ESCAPE}
    anonymous = attack("anonymous POST /api/rollouts", AREA)
    status, answer = ApiClient(fleet.url).call("POST", "/api/rollouts", body)
    assert status == 401, answer
    anonymous.refused_because(f"401 {answer['detail']}")
    viewer = attack("viewer POST /api/rollouts and /abort", AREA)
    client = ApiClient(fleet.url, make_token(fleet.store, "viewer"))
    status, answer = client.call("POST", "/api/rollouts", body)
    assert status == 403, answer
    assert client.call("POST", "/api/rollouts/sneaky/abort")[0] == 403
    viewer.refused_because(f"403 {answer['detail']}")
    assert fleet.store.list_rollouts() == [] and fleet.serving()


def test_a_rollout_that_leaves_the_sandbox_stops_at_the_canary(fleet: Fleet, attack: Any) -> None:
    rec = attack("operator rollout of labels=/etc/passwd to a group", AREA)
    before_assignments = {a.workload_id: a.device_id for a in fleet.store.list_assignments()}
    operator = ApiClient(fleet.url, make_token(fleet.store, "operator"))
    body = {"rollout_id": "passwd", "group": GROUP, "config_patch": ESCAPE, "interval_s": 0, "bake_s": 1}
    started = time.monotonic()
    status, answer = operator.call("POST", "/api/rollouts", body)
    assert status == 201, answer  # the schema allows a labels path: the device's policy is the boundary
    rollout = wait_until(
        lambda: (r := get_rollout(fleet.store, "passwd")).state == "rolled_back" and r, timeout=40, what="rolled back"
    )
    seconds = time.monotonic() - started
    (canary,) = rollout.waves[0].devices
    (other,) = set(fleet.devices) - {canary}
    assert rollout.current_wave == 0 and rollout.rolled_back == [canary]
    assert rollout.waves[0].failures == {canary: "rejected the new config"}
    (refusal,) = [e for e in fleet.store.list_events(limit=1000) if e.kind == "config.rejected"]
    errors = refusal.details["errors"]  # the canary's report (its newer rollback may have been applied since)
    assert refusal.device_id == canary and any("labels" in e for e in errors), errors  # names the field
    # The other device never got the patched config: it would have refused it too (one refusal in all, above).
    # Its desired version may still move: with several workloads per device, the canary's refused workload is
    # placed on it (a refused workload moves off the device that refused it), with its unpatched config.
    ours = {a.workload_id for a in fleet.store.list_assignments() if a.device_id == other}
    assert ours >= {w for w, d in before_assignments.items() if d == other}  # its own workload stayed
    wait_until(fleet.serving, timeout=30, what="both devices serving")
    rec.refused_because(f"canary {errors[0][:200]}; rollout rolled back: {rollout.reason}"[:400])
    rec.figures.update(devices_reached=1, devices_in_group=2, seconds_to_rolled_back=round(seconds, 1))
