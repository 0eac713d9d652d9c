"""Reported configs: a device's outcome for a desired config version sets its assignments' status; a failed
config (or one failed workload of it, where the device reports per workload) keeps that workload off that device
for a while and triggers a re-plan (failover); the device's other workloads stay."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from lepton_edge.fleet.mqtt import IncomingMessage
from lepton_edge.fleet.protocol import MAX_CONFIG_VERSION, ReportedConfig, TopicKind, config_reported_topic
from lepton_edge.scheduler.admission import Admission
from lepton_edge.scheduler.control import ControlQueue
from lepton_edge.scheduler.models import Assignment
from lepton_edge.scheduler.planner import Planner
from lepton_edge.scheduler.store import Store
from lepton_edge.scheduler.views import DeviceViews

Failure = tuple[str, str, list[str]]
"""(workload id, outcome, errors) of a workload a device did not apply."""


class ConfigReports:
    """The MQTT handler of reported configs (:meth:`on_reported`) and their store work (:meth:`apply`)."""

    def __init__(
        self,
        store: Store,
        *,
        views: DeviceViews,
        admission: Admission,
        control: ControlQueue,
        planner: Planner,
        counts: collections.Counter[str],
        records_presence: Callable[[], bool],
    ) -> None:
        self._store = store
        self._views = views
        self._admission = admission
        self._control = control
        self._planner = planner
        self._counts = counts
        self._records_presence = records_presence

    def on_reported(self, message: IncomingMessage) -> None:
        admitted = self._admission.admit(TopicKind.CONFIG_REPORTED, message)
        if admitted is None:
            return
        device_id, report = admitted
        assert isinstance(report, ReportedConfig)
        view = self._views.known_or_unknown(device_id, time.time())
        key = (report.version, report.outcome)
        if view.last_report == key:
            self._counts["duplicate_reports"] += 1
            return
        view.last_report = key
        self._control.put(lambda: self.apply(device_id, report))

    def apply(self, device_id: str, report: ReportedConfig) -> None:
        store = self._store
        device = store.get_device(device_id)
        if device is None:
            self._counts["reports_of_unknown_devices"] += 1  # never born: do not create it
            return
        version = report.version
        if type(version) is not int or not 1 <= version <= min(device.desired_version, MAX_CONFIG_VERSION):
            # Versions are the store's: a report of one it never issued to this device is refused, counted
            # (ingest rejects, `unissued_version`) and logged at most once per interval; never recorded.
            self._admission.reject(
                "unissued_version",
                config_reported_topic(device_id),
                f"device {device_id} reported config version {str(version)[:40]}, which the scheduler never "
                f"issued to it (issued: 1..{device.desired_version})",
                device_id,
            )
            return
        refused = [  # the workloads refused, where the document's own errors say nothing
            f"workload {name}: {error}"
            for name, own in sorted(report.workloads.items()) if own.outcome != "applied" for error in own.errors
        ]  # fmt: skip
        if not store.record_reported(device_id, report.version, report.outcome, (list(report.errors) or refused)[:100]):
            return
        affected = [
            a for a in store.list_assignments() if a.device_id == device_id and a.desired_version == report.version
        ]
        failed: list[Failure] = []
        for a in affected:
            own = report.workloads.get(a.workload_id)  # a device that reports per workload says which failed
            outcome, errors = (own.outcome, list(own.errors)) if own is not None else (report.outcome, report.errors)
            if outcome == "applied":
                store.set_assignment_status(a.workload_id, "applied", desired_version=report.version)
                continue
            reason = f"{outcome}: {'; '.join(errors)[:500]}"
            store.set_assignment_status(a.workload_id, "failed", reason, desired_version=report.version)
            self._planner.cool_down(a.workload_id, device_id)  # off this device only; its others stay
            failed.append((a.workload_id, outcome, list(errors)))
        if report.outcome == "applied" and not failed:
            return
        if self._records_presence():  # one replica records it
            self._record(device_id, report, affected, failed)
        if failed:
            self._planner.replan(
                f"device {device_id} {'/'.join(sorted({o for _, o, _ in failed}))} v{report.version} "
                f"({', '.join(w for w, _, _ in failed[:5])})"
            )

    def _record(
        self, device_id: str, report: ReportedConfig, affected: list[Assignment], failed: list[Failure]
    ) -> None:
        store = self._store
        if not report.workloads:  # a device that reports the document only: every workload shares its outcome
            store.add_event(
                f"config.{report.outcome}",
                f"device {device_id} {report.outcome} desired config v{report.version}"
                + (f" (workload {', '.join(a.workload_id for a in affected)})" if affected else ""),
                device_id=device_id,
                workload_id=affected[0].workload_id if len(affected) == 1 else None,
                severity="error",
                details={"version": report.version, "errors": list(report.errors)[:10]},
            )
            return
        for workload_id, outcome, errors in failed:  # per workload: only the ones refused
            store.add_event(
                f"config.{outcome}",
                f"device {device_id} {outcome} workload {workload_id} of desired config v{report.version}",
                device_id=device_id,
                workload_id=workload_id,
                severity="error",
                details={"version": report.version, "errors": errors[:10]},
            )
