"""Staged rollouts: wave planning and the health verdict (pure), the store's records on SQLite and
PostgreSQL, and rollouts end to end with a real scheduler, real simulated devices on a real broker and the
real HTTP API: a healthy rollout goes wave by wave; a canary that rolls back or runs slow aborts it and the
waves done are rolled back; an operator's abort does the same; bad requests get 422 naming the field."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lepton_edge.fleet.protocol import DesiredConfig
from lepton_edge.scheduler.api import serve
from lepton_edge.scheduler.desired import device_config_for, split_document
from lepton_edge.scheduler.rollouts import (
    DeviceHealth,
    HealthCriteria,
    Rollout,
    RolloutSpec,
    Wave,
    changes_by_device,
    create_rollout,
    get_rollout,
    list_rollouts,
    plan_waves,
    request_abort,
    source_errors,
    wave_verdict,
)
from lepton_edge.scheduler.service import SchedulerService
from lepton_edge.scheduler.simulator import DeviceSpec, FleetSimulator, SimDevice
from lepton_edge.scheduler.store import StoreConflict
from lepton_edge.scheduler.stores import open_store
from tests.scheduler.test_dashboard import CHROMIUM_FLAGS, CSP_WATCH, LOGIN_SHOWN, chromium
from tests.support.api_client import ApiClient, make_token
from tests.support.devtools import Browser
from tests.support.scheduler import fast_config, wait_until, workload

PATCH = {"postprocess": {"type": "detect", "conf_threshold": 0.4}}
SIGNATURE = base64.b64encode(bytes(64)).decode()


def signed(version: int, digest: str, target: str = "det") -> dict[str, Any]:
    """An artifact reference for ``target`` at ``version`` (the simulator checks versions, not signatures)."""
    url = f"https://models.example/{target}-{digest[:4]}.onnx"
    return {"url": url, "size": 1234, "sha256": digest * 32, "version": version, "target": target,
            "signature": SIGNATURE}  # fmt: skip


OLD, NEW = signed(1, "aa"), signed(2, "bb")
BACK = signed(3, "aa")
"""The previous artifact (version 1), the new one (version 2), and the previous content re-signed as version 3."""
IDS = [f"d{i}" for i in range(10)]


# ------------------------------------------------------------------------------------- wave planning


@pytest.mark.parametrize(
    ("n", "options", "sizes"),
    [
        (5, {"canary_count": 1, "batch_size": 2}, [1, 2, 2]),
        (6, {"canary_count": 2, "batch_size": 3}, [2, 3, 1]),
        (10, {"canary_percent": 25, "batch_size": 5}, [3, 5, 2]),  # 2.5 rounds up
        (10, {"canary_percent": 20, "batch_size": 4}, [2, 4, 4]),  # exact: not rounded up to 3
        (3, {"canary_percent": 10}, [1, 1, 1]),  # at least one device
        (2, {"canary_count": 5, "batch_size": 3}, [2]),  # a group smaller than the canary: one wave
        (10, {"canary_count": 1, "batch_size": 1, "batch_growth": 2}, [1, 1, 2, 4, 2]),
        (10, {"batch_size": 2, "batch_growth": 1.5}, [1, 2, 3, 4]),  # 2, 3, 4.5 -> 5 (only 4 left)
        (0, {"canary_count": 1}, []),
    ],
)
def test_plan_waves(n: int, options: dict[str, Any], sizes: list[int]) -> None:
    waves = plan_waves(IDS[:n], **options)
    assert [len(w) for w in waves] == sizes
    assert [d for w in waves for d in w] == IDS[:n]  # every device once, in order


# ------------------------------------------------------------------------------------ health verdict


def health(outcome: str = "applied", baseline: float | None = 10.0, fps: float | None = 10.0, d: str = "d") -> Any:
    return DeviceHealth(d, outcome, baseline, fps)  # type: ignore[arg-type]


def test_verdict_healthy_wave() -> None:
    verdict = wave_verdict([health(d="a"), health(fps=9.0, d="b")], HealthCriteria())
    assert verdict.healthy and verdict.failures == {}
    assert verdict.figures["min_fps_ratio"] == 0.9 and verdict.figures["applied"] == 2


@pytest.mark.parametrize("outcome", ["rejected", "rolled_back", "offline"])
def test_verdict_a_failed_device_fails_the_wave_by_default(outcome: str) -> None:
    verdict = wave_verdict([health(d="a"), health(outcome, d="b")], HealthCriteria())
    assert not verdict.healthy
    assert list(verdict.failures) == ["b"] and verdict.reason and "b:" in verdict.reason


def test_verdict_fps_below_the_devices_own_before() -> None:
    criteria = HealthCriteria(min_fps_ratio=0.8)
    verdict = wave_verdict([health(baseline=10.0, fps=7.9)], criteria)
    assert not verdict.healthy and "79%" in verdict.failures["d"]
    assert wave_verdict([health(baseline=10.0, fps=8.0)], criteria).healthy
    assert wave_verdict([health(baseline=0.0, fps=0.0)], criteria).healthy  # nothing ran before: not judged
    assert wave_verdict([health(baseline=10.0, fps=1.0)], HealthCriteria(min_fps_ratio=None)).healthy


def test_verdict_source_errors_on_the_new_config() -> None:
    rows = [
        {"data": {"config_version": 3, "sources": {"cam": "failed"}}},  # the old config: not counted
        {"data": {"config_version": 4, "sources": {"cam": "running", "b": "stalled"}}},
        {"data": {"config_version": 4, "sources": {"cam": "failed"}}},
        {"data": {"config_version": 5, "sources": {"cam": "running"}}},
    ]
    errors = source_errors(rows, above=3)
    assert errors == 2
    assert wave_verdict([DeviceHealth("d", "applied", source_errors=errors)], HealthCriteria()).healthy
    failed = wave_verdict([DeviceHealth("d", "applied", source_errors=errors)], HealthCriteria(max_source_errors=1))
    assert not failed.healthy and "failed or stalled source" in failed.failures["d"]
    assert failed.figures["source_errors"] == 2


def test_verdict_pending_devices_fail_only_after_the_apply_timeout() -> None:
    devices = [health("pending", fps=None)]
    assert wave_verdict(devices, HealthCriteria()).healthy
    timed_out = wave_verdict(devices, HealthCriteria(), timed_out=True)
    assert not timed_out.healthy and "apply_timeout_s" in timed_out.failures["d"]


def test_verdict_count_and_ratio_limits() -> None:
    devices = [health("rolled_back", d="a"), health(d="b"), health(d="c"), health(d="e")]
    assert wave_verdict(devices, HealthCriteria(max_failures=1)).healthy
    assert not wave_verdict(devices, HealthCriteria(max_failures=None, max_failure_ratio=0.2)).healthy
    assert wave_verdict(devices, HealthCriteria(max_failures=None, max_failure_ratio=0.25)).healthy
    assert wave_verdict(devices, HealthCriteria(max_failures=None, max_failure_ratio=None)).healthy


def test_spec_needs_a_change_and_one_canary_size() -> None:
    with pytest.raises(ValidationError, match="config_patch, an artifact"):
        RolloutSpec(rollout_id="r", group="g")
    with pytest.raises(ValidationError, match="not both"):
        RolloutSpec(rollout_id="r", group="g", config_patch=PATCH, canary_count=1, canary_percent=5)
    with pytest.raises(ValidationError, match="sha256"):
        RolloutSpec(rollout_id="r", group="g", artifact={"url": "https://a/m.onnx", "size": 1, "sha256": "x"})
    with pytest.raises(ValidationError, match="less than or equal"):
        RolloutSpec(rollout_id="r", group="g", config_patch=PATCH, bake_s=1e12)


@pytest.mark.parametrize(
    ("rollback", "message"),
    [
        (None, "needs a rollback_artifact.*lepton-edge sign --version N\\+1"),
        (signed(2, "aa"), "version 2 must be above artifact version 2.*--version 3"),
        (signed(3, "aa", target="other"), "target 'other' but artifact is for 'det'"),
        ({k: v for k, v in BACK.items() if k != "signature"}, "must be signed with a version"),
    ],
)
def test_an_artifact_rollout_needs_a_higher_signed_rollback_artifact(rollback: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        RolloutSpec(rollout_id="r", group="g", artifact=NEW, rollback_artifact=rollback)
    assert [e["loc"] for e in caught.value.errors()] == [("rollback_artifact",)]
    assert RolloutSpec(rollout_id="r", group="g", artifact=NEW, rollback_artifact=BACK).rollback_artifact == BACK
    with pytest.raises(ValidationError, match="only for artifact rollouts"):
        RolloutSpec(rollout_id="r", group="g", config_patch=PATCH, rollback_artifact=BACK)


# ------------------------------------------------------------------------- what reaches a device


def test_a_running_rollout_changes_the_workloads_of_its_started_waves_only() -> None:
    signature = base64.b64encode(bytes(64)).decode()
    old = {"url": "https://a/old.onnx", "size": 1, "sha256": "1" * 64, "signature": signature}
    new = {"url": "https://a/new.onnx", "size": 2, "sha256": "2" * 64}
    back = old | {"version": 1}
    spec = RolloutSpec(rollout_id="r", group="g", config_patch=PATCH, artifact=new, rollback_artifact=back)
    waves = [Wave(devices=["a"]), Wave(devices=["b", "c"])]
    rollout = Rollout(spec=spec, state="running", created_at=0, updated_at=0, current_wave=0, waves=waves)
    changes = changes_by_device([rollout])
    assert list(changes) == ["a"]
    base = workload("w", config={"postprocess": {"type": "detect", "iou_threshold": 0.5}}, artifact=old)
    changed = device_config_for(changes["a"].apply(base))
    assert changed["postprocess"] == {"type": "detect", "iou_threshold": 0.5, "conf_threshold": 0.4}
    assert changed["model"]["artifact"] == new  # replaced whole: no signature of the old one left over
    assert list(changes_by_device([rollout.model_copy(update={"current_wave": 1})])) == ["a", "b", "c"]
    for state in ("aborting", "rolled_back", "succeeded", "pending"):
        assert changes_by_device([rollout.model_copy(update={"state": state})]) == {}


# ---------------------------------------------------------------------------------------- the store


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fleet.db"
    return request.getfixturevalue("postgres_schema_url")


def test_store_keeps_rollouts_with_compare_and_set(store_url: str) -> None:
    with open_store(store_url) as store:
        spec = RolloutSpec(rollout_id="r1", group="g", config_patch=PATCH)
        rollout = create_rollout(store, spec, now=100.0)
        assert rollout.state == "pending" and rollout.revision == 1 and rollout.spec == spec
        with pytest.raises(StoreConflict, match="already has rollout 'r1'"):
            create_rollout(store, RolloutSpec(rollout_id="r2", group="g", config_patch=PATCH))
        stale = get_rollout(store, "r1")
        aborted = request_abort(store, "r1", "changed my mind", now=101.0)
        assert (aborted.state, aborted.reason, aborted.revision) == ("aborted", "changed my mind", 2)
        moved = stale.model_copy(update={"state": "running"})
        assert not store.save_rollout("r1", "running", moved.document(), stale.revision, 102.0)  # lost the race
        assert get_rollout(store, "r1").state == "aborted"
        create_rollout(store, RolloutSpec(rollout_id="r2", group="g", config_patch=PATCH), now=103.0)
        assert [d["spec"]["rollout_id"] for d in store.list_rollouts()] == ["r1", "r2"]
        assert [d["spec"]["rollout_id"] for d in store.list_rollouts(["pending"])] == ["r2"]
        store.add_rollout(
            "future", "running", {"spec": {"rollout_id": "future"}, "shape": "from a newer version"}, 104.0
        )
        assert [r.rollout_id for r in list_rollouts(store)] == ["r1", "r2"]  # skipped, placement unaffected


# ------------------------------------------------------------------------------------------ end to end


class Fleet:
    """A scheduler (with its API) and four simulated devices of group ``g``, each running one workload."""

    def __init__(self, service: SchedulerService, sim: FleetSimulator, api: ApiClient) -> None:
        self.service, self.sim, self.api = service, sim, api
        self.store = service.store
        self.devices = sorted(sim.devices)

    def start(self, **spec: Any) -> dict[str, Any]:
        body = {"rollout_id": "r1", "group": "g", "config_patch": PATCH, "interval_s": 0, "bake_s": 1.0} | spec
        status, rollout = self.api.call("POST", "/api/rollouts", body)
        assert status == 201, rollout
        return rollout

    def wait_state(self, state: str, timeout: float = 60.0) -> Rollout:
        return wait_until(
            lambda: (r := get_rollout(self.store, "r1")).state == state and r,
            timeout,
            what=f"rollout r1 {state}",
        )

    def patched(self, device_id: str) -> bool:
        """Whether the device runs the rollout's change now."""
        return has_patch(self.sim.device(device_id).config or {})

    def got_patch(self, device_id: str) -> list[int]:
        """Desired versions that carried the change to the device."""
        return [d.version for d in self.sim.device(device_id).desired_received if has_patch(d.config)]


def has_patch(config: dict[str, Any]) -> bool:
    """Whether a device document (either form) carries the change, in every workload it has."""
    workloads = split_document(config).values()
    return bool(workloads) and all(w.get("postprocess", {}).get("conf_threshold") == 0.4 for w in workloads)


@pytest.fixture
def fleet(request: pytest.FixtureRequest, fresh_broker, tmp_path, unique: str) -> Iterator[Fleet]:
    url = getattr(request, "param", "sqlite")
    store_url = f"sqlite:///{tmp_path}/fleet.db" if url == "sqlite" else request.getfixturevalue("postgres_schema_url")
    config = fast_config(fresh_broker.port, store_url)
    with SchedulerService(config) as service, serve(service, "127.0.0.1", 0) as server:
        sim = FleetSimulator("127.0.0.1", fresh_broker.port, 4, rate_hz=5.0, prefix=unique, mode="device")
        with sim:
            wait_until(lambda: sum(d.online for d in service.store.list_devices()) == 4, what="4 devices online")
            for device_id in sim.devices:
                service.store.set_device_group(device_id, "g")
            for i in range(4):
                service.add_workload(workload(f"w{i}", fps=5))
            wait_until(
                lambda: (
                    sum(sim.device(d).running for d in sim.devices) == 4
                    and all(a.status == "applied" for a in service.store.list_assignments())
                    and all((d.telemetry or {}).get("fps") == 5 for d in service.store.list_devices())
                ),
                what="a workload running on each device, its telemetry stored",
            )
            yield Fleet(service, sim, ApiClient.admin(server, service.store, "operator"))


@pytest.mark.integration
@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"], indirect=True)
def test_healthy_rollout_goes_wave_by_wave(fleet: Fleet) -> None:
    fleet.start(canary_count=1, batch_size=2)
    done = fleet.wait_state("succeeded")
    assert [w.devices for w in done.waves] == [fleet.devices[:1], fleet.devices[1:3], fleet.devices[3:]]
    assert all(w.verdict == "healthy" and w.figures["failed"] == 0 for w in done.waves)
    assert all(w.figures["min_fps_ratio"] >= 0.8 for w in done.waves)
    starts = [w.started_at or 0 for w in done.waves]
    judged = [w.finished_at or 0 for w in done.waves]
    assert starts[1] >= judged[0] and starts[2] >= judged[1]  # a wave starts only after the one before passed
    wait_until(lambda: all(fleet.patched(d) for d in fleet.devices), what="every device running the change")
    assert all(w.config == PATCH for w in fleet.store.list_workloads())  # the change now belongs to them
    status, listed = fleet.api.get("/api/rollouts")
    assert status == 200 and [r["state"] for r in listed] == ["succeeded"]


@pytest.mark.integration
@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"], indirect=True)
def test_canary_that_rolls_back_aborts_and_is_rolled_back(fleet: Fleet) -> None:
    # the canary (the first device) rolls the change back; its workload then moves, alone, to a device that
    # applies it (the others run several workloads now), and the later waves never start
    fleet.sim.set_fail(fleet.devices[0], "rolled_back")
    fleet.start(canary_count=1, batch_size=2)
    rollout = fleet.wait_state("rolled_back")
    (canary,) = rollout.waves[0].devices
    assert rollout.current_wave == 0 and rollout.waves[0].verdict == "unhealthy"
    assert "rolled_back the new config" in (rollout.reason or "") and rollout.rolled_back == [canary]
    for device_id in fleet.devices:
        if device_id != canary:
            assert fleet.got_patch(device_id) == []  # later waves never started
    (carried,) = fleet.got_patch(canary)
    last = wait_until(
        lambda: (d := fleet.sim.device(canary).desired_received[-1]).version > carried and d,
        what="the canary given a newer desired config",
    )
    assert not has_patch(last.config)
    assert all(w.config == {} for w in fleet.store.list_workloads())
    kinds = [e.kind for e in fleet.store.list_events(limit=500)]
    assert "rollout.aborted" in kinds and "rollout.rolled_back" in kinds


@pytest.mark.integration
def test_canary_below_its_own_fps_aborts(fleet: Fleet) -> None:
    slow = {"source": {"uri": "synthetic://shapes?fps=1"}}  # the change makes the source deliver 1 of 5 fps
    fleet.start(config_patch=slow, canary_percent=25, batch_size=3, bake_s=1.5)
    rollout = fleet.wait_state("rolled_back")
    (canary,) = rollout.waves[0].devices
    wave = rollout.waves[0]
    assert wave.verdict == "unhealthy" and "fps" in wave.failures[canary], wave
    assert wave.baseline_fps[canary] == pytest.approx(5.0) and wave.figures["min_fps_ratio"] < 0.8
    wait_until(lambda: all(fleet.sim.device(d).fps == 5.0 for d in fleet.devices), what="every device at 5 fps")


@pytest.mark.integration
def test_operator_abort_rolls_back_the_waves_done(fleet: Fleet) -> None:
    fleet.start(canary_count=2, batch_size=2, interval_s=600, bake_s=0.5)
    wait_until(lambda: [w.verdict for w in get_rollout(fleet.store, "r1").waves][:1] == ["healthy"], what="canary ok")
    canaries = get_rollout(fleet.store, "r1").waves[0].devices
    assert all(fleet.patched(d) for d in canaries)
    assert ApiClient(fleet.api.base, None).call("POST", "/api/rollouts/r1/abort")[0] == 401
    viewer = ApiClient(fleet.api.base, make_token(fleet.store, "viewer"))
    assert viewer.call("POST", "/api/rollouts/r1/abort")[0] == 403
    assert viewer.call("POST", "/api/rollouts", {"rollout_id": "r2", "group": "g", "config_patch": PATCH})[0] == 403
    assert viewer.get("/api/rollouts/r1")[1]["state"] == "running"
    status, body = fleet.api.call("POST", "/api/rollouts/r1/abort", {"reason": "maintenance window over"})
    assert status == 200 and body["state"] in ("aborting", "rolled_back"), body
    rollout = fleet.wait_state("rolled_back")
    assert rollout.reason == "maintenance window over" and sorted(rollout.rolled_back) == sorted(canaries)
    wait_until(lambda: not any(fleet.patched(d) for d in fleet.devices), what="no device running the change")
    later = [d for d in fleet.devices if d not in canaries]
    assert all(fleet.got_patch(d) == [] for d in later)
    status, again = fleet.api.call("POST", "/api/rollouts/r1/abort")
    assert status == 200 and again["state"] == "rolled_back"  # ended: unchanged
    audit = [(e.action, e.target, e.status, e.role) for e in fleet.store.list_audit() if e.target == "r1"]
    assert audit[:1] == [("POST /api/rollouts", "r1", 201, "operator")]
    assert ("POST /api/rollouts/r1/abort", "r1", 403, "viewer") in audit  # refusals are audited too
    assert ("POST /api/rollouts/r1/abort", "r1", 200, "operator") in audit


@pytest.mark.integration
def test_an_artifact_rollout_replaces_the_workloads_artifact(fleet: Fleet) -> None:
    artifact = {"url": "https://models.example/det-v2.onnx", "size": 1234, "sha256": "ab" * 32, "version": 2}
    rollback = {k: v for k, v in signed(3, "cd").items() if k != "target"}  # the same (no) target, a higher version
    fleet.start(config_patch={}, artifact=artifact, rollback_artifact=rollback, canary_count=1, batch_size=3)
    fleet.wait_state("succeeded")
    assert all(w.artifact == artifact for w in fleet.store.list_workloads())
    wait_until(  # the devices run (and report) the new artifact's model id
        lambda: {(d.telemetry or {}).get("artifact_id") for d in fleet.store.list_devices()} == {f"sha256:{'ab' * 32}"},
        what="every device reporting the new artifact",
    )


def run_old_artifact(fleet: Fleet) -> None:
    """Give every workload the previous artifact (version 1 of target det) and wait until the devices run it."""
    for w in fleet.store.list_workloads():
        fleet.store.update_workload(w.model_copy(update={"artifact": OLD}))
    wait_until(
        lambda: {(d.telemetry or {}).get("artifact_id") for d in fleet.store.list_devices()} == {"sha256:" + "aa" * 32},
        what="every device reporting the previous artifact",
    )


def running_artifact(fleet: Fleet, device_id: str) -> dict[str, Any] | None:
    models = [w.get("model") or {} for w in fleet.sim.device(device_id).workloads.values()]
    return models[0].get("artifact") if models else None


@pytest.mark.integration
def test_an_aborted_artifact_rollout_rolls_back_to_the_rollback_artifact(fleet: Fleet) -> None:
    run_old_artifact(fleet)
    fleet.start(config_patch={}, artifact=NEW, rollback_artifact=BACK, canary_count=1, interval_s=600, bake_s=0.5)
    wait_until(lambda: [w.verdict for w in get_rollout(fleet.store, "r1").waves][:1] == ["healthy"], what="canary ok")
    (canary,) = get_rollout(fleet.store, "r1").waves[0].devices
    assert running_artifact(fleet, canary) == NEW
    status, _ = fleet.api.call("POST", "/api/rollouts/r1/abort", {"reason": "bad model"})
    assert status == 200
    rollout = fleet.wait_state("rolled_back")
    assert rollout.rolled_back == [canary] and rollout.rollback_failed == {}
    assert running_artifact(fleet, canary) == BACK  # version 3: accepted where version 1 would be refused
    assert fleet.sim.device(canary).reports[-1].outcome == "applied"
    wait_until(
        lambda: (fleet.store.get_device(canary).telemetry or {}).get("artifact_id") == "sha256:" + "aa" * 32,
        what="the canary reporting the previous content's model id",
    )
    hosted = {a.workload_id for a in fleet.store.list_assignments() if a.device_id == canary}
    artifacts = {w.workload_id: w.artifact for w in fleet.store.list_workloads()}
    assert all(artifacts[w] == BACK for w in hosted)  # later pushes never re-send the refused version 1
    assert all(a == OLD for w, a in artifacts.items() if w not in hosted)  # the other waves never started


@pytest.mark.integration
def test_a_refused_rollback_is_reported_not_called_rolled_back(fleet: Fleet, tmp_path: Path) -> None:
    run_old_artifact(fleet)
    fleet.start(config_patch={}, artifact=NEW, rollback_artifact=BACK, canary_count=1, interval_s=600, bake_s=0.5)
    wait_until(lambda: [w.verdict for w in get_rollout(fleet.store, "r1").waves][:1] == ["healthy"], what="canary ok")
    (canary,) = get_rollout(fleet.store, "r1").waves[0].devices
    fleet.sim.set_fail(canary, "rejected")
    fleet.api.call("POST", "/api/rollouts/r1/abort", {"reason": "bad model"})
    rollout = fleet.wait_state("rollback_failed")
    assert rollout.rolled_back == [] and list(rollout.rollback_failed) == [canary]
    status, body = fleet.api.get("/api/rollouts/r1")
    assert status == 200 and body["state"] == "rollback_failed"
    errors = body["rollback_failed"][canary]
    assert errors[0] == "rejected the rollback artifact" and "simulated failure" in errors[1]
    assert running_artifact(fleet, canary) == NEW  # what the device really runs, as the state says
    row = "document.querySelector('#rollout-table tr.rollout[data-rollout-id=\"r1\"]')"
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")]
    with Browser(chromium(), flags, tmp_path / "profile") as browser:
        browser.goto(fleet.api.base + "/")
        browser.wait(LOGIN_SHOWN, "the login form")
        browser.eval(
            f"document.getElementById('login-token').value = {fleet.api.token!r};"
            "document.getElementById('login-form').requestSubmit(); true"
        )
        browser.wait(f"{row} && {row}.dataset.state === 'rollback_failed'", "the failed rollback")
        tooltip = browser.eval(f"{row}.querySelector('td.state').title")
    assert tooltip.startswith(f"rollback failed on:\n{canary}: rejected the rollback artifact; simulated failure")


def test_the_simulator_refuses_a_lower_artifact_version_like_a_device() -> None:
    device = SimDevice(DeviceSpec("d0"))

    def push(version: int, artifact: dict[str, Any]) -> Any:
        config = device_config_for(workload("w", artifact=artifact))
        return device.apply(DesiredConfig(version=version, config=config, issued_at=1.0, issued_by="t"))

    assert push(1, NEW).outcome == "applied"
    refused = push(2, OLD)
    assert refused.outcome == "rejected" and "[refused: anti-rollback]" in refused.errors[0]
    assert push(3, BACK).outcome == "applied"


@pytest.mark.integration
def test_the_dashboard_shows_a_rollout_and_aborts_it(fleet: Fleet, tmp_path: Path) -> None:
    fleet.start(canary_count=1, batch_size=1, interval_s=600, bake_s=0.5)
    wait_until(lambda: [w.verdict for w in get_rollout(fleet.store, "r1").waves][:1] == ["healthy"], what="canary ok")
    flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")]
    row = "document.querySelector('#rollout-table tr.rollout[data-rollout-id=\"r1\"]')"
    with Browser(chromium(), flags, tmp_path / "profile") as browser:
        browser.on_new_document(CSP_WATCH)
        browser.goto(fleet.api.base + "/")
        for token in (make_token(fleet.store, "viewer"), fleet.api.token):
            browser.wait(LOGIN_SHOWN, "the login form")
            browser.eval(
                f"document.getElementById('login-token').value = {token!r};"
                "document.getElementById('login-form').requestSubmit(); true"
            )
            browser.wait(f"{row} && {row}.dataset.state === 'running'", "the running rollout")
            if token != fleet.api.token:
                assert browser.eval(f"{row}.querySelector('button.abort')") is None  # a viewer may not abort
                browser.eval("document.getElementById('logout').click(); true")
        browser.wait(f"{row}.querySelector('button.abort') !== null", "the abort button for the operator")
        assert browser.eval(f"{row}.querySelector('td.wave').textContent") == "1 / 4"
        assert browser.eval(f"{row}.querySelector('td.health').textContent").startswith("healthy: 0 of 1 failed")
        browser.eval(f"{row}.querySelector('button.abort').click(); true")
        browser.wait(f"{row} && {row}.dataset.state === 'rolled_back'", "the rollout rolled back", timeout=20)
        assert browser.eval(f"{row}.querySelector('button.abort')") is None  # nothing left to abort
        assert browser.eval("window.cspViolations") == []
    rollout = get_rollout(fleet.store, "r1")
    assert (rollout.reason or "").startswith("aborted from the dashboard by ") and rollout.rolled_back


@pytest.mark.integration
def test_bad_rollout_requests_get_422_naming_the_field(fleet: Fleet) -> None:
    def problems(body: dict[str, Any]) -> list[str]:
        base = {"rollout_id": "bad", "group": "g", "config_patch": PATCH}
        status, answer = fleet.api.call("POST", "/api/rollouts", base | body)
        assert status == 422, answer
        return [p["field"] for p in answer["problems"]]

    assert problems({"config_patch": {"postprocess": {"type": "detect", "conf_threshold": 7}}}) == [
        "config_patch.postprocess.detect.conf_threshold"  # pydantic names the union's tag
    ]
    assert problems({"config_patch": {"no_such_section": 1}}) == ["config_patch.no_such_section"]
    assert problems({"config_patch": {"device_id": "other"}}) == ["config_patch.device_id"]
    assert problems({"config_patch": {"labels": ["x" * 1000] * 300}}) == ["config_patch"]  # over the payload limit
    assert problems({"group": "nobody"}) == ["group"]
    assert problems({"artifact": {"url": "https://a/m.onnx", "size": 0, "sha256": "0" * 64}}) == ["artifact.size"]
    assert problems({"artifact": NEW}) == ["rollback_artifact"]
    status, answer = fleet.api.call("POST", "/api/rollouts", {"rollout_id": "a", "group": "g", "artifact": NEW})
    assert status == 422 and "lepton-edge sign --version N+1" in answer["problems"][0]["message"]  # how to make one
    assert problems({"artifact": NEW, "rollback_artifact": OLD}) == ["rollback_artifact"]  # a lower version
    assert problems({"batch_size": 0}) == ["batch_size"]
    assert problems({"health": {"min_fps_ratio": 2}}) == ["health.min_fps_ratio"]
    assert problems({"rollout_id": "Bad Id"}) == ["rollout_id"]
    assert problems({"surprise": 1}) == ["surprise"]
    assert fleet.api.get("/api/rollouts")[1] == []
    assert fleet.api.get("/api/rollouts/nope")[0] == 404
    fleet.start(interval_s=600)
    status, answer = fleet.api.call("POST", "/api/rollouts", {"rollout_id": "r2", "group": "g", "config_patch": PATCH})
    assert status == 409 and "already has rollout 'r1'" in answer["detail"]


@pytest.mark.integration
def test_a_rollout_advances_on_the_leader_only_and_survives_a_failover(
    postgres_schema_url: str, fresh_broker, unique: str
) -> None:
    configs = [
        fast_config(fresh_broker.port, postgres_schema_url, replica, replicas={"shared_subscriptions": True})
        for replica in ("r1", "r2")
    ]
    leader = SchedulerService(configs[0]).start()
    standby: SchedulerService | None = None
    sim = FleetSimulator("127.0.0.1", fresh_broker.port, 3, rate_hz=5.0, prefix=unique, mode="device")
    try:
        wait_until(lambda: leader.is_leader, what="r1 leading")
        standby = SchedulerService(configs[1]).start()
        sim.start()
        store = leader.store
        wait_until(lambda: sum(d.online for d in store.list_devices()) == 3, what="3 devices online")
        for i, device_id in enumerate(sorted(sim.devices)):
            store.set_device_group(device_id, "g")
            leader.add_workload(workload(f"w{i}", fps=5))
        wait_until(lambda: sum(sim.device(d).running for d in sim.devices) == 3, what="a workload on each device")
        spec = RolloutSpec(rollout_id="r1", group="g", config_patch=PATCH, interval_s=5, bake_s=0.5)
        create_rollout(store, spec)
        wait_until(lambda: [w.verdict for w in get_rollout(store, "r1").waves][:1] == ["healthy"], what="canary ok")
        assert not standby.is_leader and standby.counts["rollout_waves"] == 0  # the standby never advanced it
        leader.stop()
        stopped = time.time()
        wait_until(lambda: standby.is_leader, what="r2 leading")
        done = wait_until(
            lambda: (r := get_rollout(standby.store, "r1")).state == "succeeded" and r, timeout=40, what="succeeded"
        )
        assert [len(w.devices) for w in done.waves] == [1, 1, 1]
        assert all((w.started_at or 0) > stopped for w in done.waves[1:])  # the new leader went on from wave 2
        assert standby.counts["rollout_waves"] == 2
        wait_until(lambda: all(has_patch(sim.device(d).config or {}) for d in sim.devices), what="all changed")
    finally:
        sim.stop()
        leader.stop()
        if standby is not None:
            standby.stop()
