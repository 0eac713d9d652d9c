"""The fleet scheduler: fleet state in a store, pure placement, MQTT ingestion, failover, HTTP API.

Import the parts from their modules (``lepton_edge.scheduler.store``, ``.placement``, ...); this package
imports nothing heavy on its own.
"""
