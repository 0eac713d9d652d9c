"""The device agent: presence, telemetry, results, remote configuration and commands over MQTT.

- :class:`DeviceAgent` and :func:`run_device` (``agent.py``): the agent and the ``lepton-edge run`` entry
  point when the config has an ``agent`` section;
- :class:`RuntimeController` (``controller.py``): owns the pipeline and applies new configs live;
- :class:`RemoteConfig` (``remote_config.py``): desired/reported documents, versions, persistence;
- :class:`MqttResultSink` (``results.py``), :class:`TelemetryCollector` (``telemetry.py``),
  :class:`PrometheusExporter` (``prometheus.py``), :class:`StateStore` (``state.py``);
- ``updates.py`` / ``signing.py``: artifact downloads, verification and A/B slots.

Names are imported on first use, so ``import lepton_edge.device.updates`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DeviceAgent": "lepton_edge.device.agent",
    "run_device": "lepton_edge.device.agent",
    "RuntimeController": "lepton_edge.device.controller",
    "ApplyResult": "lepton_edge.device.controller",
    "RemoteConfig": "lepton_edge.device.remote_config",
    "MqttResultSink": "lepton_edge.device.results",
    "TelemetryCollector": "lepton_edge.device.telemetry",
    "PrometheusExporter": "lepton_edge.device.prometheus",
    "StateStore": "lepton_edge.device.state",
    "atomic_write": "lepton_edge.device.state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lepton_edge.device' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
