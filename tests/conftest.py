"""Shared fixtures: a real mosquitto broker per test session (tests/conftest_broker.py)."""

from tests.conftest_broker import *  # noqa: F403 - fixtures: mqtt_broker, fresh_broker, unique, make_mqtt_client
from tests.support.real_parts import real_parts_required


def pytest_report_header() -> str:
    missing = "fail" if real_parts_required() else "skip"
    return f"lepton-edge: tests whose real parts (mosquitto, PostgreSQL, Chromium, openssl) are missing {missing}"
