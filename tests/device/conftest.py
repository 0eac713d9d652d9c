"""Fixtures of the agent tests (the broker fixtures come from tests/conftest_broker.py)."""

from __future__ import annotations

import pytest

from lepton_edge.device.agent import DeviceAgent
from tests.device.helpers import Recorder, agent_config
from tests.support.onnx_models import mean_color_classifier


@pytest.fixture(scope="session")
def color_model(tmp_path_factory):
    return mean_color_classifier(tmp_path_factory.mktemp("agent-models") / "color.onnx")


@pytest.fixture
def start_agent(tmp_path, color_model):
    """``start(port, device_id, **config) -> DeviceAgent``: started now, stopped at teardown."""
    agents: list[DeviceAgent] = []

    def start(port: int, device_id: str, *, model=None, **kwargs) -> DeviceAgent:
        agent = DeviceAgent(agent_config(tmp_path, model or color_model, port, device_id, **kwargs))
        agents.append(agent)
        return agent.start()

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture
def recorder():
    """``record(port, *filters) -> Recorder`` connected to the broker; stopped at teardown."""
    recorders: list[Recorder] = []

    def record(port: int, *filters: str, client_id: str | None = None, **config) -> Recorder:
        import uuid

        rec = Recorder.connect(port, client_id or f"rec-{uuid.uuid4().hex[:8]}", *filters, **config)
        recorders.append(rec)
        return rec

    yield record
    for rec in recorders:
        rec.stop()
