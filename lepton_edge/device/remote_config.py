"""Shadow-style remote configuration: desired documents in, reported documents out.

Rules (docs/protocol.md, "Remote configuration"):

- ``desired.config`` is validated with the same schema as the local file (:func:`parse_config`); its
  relative paths are relative to the agent's state folder.
- Identity and connection are local: a desired config whose ``device_id`` or ``agent`` settings differ
  from the local file is rejected, except ``agent.telemetry_interval_s``, ``agent.results`` and
  ``agent.health_check``, which can be changed remotely. Omitted, they stay as in the local file.
- Versions not newer than the last handled one (applied, rejected or rolled back) are ignored, so a
  duplicate or a retained document delivered again after a reconnect is applied once. While one
  version is being applied, only the newest of those that arrive meanwhile is kept.
- Everything a desired config points at must pass the device's remote policy (``agent.remote_policy`` of
  the local file, lepton_edge.device.remote_policy): file paths inside the allowed folders and never the
  agent's own state, allow-listed source schemes and hosts, a bounded telemetry interval. The policy itself
  cannot be set remotely. A refused config is reported with one line per problem; the last good one keeps
  running.
- ``{"idle": true}`` (what the scheduler pushes to a device left without a workload) is a config like any
  other: applying it stops the pipeline, and the device waits, connected, for a workload config.
- A desired config whose artifact (``model.artifact``) is not on the device yet waits for its download,
  which runs on a download worker (lepton_edge.device.artifact_fetcher) so the config worker stays free:
  newer desired configs are handled meanwhile (and cancel the older download), an event
  ``config.waiting_for_download`` says which version waits, and the config is applied when its download
  completes if it is still the newest one (a refused or failed download is reported as ``rejected``).
- The last good config and its version are persisted atomically; after a restart the device starts
  from it (it is newer than the local file, version 0) and reports it in its birth.

Authorization is the broker's job: anyone allowed to publish on a device's desired topic controls it
(documents are not signed yet), so restrict that topic with broker ACLs. Versions are the scheduler's and
bounded (protocol.MAX_CONFIG_VERSION): a desired version more than MAX_CONFIG_VERSION_STEP above the handled
one is refused and reported, and the running config kept, so a bogus huge version cannot lock the device out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lepton_edge.config.device import DeviceConfig, parse_config
from lepton_edge.config.pipeline import ArtifactRef
from lepton_edge.core.errors import ConfigError, UpdateError
from lepton_edge.device.artifact_common import shown_url
from lepton_edge.device.artifact_fetcher import ArtifactFetcher
from lepton_edge.device.controller import ApplyResult, RuntimeController
from lepton_edge.device.remote_policy import check_remote_config, policy_fields
from lepton_edge.device.state import ConfigState, StateStore
from lepton_edge.fleet.protocol import (
    MAX_CONFIG_VERSION,
    MAX_CONFIG_VERSION_STEP,
    MAX_TELEMETRY_WORKLOADS,
    DesiredConfig,
    ReportedConfig,
    TopicKind,
    WorkloadOutcome,
    decode,
)

log = logging.getLogger(__name__)

REMOTE_AGENT_FIELDS = frozenset({"telemetry_interval_s", "results", "health_check"})
"""Agent settings a desired config may change; every other agent setting is local to the device."""
MAX_ERRORS = 100
MAX_ERROR_CHARS = 4096

Reporter = Callable[[ReportedConfig], None]
EventSink = Callable[[str, str, str, dict[str, Any]], None]
"""``event(kind, severity, message, details)``."""


def error_lines(error: BaseException | str) -> list[str]:
    """An error message as a report's ``errors`` list (one entry per line, within protocol limits)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or ["unknown error"]
    return [line[:MAX_ERROR_CHARS] for line in lines[:MAX_ERRORS]]


def workload_outcomes(config: DeviceConfig, applied: ApplyResult) -> dict[str, ApplyResult]:
    """What to report per workload of a multi-stream ``config``: each workload the apply touched with its own
    outcome, the untouched ones as applied (they run as the document says); empty for the single form."""
    if not config.multi:
        return {}
    untouched = ApplyResult("applied")
    return {name: applied.workloads.get(name, untouched) for name in config.workloads}


class RemoteConfig:
    """Validates, orders and applies desired configs on a worker thread; reports every outcome.

    ``report(ReportedConfig)`` publishes the report (retained, through the outbox); ``event(...)`` publishes
    an event. :meth:`handle_desired` is the MQTT handler (it only decodes and queues).
    """

    def __init__(self, local: DeviceConfig, store: StateStore, *, report: Reporter, event: EventSink) -> None:
        if local.agent is None:
            raise ConfigError("remote configuration needs the agent section in the local config")
        self.local = local
        self.store = store
        self.report = report
        self.event = event
        self.state = store.load_config_state()
        self.controller: RuntimeController | None = None
        self.last_report: ReportedConfig | None = None
        self.ignored = 0
        """Desired documents ignored because their version was not newer than the last handled one."""
        self._pending: DesiredConfig | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._fetcher: ArtifactFetcher | None = None
        self._waiting: DesiredConfig | None = None
        """The desired config whose artifact is downloading."""
        self._download_errors: dict[int, UpdateError] = {}

    @property
    def handled_version(self) -> int:
        return self.state.handled_version

    @property
    def waiting_version(self) -> int | None:
        """The desired version waiting for its artifact download, or None."""
        waiting = self._waiting
        return waiting.version if waiting is not None else None

    # -- startup ------------------------------------------------------------------------------------

    def initial_config(self) -> tuple[DeviceConfig, int]:
        """The config to start with: the persisted last good one if there is one, else the local file."""
        state = self.state
        if state.handled_version > MAX_CONFIG_VERSION:  # persisted before versions were bounded: a lock-out
            self.fall_back_to_local(f"the handled config version {state.handled_version} is out of range")
            state = self.state
        if state.active_version > 0 and state.config is not None:
            origin = f"persisted config v{state.active_version}"
            try:
                return self.validate(state.config, origin), state.active_version
            except ConfigError as e:
                self.fall_back_to_local(f"the {origin} is no longer valid: {e}")
        return self.local, 0

    def fall_back_to_local(self, reason: str) -> None:
        """Run the local file (version 0) and forget the handled version, so the retained desired config
        is evaluated again (and its outcome reported) instead of being ignored."""
        log.error("%s; starting from the local config file", reason)
        self.event("config.fallback", "error", "starting from the local config file", {"reason": reason[:4000]})
        self.state = ConfigState()
        self._save()

    # -- validation ---------------------------------------------------------------------------------

    def validate(self, data: dict[str, Any], origin: str) -> DeviceConfig:
        """The DeviceConfig for a desired ``config`` mapping, with the local identity and connection.

        Raises ConfigError listing every problem.
        """
        local = self.local
        assert local.agent is not None
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a mapping, got {type(data).__name__}")
        data = dict(data)
        problems = []
        if "device_id" in data and data["device_id"] != local.device_id:
            problems.append(
                f"{origin}: device_id: {str(data['device_id'])[:80]!r} differs from this device's "
                f"{local.device_id!r}; identity is local: remove device_id from the desired config"
            )
        data["device_id"] = local.device_id
        problems.extend(policy_fields(data, origin))
        remote_agent = data.get("agent")
        if remote_agent is None:
            data.pop("agent", None)
        if problems:
            raise ConfigError("\n".join(problems))
        config = parse_config(data, origin, base_dir=self.store.dir)
        if config.agent is None or not isinstance(remote_agent, dict):
            return self._within_policy(config.model_copy(update={"agent": local.agent}), origin)
        updates = {}
        for key in remote_agent:
            if key in REMOTE_AGENT_FIELDS:
                updates[key] = getattr(config.agent, key)
            elif getattr(config.agent, key) != getattr(local.agent, key):
                problems.append(
                    f"{origin}: agent.{key} differs from the local config; it is local to the device "
                    f"(identity and connection are not configured remotely). Only "
                    f"{', '.join(sorted(REMOTE_AGENT_FIELDS))} may be set in agent"
                )
        if problems:
            raise ConfigError("\n".join(problems))
        return self._within_policy(config.model_copy(update={"agent": local.agent.model_copy(update=updates)}), origin)

    def _within_policy(self, config: DeviceConfig, origin: str) -> DeviceConfig:
        """``config`` if it passes the local remote policy; ConfigError naming each field and rule if not."""
        assert self.local.agent is not None
        problems = check_remote_config(config, self.local.agent, origin)
        if problems:
            raise ConfigError("\n".join(problems))
        return config

    # -- MQTT handler (network thread) --------------------------------------------------------------

    def handle_desired(self, payload: bytes, topic: str | None = None) -> DesiredConfig | None:
        """Decode a desired document and queue it if its version is new. Raises ProtocolError if invalid.

        Returns the queued document, or None when it was ignored (empty retained payload, old version).
        """
        if not payload:
            log.debug("desired config cleared on %s; keeping the running config", topic)
            return None
        desired = decode(TopicKind.CONFIG_DESIRED, payload, topic)
        assert isinstance(desired, DesiredConfig)
        with self._cond:
            pending = self._pending
            if desired.version <= self.state.handled_version or (
                pending is not None and desired.version <= pending.version
            ):
                self.ignored += 1
                log.debug("desired config v%d ignored (already handled or queued)", desired.version)
                return None
            self._pending = desired
            self._cond.notify_all()
        return desired

    # -- worker ---------------------------------------------------------------------------------------

    def start(self, controller: RuntimeController) -> None:
        self.controller = controller
        self._stopping = False
        artifacts = getattr(controller, "artifacts", None)
        self._fetcher = ArtifactFetcher(artifacts, self._download_done) if artifacts is not None else None
        self._thread = threading.Thread(target=self._run, name="lepton-agent-config", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._fetcher is not None:
            self._fetcher.stop(timeout=0)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        if self._fetcher is not None:
            self._fetcher.stop(timeout=timeout if timeout is not None else 5.0)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or being applied; True if that happened within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                desired, self._pending = self._pending, None
                self._busy = True
            try:
                self.process(desired)
            except Exception:
                log.exception("applying desired config v%d failed unexpectedly", desired.version)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def process(self, desired: DesiredConfig) -> ApplyResult | None:
        """Validate and apply one desired document, persist the outcome and report it.

        Returns None when the document is old, or waits for its artifact download (it comes back here when
        the download ends, see :meth:`_download_done`)."""
        assert self.controller is not None, "start() binds the controller"
        if desired.version <= self.state.handled_version:
            return None
        origin = f"desired config v{desired.version}"
        if desired.version > self.state.handled_version + MAX_CONFIG_VERSION_STEP:
            # A bogus huge version would lock this device out of every later config: refuse it, keep the
            # running config and the handled version, and say why.
            reason = (
                f"{origin}: version is more than {MAX_CONFIG_VERSION_STEP} above the current "
                f"v{self.state.handled_version}; refused, keeping the running config"
            )
            log.warning("%s", reason)
            self.publish_report(desired.version, ApplyResult("rejected", [reason]))
            return ApplyResult("rejected", [reason])
        self._supersede_downloads(desired.version)
        try:
            config = self.validate(dict(desired.config), origin)
            if self._fetch_first(desired, config):
                return None
        except (ConfigError, UpdateError) as e:
            result = ApplyResult("rejected", error_lines(e))
        else:
            applied = self.controller.apply(config, desired.version)
            lines = [line for err in applied.errors for line in error_lines(err)]
            result = ApplyResult(applied.outcome, lines[:MAX_ERRORS], applied.changes,
                                 workload_outcomes(config, applied))
        if result.outcome == "applied":
            self.state = ConfigState(desired.version, desired.version, dict(desired.config))
        else:
            self.state = ConfigState(desired.version, self.state.active_version, self.state.config)
        self._save()
        self.publish_report(desired.version, result)
        return result

    def _supersede_downloads(self, version: int) -> None:
        """A desired config ``version`` is being handled: an older one no longer waits for its download."""
        if self._fetcher is not None:
            self._fetcher.supersede(version)
        with self._cond:
            if self._waiting is not None and self._waiting.version < version:
                self._waiting = None

    def _fetch_first(self, desired: DesiredConfig, config: DeviceConfig) -> bool:
        """True when ``config`` waits for its artifact, now downloading; raises UpdateError when that download
        was refused or failed."""
        error = self._download_errors.pop(desired.version, None)
        if error is not None:
            raise error
        ref: ArtifactRef | None = config.model.artifact if config.model is not None else None
        fetcher = self._fetcher
        if ref is None or fetcher is None or fetcher.artifacts.has(ref):
            return False
        fetcher.artifacts.check(ref)  # a reference the device refuses is rejected now, nothing fetched
        with self._cond:
            self._waiting = desired
        if fetcher.start(desired.version, ref):
            message = f"desired config v{desired.version} waits for its artifact download"
            log.info("%s (%s)", message, shown_url(ref.url))
            self.event(
                "config.waiting_for_download",
                "info",
                message,
                {"version": desired.version, "url": shown_url(ref.url), "bytes": ref.size},
            )
        return True

    def _download_done(self, version: int, error: UpdateError | None) -> None:
        """Download thread: queue the waiting config again (staged, or with its error) if still the newest."""
        with self._cond:
            waiting = self._waiting
            if waiting is None or waiting.version != version:
                return
            self._waiting = None
            pending = self._pending
            if version <= self.state.handled_version or (pending is not None and pending.version > version):
                return
            if error is not None:
                self._download_errors = {version: error}
            self._pending = waiting
            self._cond.notify_all()

    def _save(self) -> None:
        try:
            self.store.save_config_state(self.state)
        except OSError as e:
            log.error("cannot persist the remote config state in %s: %s", self.store.dir, e)
            self.event(
                "config.persist_failed",
                "error",
                "cannot persist the remote config state",
                {"error": str(e)[:4000]},
            )

    def publish_report(self, version: int, result: ApplyResult) -> None:
        report = ReportedConfig(
            device_id=self.local.device_id,
            version=version,
            outcome=result.outcome,
            errors=result.errors[:MAX_ERRORS],
            timestamp=time.time(),
            active_version=self.state.active_version,
            workloads={name: WorkloadOutcome(outcome=r.outcome, errors=[e[:4000] for e in r.errors[:MAX_ERRORS]])
                       for name, r in list(result.workloads.items())[:MAX_TELEMETRY_WORKLOADS]},
        )
        self.last_report = report
        self.report(report)
        severity = {"applied": "info", "rejected": "warning", "rolled_back": "error"}[result.outcome]
        details: dict[str, Any] = {"version": version, "changes": sorted(result.changes)}
        if result.errors:
            details["errors"] = [e[:500] for e in result.errors[:10]]
        message = f"desired config v{version} {result.outcome}"
        self.event(f"config.{result.outcome}", severity, message, details)
