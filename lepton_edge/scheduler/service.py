"""One scheduler replica, wired from collaborators that each do one job, and the scheduler process.

Threads and who runs them:

- the MQTT network thread: :class:`~.ingestion.Ingestion` (births, deaths, telemetry, events) and
  :class:`~.reports.ConfigReports`, admitted by :class:`~.admission.Admission`; it never waits for the store;
- *writer*: :class:`~.writer.TelemetryWriter` writes telemetry in batches;
- *control*: :class:`~.control.ControlQueue` applies births, deaths, config reports and events to the store,
  in arrival order, retrying while the store is unavailable;
- *planner* (leader only): :class:`~.planner.Planner` batches placement triggers, plans and publishes desired
  configs;
- *housekeeper*: renews the leadership (:class:`~.leadership.Leadership`), sweeps liveness
  (:class:`~.liveness.Liveness`), resolves unknown sessions and logs statistics.

:func:`run_scheduler` runs a replica with its HTTP API until SIGTERM/SIGINT. docs/scheduler.md describes the
policies, the device config a workload becomes, and scale-out.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from lepton_edge.config.scheduler import SchedulerConfig
from lepton_edge.core.errors import LeptonError
from lepton_edge.fleet.mqtt import MqttClient
from lepton_edge.scheduler.admission import Admission
from lepton_edge.scheduler.clips import ClipFetcher
from lepton_edge.scheduler.control import ControlQueue, StoreHealth
from lepton_edge.scheduler.desired_publisher import DesiredPublisher, DesiredSigner
from lepton_edge.scheduler.health import HealthWatch
from lepton_edge.scheduler.ingestion import Ingestion
from lepton_edge.scheduler.leadership import Leadership
from lepton_edge.scheduler.liveness import Liveness
from lepton_edge.scheduler.models import Workload
from lepton_edge.scheduler.planner import Planner
from lepton_edge.scheduler.rebirth import Rebirths
from lepton_edge.scheduler.reports import ConfigReports
from lepton_edge.scheduler.rollouts import RolloutRunner
from lepton_edge.scheduler.store import Store, StoreError
from lepton_edge.scheduler.stores import open_store
from lepton_edge.scheduler.views import DeviceViews
from lepton_edge.scheduler.writer import TelemetryWriter

_API_MISSING: str | None = None
try:  # FastAPI and uvicorn are optional: a replica runs without its API (api.enabled: false)
    from lepton_edge.scheduler import api
except ModuleNotFoundError as e:
    if e.name not in ("fastapi", "uvicorn", "starlette"):
        raise
    api = None  # type: ignore[assignment]
    _API_MISSING = str(e)

log = logging.getLogger("lepton_edge.scheduler.service")


class SchedulerService:
    """One scheduler replica. ``start()`` connects and starts the workers; ``stop()`` ends them.

    ``store``: an open store (the caller keeps ownership); by default the service opens
    ``config.store_url`` and closes it on stop.
    """

    def __init__(self, config: SchedulerConfig, store: Store | None = None) -> None:
        self.config = config
        self.replica_id = config.replicas.replica_id
        self._owns_store = store is None
        self.store: Store = store or open_store(
            config.store_url, throttle_temperature_c=config.placement.thermal_limit_c
        )
        self.counts: collections.Counter[str] = collections.Counter()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._rate_window: collections.deque[tuple[float, int]] = collections.deque(maxlen=120)

        self.mqtt = MqttClient(config.mqtt, on_connected=self._on_connected)
        self.health = StoreHealth(on_recovered=self._on_store_recovered)
        self.views = DeviceViews(config.ingest)
        self.control = ControlQueue(self.health, self.counts, self._stopping)
        self.writer = TelemetryWriter(self.store, config.ingest, self.health, self.counts, self._stopping)
        self.rebirths = Rebirths(self.mqtt, self.replica_id, self.counts)
        self.leadership = Leadership(self.store, self.replica_id, self.health, on_elected=self._on_elected)
        self.desired = DesiredPublisher(
            self.mqtt, DesiredSigner(config.desired_signing_key) if config.desired_signing_key else None,
            store=self.store, control=self.control, counts=self.counts, is_leader=self._is_leader,
            push_again=lambda device_id, reason: self.planner.push_again([device_id], reason),
        )  # fmt: skip
        self.planner = Planner(
            self.store, self.desired, config.placement, self.replica_id, is_leader=self._is_leader,
            writer=self.writer, health=self.health, counts=self.counts, stopping=self._stopping,
        )  # fmt: skip
        self.admission = Admission(self.store, config.ingest, self.views, self.control, self.counts)
        reports = ConfigReports(
            self.store, views=self.views, admission=self.admission, control=self.control, planner=self.planner,
            counts=self.counts, records_presence=self._records_presence,
        )  # fmt: skip
        self.ingestion = Ingestion(
            config, self.store, views=self.views, admission=self.admission, control=self.control,
            writer=self.writer, planner=self.planner, reports=reports, rebirths=self.rebirths,
            health=HealthWatch(self.store, config.placement, self.planner, self.control, self.counts,
                               self._is_leader),
            counts=self.counts, is_leader=self._is_leader, records_presence=self._records_presence,
        )  # fmt: skip
        self.liveness = Liveness(
            self.store, self.views, self.planner, self.health, self.counts, config.heartbeat_timeout_s
        )
        self.rollouts = RolloutRunner(self.store, self.planner, self.counts)
        self.clips = ClipFetcher.for_scheduler(config, self.mqtt, self.store)

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> SchedulerService:
        """Seed the in-memory view from the store, subscribe, and start the workers."""
        if self._started:
            raise RuntimeError("SchedulerService.start() called twice")
        self.start_workers()
        self.ingestion.subscribe(self.mqtt)
        self.desired.subscribe()
        self.clips.start()
        self.mqtt.start()
        self.rebirths.started()
        log.info(
            "scheduler replica %s: broker %s, store %s, shared subscriptions %s",
            self.replica_id, self.mqtt.address, type(self.store).__name__,
            "on" if self.config.replicas.shared_subscriptions else "off",
        )  # fmt: skip
        return self

    def start_workers(self) -> None:
        """Seed from the store, take the leadership if free, and start the worker threads; without MQTT
        (:meth:`start` connects): a benchmark feeds ``self.ingestion``'s handlers directly."""
        self._started = True
        self.health.guard(lambda: self.views.seed(self.store))
        self.leadership.check()  # before any message, so a leader records the first births as events
        for name, target in (
            ("writer", self.writer.run),
            ("control", self.control.run),
            ("planner", self.planner.run),
            ("housekeeper", self._housekeeping),
        ):
            thread = threading.Thread(target=target, name=f"scheduler-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the workers (telemetry still queued is written, within ``timeout``), leave the broker."""
        if not self._started or self._stopping.is_set():
            return
        self.writer.stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        for worker in (self.writer, self.control, self.planner):
            worker.wake()
        for thread in self._threads:  # the writer gives up at the deadline, after the batch in hand
            thread.join(max(0.1, self.writer.stop_deadline + 30 - time.monotonic()))
        self.clips.stop(timeout=2.0)
        self.mqtt.stop(timeout=2.0)
        self.leadership.release()
        if self._owns_store:
            self.store.close()
        log.info("scheduler replica %s stopped", self.replica_id)

    def __enter__(self) -> SchedulerService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_connected(self, timeout: float) -> bool:
        return self.mqtt.wait_connected(timeout)

    def _housekeeping(self) -> None:
        """Leadership, liveness, unknown sessions and statistics, each at its own interval."""
        config = self.config
        tasks: list[tuple[Callable[[], None], float]] = [
            (self.leadership.check, config.leader_check_s),
            (self._sweep, config.sweep_s),
            (self._log_stats, config.stats_log_s),
        ]
        due = [time.monotonic()] * len(tasks)
        while not self._stopping.wait(0.1):
            now = time.monotonic()
            self._rate_window.append((time.time(), self.counts["messages"]))
            self.ingestion.housekeeping()
            self.desired.tick()
            for i, (task, interval) in enumerate(tasks):
                if now >= due[i]:
                    due[i] = now + interval
                    task()

    def _sweep(self) -> None:
        if not self.leadership.is_leader:
            return
        try:
            self.planner.check_changes()
        except StoreError as e:
            self.health.failed(e)
            return
        self.liveness.sweep()
        self._advance_rollouts()

    def _advance_rollouts(self) -> None:
        """Rollouts advance on the leader only, one step per sweep."""
        try:
            self.rollouts.tick()
        except StoreError as e:
            self.health.failed(e)
        except Exception:
            log.exception("advancing the rollouts failed; retrying at the next sweep")

    # ------------------------------------------------------------------------------ wiring hooks

    def _is_leader(self) -> bool:
        return self.leadership.is_leader

    def _records_presence(self) -> bool:
        """Presence events are written by the leader only, unless presence messages are shared."""
        replicas = self.config.replicas
        return self.leadership.is_leader or (replicas.shared_subscriptions and replicas.share_presence)

    def _on_connected(self, client: MqttClient) -> None:
        self.counts["mqtt_connects"] += 1

    def _on_elected(self) -> None:
        self.planner.forget_plan()
        if self.config.fleet_rebirth_on_start or self.rebirths.resync_pending:
            self.rebirths.fleet(f"replica {self.replica_id} became the placement leader")
        self.planner.replan("became leader")

    def _on_store_recovered(self) -> None:
        self.counts["store_recoveries"] += 1
        if self.leadership.is_leader:
            self.rebirths.fleet("the scheduler's store was unavailable")
        else:
            self.rebirths.resync_pending = True
        self.planner.replan("store available again")

    # -------------------------------------------------------------------------- public API

    @property
    def is_leader(self) -> bool:
        """Whether this replica plans and publishes desired configs now."""
        return self.leadership.is_leader

    @property
    def store_ok(self) -> bool:
        return self.health.ok

    @property
    def rejected(self) -> collections.Counter[str]:
        """Rejected messages by reason (:data:`.admission.REJECT_REASONS`)."""
        return self.admission.rejected

    @property
    def unplaced(self) -> dict[str, str]:
        """Workloads the last plan could not place -> why."""
        return self.planner.unplaced

    def add_workload(self, workload: Workload) -> Workload:
        """Store a new workload and trigger placement. Raises StoreConflict if the id exists."""
        stored = self.store.add_workload(workload)
        self.store.add_event(
            "workload.added",
            f"workload {workload.workload_id} added ({workload.required_fps:g} fps of {workload.model})",
            workload_id=workload.workload_id,
        )
        self.replan(f"workload {workload.workload_id} added")
        return stored

    def remove_workload(self, workload_id: str) -> bool:
        """Delete a workload (its device gets a new desired config); False if there was none."""
        assignment = next((a for a in self.store.list_assignments() if a.workload_id == workload_id), None)
        if not self.store.delete_workload(workload_id):
            return False
        self.store.add_event("workload.removed", f"workload {workload_id} removed", workload_id=workload_id)
        if assignment is not None:
            self.planner.device_freed(assignment.device_id)
        self.replan(f"workload {workload_id} removed")
        return True

    def replan(self, reason: str, *, only_for_unplaced: bool = False) -> None:
        """Ask for a placement run; see :meth:`.planner.Planner.replan`."""
        self.planner.replan(reason, only_for_unplaced=only_for_unplaced)

    def stats(self) -> dict[str, Any]:
        """Ingestion, rejections, backlog, devices online, placement and leadership, for the API and logs."""
        now = time.time()
        window = list(self._rate_window)
        rate = 0.0
        if len(window) >= 2:
            (t0, n0), (t1, n1) = window[max(0, len(window) - 6)], window[-1]
            rate = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        oldest = self.writer.oldest()
        planner = self.planner
        return {
            "replica_id": self.replica_id,
            "is_leader": self.leadership.is_leader,
            "leader_since": self.leadership.since,
            "mqtt_connected": self.mqtt.connected,
            "messages_in": self.counts["messages"],
            "messages_per_s": round(rate, 1),
            "telemetry_accepted": self.counts["telemetry"],
            "telemetry_written": self.counts["telemetry_written"],
            "telemetry_ignored": self.counts["telemetry_ignored"],
            "backlog": self.writer.backlog,
            "backlog_peak": self.writer.backlog_peak,
            "backlog_oldest_s": round(now - oldest, 3) if oldest else 0.0,
            "control_backlog": len(self.control),
            "rejected": dict(self.rejected),
            "rebirth_requests": self.counts["rebirth_requests"],
            "devices_known": len(self.views),
            "devices_online": self.views.online_count(),
            "store_ok": self.health.ok,
            "store_error": self.health.error,
            "plans": planner.plans,
            "last_plan_at": planner.last_plan_at,
            "last_plan_ms": planner.last_plan_ms,
            "last_plan_reasons": planner.last_plan_reasons[:10],
            "moved_total": planner.moved_total,
            "desired_pushes": planner.pushes,
            "unplaced": len(planner.unplaced),
            "flood_isolated": self.ingestion.isolation.isolated,
            "flood_isolations": self.counts["flood_isolations"],
            "desired_reasserted": self.counts["desired_reasserted"],
            "clips_pruned": self.clips.pruned_counts(),
        }

    def _log_stats(self) -> None:
        s = self.stats()
        rejected = sum(s["rejected"].values())
        log.info(
            "stats leader=%s msg_per_s=%.0f backlog=%d peak=%d online=%d rejected=%d plans=%d moved=%d unplaced=%d "
            "store_ok=%s",
            s["is_leader"], s["messages_per_s"], s["backlog"], s["backlog_peak"], s["devices_online"], rejected,
            s["plans"], s["moved_total"], s["unplaced"], s["store_ok"],
        )  # fmt: skip


# --------------------------------------------------------------------------------------------- process


def serve_api(service: SchedulerService) -> Any:
    """Start the HTTP API of ``service`` (an ``api.ApiServer``); a clear error when FastAPI is missing."""
    if api is None:
        raise LeptonError(
            f"the scheduler API needs FastAPI and uvicorn ({_API_MISSING}); pip install 'lepton-edge[scheduler]', "
            "or set api.enabled: false"
        )
    cfg = service.config.api
    tls = api.TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.client_ca) if cfg.tls_cert and cfg.tls_key else None
    return api.serve(
        service,
        cfg.host,
        cfg.port,
        max_body_bytes=cfg.max_body_bytes,
        allowed_hosts=cfg.trusted_hosts,
        insecure_local=cfg.insecure_local,
        rate_limit=(cfg.rate_limit_per_s, cfg.rate_limit_burst),
        tls=tls,
    )


def run_scheduler(config: SchedulerConfig, *, stop: threading.Event | None = None) -> int:
    """Run one replica (and its HTTP API when enabled) until SIGTERM/SIGINT or ``stop`` is set."""
    done = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
    service = SchedulerService(config)
    server = None
    try:
        service.start()
        if config.api.enabled:
            server = serve_api(service)
        done.wait()
        log.info("stopping the scheduler")
    finally:
        if server is not None:
            server.stop()
        service.stop()
    return 0
