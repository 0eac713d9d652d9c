"""Pytest fixtures that provide a real mosquitto broker (see tests/support/mosquitto.py).

tests/conftest.py star-imports them, so every test can use them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from lepton_edge.config.fleet import MqttConfig
from lepton_edge.fleet.mqtt import MqttClient
from tests.support.mosquitto import MosquittoBroker

__all__ = ["fresh_broker", "make_mqtt_client", "mqtt_broker", "unique"]


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """One broker for the whole session. Tests must not stop it; use unique topics and client ids."""
    with MosquittoBroker(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def fresh_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A broker of the test's own, free to be stopped, killed and restarted."""
    broker = MosquittoBroker(tmp_path_factory.mktemp("mosquitto-fresh"))
    try:
        yield broker.start()
    finally:
        broker.close()


@pytest.fixture
def unique() -> str:
    """A short random token for topics and client ids, so tests sharing a broker never collide."""
    return uuid.uuid4().hex[:10]


MakeClient = Callable[..., MqttClient]


@pytest.fixture
def make_mqtt_client() -> Iterator[MakeClient]:
    """``make(broker_or_port, client_id, **config_and_client_kwargs)``: an MqttClient stopped at teardown.

    Reconnect backoff defaults to 0.05-0.5 s so tests recover fast. Keyword arguments that are
    MqttConfig fields go to the config, the rest (will, on_connected, ...) to the client.
    """
    clients: list[MqttClient] = []

    def make(target: MosquittoBroker | int, client_id: str, **kwargs: object) -> MqttClient:
        port = target if isinstance(target, int) else target.port
        config_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in MqttConfig.model_fields}
        config_kwargs.setdefault("reconnect_min_s", 0.05)
        config_kwargs.setdefault("reconnect_max_s", 0.5)
        config = MqttConfig(host="127.0.0.1", port=port, client_id=client_id, **config_kwargs)
        client = MqttClient(config, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.stop(timeout=1.0)
