"""Fixtures of the fault-injection suite: a broker per scenario, the models, and the session report."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import BROKER_AUTOSAVE, DeviceProcess, Subscriber
from tests.reliability.report import ScenarioRecord, write_report
from tests.support.mosquitto import MosquittoBroker
from tests.support.onnx_models import mean_color_classifier


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: fault-injection scenarios (tests/reliability), with a written report"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


class Session:
    def __init__(self) -> None:
        self.records: list[ScenarioRecord] = []


@pytest.fixture(scope="session")
def reliability_session() -> Iterator[Session]:
    """Collects the scenario records; writes the report when the session ends."""
    session = Session()
    yield session
    if session.records:
        write_report(session.records)


@pytest.fixture
def scenario(
    request: pytest.FixtureRequest, reliability_session: Session, tmp_path: Path
) -> Iterator[Callable[..., ScenarioRecord]]:
    """``scenario(name, fault) -> ScenarioRecord``: the test's entry in the report; its outcome is set from
    the test's result at teardown."""
    records: list[ScenarioRecord] = []

    def start(name: str, fault: str) -> ScenarioRecord:
        record = ScenarioRecord(name, fault)
        record.hide(str(tmp_path), "<tmp>")
        records.append(record)
        reliability_session.records.append(record)
        return record

    yield start
    report = getattr(request.node, "rep_call", None)
    for record in records:
        if report is None:
            record.outcome = "error"
        elif hasattr(report, "wasxfail"):
            record.outcome = "known gap (xfail)" if report.skipped else "fixed (xpass)"
            record.failure = report.wasxfail if report.skipped else None
        elif report.passed:
            record.outcome = "passed"
        elif report.skipped:
            record.outcome = "skipped"
            record.failure = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else None
        else:
            record.outcome = "FAILED"
            crash = getattr(report.longrepr, "reprcrash", None)
            failure = crash.message if crash is not None else str(report.longrepr)[-2000:]
            record.failure = record.clean(failure)


@pytest.fixture(scope="session")
def color_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mean_color_classifier(tmp_path_factory.mktemp("reliability-models") / "color.onnx")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A broker of the scenario's own that saves its state on every change (it may be SIGKILLed)."""
    broker = MosquittoBroker(tmp_path / "broker", extra_config=BROKER_AUTOSAVE)
    try:
        yield broker.start()
    finally:
        broker.close()


@pytest.fixture
def device_id() -> str:
    return f"rel-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def subscriber(broker: MosquittoBroker, device_id: str) -> Iterator[Subscriber]:
    sub = Subscriber(broker.port, device_id).start()
    yield sub
    sub.stop()


@pytest.fixture
def devices() -> Iterator[list[DeviceProcess]]:
    """Device processes to SIGKILL at teardown if a test left them running."""
    started: list[DeviceProcess] = []
    yield started
    for device in started:
        device.close()
