"""The device's rule for desired versions (issue 12, item 3): a desired document is applied only if its
version is above the current one by at most MAX_CONFIG_VERSION_STEP; otherwise it is refused, reported
with the reason, and the device keeps its config and its handled version."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_edge.device.controller import ApplyResult
from lepton_edge.device.remote_config import RemoteConfig
from lepton_edge.device.state import ConfigState, StateStore
from lepton_edge.fleet.protocol import MAX_CONFIG_VERSION, MAX_CONFIG_VERSION_STEP, DesiredConfig, ReportedConfig
from tests.device.helpers import agent_config


class FakeController:
    def __init__(self) -> None:
        self.applied: list[int] = []

    def apply(self, config: Any, version: int) -> ApplyResult:
        self.applied.append(version)
        return ApplyResult("applied", [], frozenset())


def test_desired_versions_apply_only_when_greater_and_within_the_step(tmp_path: Path, color_model: Path) -> None:
    local = agent_config(tmp_path, color_model, 1, "steps")
    store = StateStore(local.agent.state_dir)
    sent: list[ReportedConfig] = []
    remote = RemoteConfig(local, store, report=sent.append, event=lambda *a: None)
    controller = FakeController()
    remote.controller = controller  # type: ignore[assignment]  # process() alone, no worker thread

    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        current=st.one_of(st.just(0), st.integers(1, MAX_CONFIG_VERSION)),
        offset=st.one_of(
            st.sampled_from([-1, 0, 1, MAX_CONFIG_VERSION_STEP, MAX_CONFIG_VERSION_STEP + 1]),
            st.integers(-(2**53), 2**53),
        ),
    )
    def check(current: int, offset: int) -> None:
        version = current + offset
        if not 1 <= version <= MAX_CONFIG_VERSION:
            return  # the protocol refuses it before this point (tests/scheduler/test_versions.py)
        remote.state = ConfigState(current, current, {"idle": True} if current else None)
        before, applied = len(sent), len(controller.applied)
        desired = DesiredConfig(version=version, config={"idle": True}, issued_at=time.time(), issued_by="s")
        result = remote.process(desired)
        if version <= current:
            assert result is None and len(sent) == before  # old: ignored
        elif version > current + MAX_CONFIG_VERSION_STEP:
            assert result is not None and result.outcome == "rejected"
            assert str(MAX_CONFIG_VERSION_STEP) in result.errors[0]
            assert len(controller.applied) == applied  # keeps its config ...
            assert remote.state.handled_version == current and remote.state.active_version == current  # and version
            assert sent[-1].version == version and sent[-1].outcome == "rejected"  # reported with the reason
        else:
            assert result is not None and result.outcome == "applied"
            assert controller.applied[-1] == version and remote.state.active_version == version

    check()
    # the attack: a huge version is refused and later configs still apply
    remote.state = ConfigState(5, 5, {"idle": True})
    huge = DesiredConfig(version=MAX_CONFIG_VERSION, config={"idle": True}, issued_at=time.time(), issued_by="x")
    assert remote.process(huge) is not None and remote.handled_version == 5
    nxt = DesiredConfig(version=6, config={"idle": True}, issued_at=time.time(), issued_by="s")
    assert remote.process(nxt) is not None and remote.state.active_version == 6


def test_a_persisted_out_of_range_handled_version_no_longer_locks_the_device_out(
    tmp_path: Path, color_model: Path
) -> None:
    local = agent_config(tmp_path, color_model, 1, "locked")
    store = StateStore(local.agent.state_dir)
    store.save_config_state(ConfigState(2**63 - 1, 0, None))  # what the attack left behind
    events: list[tuple[Any, ...]] = []
    remote = RemoteConfig(local, store, report=lambda r: None, event=lambda *a: events.append(a))
    assert remote.initial_config() == (local, 0)
    assert remote.handled_version == 0 and store.load_config_state().handled_version == 0
    assert any(e[0] == "config.fallback" for e in events)
    remote.controller = FakeController()  # type: ignore[assignment]
    nxt = DesiredConfig(version=7, config={"idle": True}, issued_at=time.time(), issued_by="s")
    result = remote.process(nxt)
    assert result is not None and result.outcome == "applied"
