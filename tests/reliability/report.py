"""The reliability report: one record per fault scenario, written as JSON and Markdown.

The directory is ``$LEPTON_RELIABILITY_REPORT_DIR`` or ``out/reliability`` under the repository; the
files are ``report.json`` and ``report.md``. A run of part of the suite writes the scenarios it ran.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REPORT_DIR_VARIABLE = "LEPTON_RELIABILITY_REPORT_DIR"


def report_dir() -> Path:
    return Path(os.environ.get(REPORT_DIR_VARIABLE) or ROOT / "out" / "reliability")


@dataclass
class ScenarioRecord:
    """What happened in one scenario; the test fills it in as it goes, the fixture sets ``outcome``."""

    name: str
    fault: str
    outcome: str = "not run"
    durable_sent: int | None = None
    durable_delivered: int | None = None
    durable_lost: int | None = None
    duplicates: int | None = None
    recovery_s: float | None = None
    events_created: int | None = None
    """Analytics events the device created (distinct ids put in its outbox); event scenarios only."""
    events_received: int | None = None
    """Of those, distinct ids the subscriber received (after dedup by id)."""
    events_lost: int | None = None
    recovery_means: str = ""
    """What ``recovery_s`` measures (from which event to which)."""
    observations: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None
    hidden: dict[str, str] = field(default_factory=dict, repr=False)
    """Text replaced in notes (a test's temporary folder -> ``<tmp>``); not written to the report."""

    def hide(self, text: str, replacement: str) -> None:
        self.hidden[text] = replacement

    def clean(self, text: str) -> str:
        for old, new in self.hidden.items():
            text = text.replace(old, new)
        return text

    def note(self, text: str) -> None:
        self.observations.append(self.clean(text))

    def set_events(self, summary: dict[str, Any]) -> None:
        """Copy the figures of :meth:`tests.reliability.harness.EventAccounting.summary`."""
        self.events_created = summary["events_created"]
        self.events_received = summary["events_received"]
        self.events_lost = summary["events_lost"]
        self.metrics["event_duplicates"] = summary["event_duplicates"]
        self.metrics["events_by_kind"] = summary["events_by_kind"]

    def set_accounting(self, summary: dict[str, Any]) -> None:
        """Copy the message counts of :meth:`tests.reliability.harness.Accounting.summary`."""
        self.durable_sent = summary["durable_sent"]
        self.durable_delivered = summary["durable_delivered"]
        self.durable_lost = summary["durable_lost"]
        self.duplicates = summary["duplicates"]
        self.metrics.update(
            {k: v for k, v in summary.items() if not k.startswith("durable_") and k != "duplicates"}
        )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(records: list[ScenarioRecord], meta: dict[str, Any]) -> str:
    lines = [
        "# lepton-edge reliability report",
        "",
        f"Generated {meta['generated']} on {meta['host']} (Python {meta['python']}) by "
        "`pytest tests/reliability -m reliability`. Every scenario runs real processes: mosquitto, the "
        "device (`lepton-edge run`), onnxruntime, loopback servers.",
        "",
        "Durable messages are the outbox's high-priority ones (durable results, events, config reports). "
        "*Lost* = stored in the device's outbox but never received by the subscriber; *duplicates* = "
        "extra deliveries of an id already received (allowed, and identifiable by `lepton-msg-id`).",
        "",
        "| scenario | outcome | durable sent | delivered | lost | duplicates | recovery (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            "| "
            + " | ".join(
                _cell(v)
                for v in (
                    r.name,
                    r.outcome,
                    r.durable_sent,
                    r.durable_delivered,
                    r.durable_lost,
                    r.duplicates,
                    r.recovery_s,
                )
            )
            + " |"
        )
    with_events = [r for r in records if r.events_created is not None]
    if with_events:
        lines += [
            "",
            "Analytics events (event scenarios): created = distinct event ids the device put in its outbox; "
            "received = of those, distinct ids that arrived (duplicates removed by id); lost = never arrived.",
            "",
            "| scenario | events created | received | lost |",
            "|---|---:|---:|---:|",
        ]
        for r in with_events:
            cells = (r.name, r.events_created, r.events_received, r.events_lost)
            lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
    for r in records:
        lines += ["", f"## {r.name}", "", f"**Fault:** {r.fault}", "", f"**Outcome:** {r.outcome}"]
        if r.failure:
            lines += ["", "```", r.failure.strip()[:2000], "```"]
        if r.recovery_means:
            lines += ["", f"**Recovery time:** {_cell(r.recovery_s)} s, {r.recovery_means}."]
        if r.observations:
            lines += ["", "What happened:", ""] + [f"- {o}" for o in r.observations]
        if r.metrics:
            lines += ["", "Figures: " + ", ".join(f"{k}={_cell(v)}" for k, v in r.metrics.items())]
    return "\n".join(lines) + "\n"


def _order(record: ScenarioRecord) -> tuple[int, str]:
    """Scenarios in the order of their leading number (``2`` before ``10``, ``5b`` after ``5``), then by name."""
    match = re.match(r"(\d+)(.*)", record.name)
    return (int(match.group(1)), match.group(2)) if match else (1 << 30, record.name)


def write_report(records: list[ScenarioRecord], directory: Path | None = None) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` (scenarios in number order); returns their paths."""
    directory = directory or report_dir()
    records = sorted(records, key=_order)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node() or "unknown",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    json_path, md_path = directory / "report.json", directory / "report.md"
    scenarios = [{k: v for k, v in asdict(r).items() if k != "hidden"} for r in records]
    json_path.write_text(json.dumps({**meta, "scenarios": scenarios}, indent=2, default=str) + "\n")
    md_path.write_text(render_markdown(records, meta))
    return json_path, md_path
