"""The device agent: presence, telemetry, results, remote configuration and commands over MQTT.

- :class:`DeviceAgent` and :func:`run_device` (``agent.py``): the agent and the ``lepton-edge run`` entry
  point when the config has an ``agent`` section;
- :class:`RuntimeController` (``controller.py``): owns the pipeline and applies new configs live;
- :class:`RemoteConfig` (``remote_config.py``): desired/reported documents, versions, persistence;
- :class:`MqttResultSink` (``results.py``), :class:`TelemetryCollector` (``telemetry.py``),
  :class:`PrometheusExporter` (``prometheus.py``), :class:`StateStore` (``state.py``);
- ``updates.py`` / ``signing.py``: artifact downloads, verification and A/B slots.

Names are imported on first use, so ``import lepton_edge.agent.updates`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DeviceAgent": "lepton_edge.agent.agent",
    "run_device": "lepton_edge.agent.agent",
    "RuntimeController": "lepton_edge.agent.controller",
    "ApplyResult": "lepton_edge.agent.controller",
    "RemoteConfig": "lepton_edge.agent.remote_config",
    "MqttResultSink": "lepton_edge.agent.results",
    "TelemetryCollector": "lepton_edge.agent.telemetry",
    "PrometheusExporter": "lepton_edge.agent.prometheus",
    "StateStore": "lepton_edge.agent.state",
    "atomic_write": "lepton_edge.agent.state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lepton_edge.agent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
