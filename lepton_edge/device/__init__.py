"""The device service and agent: the pipeline under supervision, and everything that talks to the fleet.

- ``service.py``: :func:`run_service`, what ``lepton-edge run`` starts; ``supervisor.py``: the one supervision
  loop (READY, watchdog, stats lines, signals, STOPPING); ``systemd.py``: sd_notify and the frame watchdog;
- ``agent.py``: :class:`DeviceAgent`, which wires ``presence.py`` (sessions, births, deaths),
  ``telemetry_publisher.py`` / ``telemetry.py``, ``commands.py``, ``events.py``, ``figures.py`` /
  ``prometheus.py``, ``capabilities.py``, ``remote_config.py``, ``results.py`` and ``state.py``;
  :func:`run_device` runs it as the service;
- ``controller.py``: :class:`RuntimeController`, which owns the pipeline and applies new configs live;
- ``updates.py``: the A/B artifact slots, staging through ``artifact_download.py`` (downloads) and
  ``artifact_unpack.py`` (tar checks, model lookup); ``signing.py``: keys and signatures; ``doctor.py``: checks.

Import the modules themselves (``from lepton_edge.device.agent import DeviceAgent``); this package imports
nothing, so ``import lepton_edge.device.updates`` stays light.
"""
