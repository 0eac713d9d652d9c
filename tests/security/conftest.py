"""The security suite: each test replays one attack on the fleet's trust boundaries (issue #12) against real
parts and records it with :func:`attack`; the session writes ``out/security/report.md`` (or
``$LEPTON_SECURITY_REPORT_DIR``): the attacks tried, whether each was refused, and the reason the product gave.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.postgres import postgres_schema_url, postgres_server, postgres_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class AttackRecord:
    """One attack: ``refused`` and ``reason`` are what the product did; ``figures`` any measured numbers."""

    name: str
    area: str
    refused: bool | None = None
    reason: str = ""
    figures: dict[str, float | int | str] = field(default_factory=dict)
    outcome: str = "not run"

    def refused_because(self, reason: str) -> None:
        self.refused, self.reason = True, reason


_RECORDS: list[AttackRecord] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def attack(request: pytest.FixtureRequest) -> Iterator[object]:
    """``attack(name, area) -> AttackRecord``: the test's entries in the report; a test that fails leaves its
    attack marked failed, whatever it recorded."""
    records: list[AttackRecord] = []

    def record(name: str, area: str) -> AttackRecord:
        records.append(AttackRecord(name, area))
        return records[-1]

    yield record
    report = getattr(request.node, "rep_call", None)
    for rec in records:
        if report is None:
            rec.outcome = "failed"
        else:
            rec.outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
        _RECORDS.append(rec)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _RECORDS:
        return
    out = Path(os.environ.get("LEPTON_SECURITY_REPORT_DIR") or ROOT / "out" / "security")
    out.mkdir(parents=True, exist_ok=True)
    refused = sum(1 for r in _RECORDS if r.refused and r.outcome == "passed")
    lines = [
        "# lepton-edge security report",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `pytest tests/security`: "
        f"{len(_RECORDS)} attacks tried, {refused} refused with a reason.",
        "",
        "| area | attack | refused | reason | figures | test |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(_RECORDS, key=lambda r: (r.area, r.name)):
        figures = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.figures.items())
        cells = [r.area, r.name, {True: "yes", False: "no", None: "-"}[r.refused], r.reason, figures, r.outcome]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


# -- real parts shared by the suite's modules ----------------------------------------------------------------

from tests.support.onnx_models import mean_color_classifier  # noqa: E402
from tests.support.production_broker import clients, pki, production_broker  # noqa: E402, F401


@pytest.fixture(scope="session")
def color_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real ONNX classifier (tests/support/onnx_models.py) for the devices of the suite."""
    return mean_color_classifier(tmp_path_factory.mktemp("security-models") / "color.onnx")
