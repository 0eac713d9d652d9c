"""Shared fixtures: a real mosquitto broker per test session (tests/conftest_broker.py)."""

from tests.conftest_broker import *  # noqa: F403 - fixtures: mqtt_broker, fresh_broker, unique, make_mqtt_client
