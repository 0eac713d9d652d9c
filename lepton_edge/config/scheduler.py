"""The typed configuration of a scheduler replica (``lepton-edge scheduler --config scheduler.yaml``).

Every model forbids unknown fields and describes every field; ``deploy/scheduler.example.yaml`` shows
each option. Errors name the file, the field path and what was expected.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, ValidationError, model_validator

from lepton_edge.config.base import format_validation_error, read_yaml
from lepton_edge.config.fleet import MqttConfig
from lepton_edge.core.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def default_replica_id() -> str:
    """``<host>-<pid>``, restricted to the characters MQTT client ids and protocol ids allow."""
    host = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


class ReplicasConfig(Strict):
    replica_id: str = Field(
        default_factory=default_replica_id,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Name of this replica in leader election, logs and `issued_by`; default <host>-<pid>.",
    )
    shared_subscriptions: bool = Field(
        False,
        description="Subscribe to telemetry and events through an MQTT v5 shared subscription "
        "(`$share/<share_group>/...`), so several replicas split the ingestion. Needs PostgreSQL as the store.",
    )
    share_group: str = Field(
        "lepton-scheduler",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Name of the shared-subscription group; every replica of one scheduler uses the same.",
    )
    share_presence: bool = Field(
        False,
        description="Also share births, deaths and config reports. Off: every replica receives them (they are "
        "few, and a shared subscription never delivers retained messages, so a starting replica would "
        "miss the fleet's retained births and deaths).",
    )


class IngestConfig(Strict):
    batch_size: int = Field(2000, ge=1, le=100_000, description="Most telemetry messages written in one transaction.")
    flush_interval_s: float = Field(
        0.25, gt=0, le=60, description="Longest time a received telemetry message waits before it is written."
    )
    queue_max: int = Field(
        200_000,
        ge=100,
        description="Telemetry messages waiting for the writer; above it new ones are dropped and counted "
        "(`backlog_full`), which the liveness sweep tolerates (any message counts as a heartbeat).",
    )
    device_rate_hz: float = Field(
        20.0,
        gt=0,
        description="Sustained messages per second accepted from one device (token bucket); above it "
        "messages are rejected as a flood.",
    )
    device_burst: int = Field(100, ge=1, description="Burst size of the per-device token bucket.")
    event_interval_s: float = Field(
        10.0,
        ge=0,
        description="Rejected messages are recorded as an event at most once per this many seconds per "
        "reason (the event carries the count since the last one); every rejection is counted in stats.",
    )
    flood_threshold: int = Field(
        200,
        ge=10,
        le=1_000_000,
        description="Messages of one device rejected as a flood within one second that make this replica "
        "isolate the device: it stops receiving that device's topics at the broker for flood_quarantine_s, so "
        "the broker's queue towards the scheduler keeps room for the other devices (docs/reliability.md).",
    )
    flood_quarantine_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds a flooding device stays isolated before this replica listens to it again (it is "
        "isolated again if it still floods). Keep it below heartbeat_timeout_s, or an isolated device goes "
        "offline.",
    )
    flood_isolation_max_devices: int = Field(
        5000,
        ge=0,
        le=100_000,
        description="Isolating a flooder subscribes to each other known device's topics one by one; above this "
        "many devices a flood is only rejected (0: never isolate).",
    )


class PlacementConfig(Strict):
    headroom: float = Field(
        0.8, gt=0, le=1, description="Highest planned utilisation of a device (sum of required/capacity)."
    )
    hysteresis: float = Field(
        0.15,
        ge=0,
        le=1,
        description="Extra utilisation a device already hosting workloads may reach before anything is moved.",
    )
    debounce_s: float = Field(
        0.2, ge=0, le=60, description="Placement triggers within this window are batched into one re-plan."
    )
    failure_cooldown_s: float = Field(
        300.0,
        ge=0,
        description="After a device rejects or rolls back a workload's config, that workload is not "
        "placed on that device again for this long.",
    )
    thermal_limit_c: float = Field(
        85.0, gt=-273.15, le=500, description="A device whose hottest sensor is above this is throttled."
    )
    under_rate_ratio: float = Field(
        0.9,
        gt=0,
        le=1,
        description="A device is under-rate when its fps stays below this fraction of the required fps of its "
        "workloads for `under_rate_reports` telemetry messages in a row.",
    )
    under_rate_reports: int = Field(3, ge=1, description="Consecutive low reports before a device is under-rate.")
    idle_config: dict[str, JsonValue] = Field(
        default_factory=lambda: {"idle": True},
        description="Desired config pushed to a device with nothing assigned, so it stops running a "
        "workload that moved away (the device config must accept it; see docs/scheduler.md).",
    )


def is_loopback_host(host: str) -> bool:
    """Whether the API bound to ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiConfig(Strict):
    enabled: bool = Field(True, description="Serve the HTTP API and dashboard.")
    host: str = Field("127.0.0.1", min_length=1, description="Address the API binds to (0.0.0.0: every interface).")
    port: int = Field(8080, ge=0, le=65535, description="API port; 0 picks a free port.")
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        le=64 << 20,
        description="Largest request body accepted (bytes); larger ones get 413 before they are read.",
    )
    allowed_hosts: list[Annotated[str, StringConstraints(min_length=1, max_length=253)]] | None = Field(
        None,
        max_length=64,
        description="Host header values the API answers (port ignored; '*.example.com' matches subdomains, "
        "'*' any host); others get 400. Default: host, localhost and 127.0.0.1.",
    )

    insecure_local: bool = Field(
        False,
        description="Serve without authentication, every caller being the admin 'insecure-local' (still "
        "audited); only with a loopback host, for demos. Also the --insecure-local flag.",
    )
    rate_limit_per_s: float = Field(
        50.0, gt=0, le=10_000, description="Requests per second each API token (or remote address) may make."
    )
    rate_limit_burst: int = Field(
        100, ge=1, le=100_000, description="Requests a token may make at once before rate_limit_per_s applies (429)."
    )
    tls_cert: Path | None = Field(
        None, description="PEM certificate (chain) to serve the API over HTTPS; needs tls_key (deploy/make-certs.sh)."
    )
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    client_ca: Path | None = Field(
        None,
        description="PEM CA certificate: when set, clients must present a certificate signed by it (mutual TLS) "
        "as well as their token; needs tls_cert.",
    )

    @model_validator(mode="after")
    def _auth_checks(self) -> ApiConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("api.tls_cert and api.tls_key go together: set both (HTTPS) or neither")
        if self.client_ca is not None and self.tls_cert is None:
            raise ValueError("api.client_ca (mutual TLS) needs api.tls_cert and api.tls_key")
        if self.insecure_local and not is_loopback_host(self.host):
            raise ValueError(
                f"api.insecure_local turns authentication off and is allowed only with a loopback api.host "
                f"(127.0.0.1, ::1, localhost), not {self.host!r}; create an API token instead "
                "(lepton-edge scheduler token create --config scheduler.yaml --name NAME --role admin)"
            )
        return self

    @property
    def trusted_hosts(self) -> list[str]:
        """The effective ``allowed_hosts``."""
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        return list(dict.fromkeys([self.host, "localhost", "127.0.0.1"]))


class ClipsConfig(Strict):
    """The folder of event clips fetched from devices, its quota and how long clips are kept."""

    folder: Path | None = Field(
        None,
        description="Where fetched clips are kept (one subfolder per device). A relative path is relative to the "
        "config file's folder. None: `clips/` beside a SQLite store, else `$LEPTON_SCHEDULER_DATA/clips` "
        "(default `./lepton-scheduler-data/clips`).",
    )
    max_bytes: int | None = Field(
        10 << 30,
        ge=1 << 20,
        le=1 << 50,
        description="Quota of the folder, bytes: when its clips (and the parts being fetched) take more, the "
        "oldest fetched clips are deleted first until they fit; a clip larger than this is not fetched. "
        "None: no quota.",
    )
    retention_s: float | None = Field(
        None,
        gt=0,
        le=10 * 365 * 86400,
        description="Fetched clips older than this many seconds (since their fetch completed) are deleted. "
        "None: kept until the quota needs the room.",
    )


class SchedulerConfig(Strict):
    """One scheduler replica: where the fleet state lives, the broker, and the fleet policies."""

    store_url: str = Field(
        "sqlite:///scheduler.db",
        min_length=1,
        description="Fleet state: sqlite:///path (one replica) or postgresql://user@host/db (several replicas). "
        "A relative SQLite path is relative to the config file's folder.",
    )
    mqtt: MqttConfig = Field(
        description="Broker connection; client_id defaults to lepton-scheduler-<replica_id>, session_expiry_s to 0."
    )
    replicas: ReplicasConfig = Field(default_factory=ReplicasConfig, description="Scale-out and leader election.")
    heartbeat_timeout_s: float = Field(
        30.0, gt=0, description="A device with no message for this long is marked offline."
    )
    sweep_interval_s: float | None = Field(
        None,
        gt=0,
        description="Seconds between liveness sweeps (and leader reconciliations with the store); "
        "default: a quarter of heartbeat_timeout_s, at most 5.",
    )
    leader_check_s: float = Field(
        2.0, gt=0, le=300, description="Seconds between attempts to take (or confirm) placement leadership."
    )
    fleet_rebirth_on_start: bool = Field(
        True, description="Ask every device for a rebirth when this replica becomes leader, to resync."
    )
    stats_log_s: float = Field(30.0, gt=0, description="Seconds between statistics log lines.")
    desired_signing_key: Path | None = Field(
        None,
        description="Ed25519 private key (PEM, from `lepton-edge keygen`) that signs every desired config, so "
        "devices whose agent.scheduler_public_keys lists its public key accept desired documents from this "
        "scheduler only. A relative path is relative to the config file's folder. None: unsigned.",
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Telemetry ingestion and flood control.")
    placement: PlacementConfig = Field(default_factory=PlacementConfig, description="Placement policy.")
    api: ApiConfig = Field(default_factory=ApiConfig, description="HTTP API and dashboard.")
    clips: ClipsConfig = Field(default_factory=ClipsConfig, description="Event clips fetched from devices.")

    @model_validator(mode="before")
    @classmethod
    def _mqtt_client_id(cls, data: Any) -> Any:
        if isinstance(data, dict):
            replicas = data.get("replicas") or {}
            if isinstance(replicas, dict) and "replica_id" not in replicas:
                replicas = {**replicas, "replica_id": default_replica_id()}
                data = {**data, "replicas": replicas}
            mqtt = data.get("mqtt", {})
            if isinstance(mqtt, dict) and isinstance(replicas, dict):
                # No broker session survives a replica: a stopped replica must not keep receiving (and
                # losing) its share of the messages; state comes back from retained messages and rebirths.
                defaults = {"client_id": f"lepton-scheduler-{replicas.get('replica_id')}", "session_expiry_s": 0}
                data = {**data, "mqtt": {**defaults, **mqtt}}
        return data

    @model_validator(mode="after")
    def _checks(self) -> SchedulerConfig:
        if self.replicas.shared_subscriptions and self.store_url.startswith("sqlite"):
            raise ValueError(
                "replicas.shared_subscriptions needs a store shared by the replicas: set store_url to "
                "postgresql://... (SQLite serves one replica)"
            )
        return self

    @property
    def sweep_s(self) -> float:
        """The effective liveness sweep interval."""
        return self.sweep_interval_s or min(5.0, self.heartbeat_timeout_s / 4)


def _files_relative_to(config: SchedulerConfig, base_dir: Path) -> SchedulerConfig:
    """``config`` with its relative key, certificate and clip folder paths resolved against ``base_dir``."""

    def resolve(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else (base_dir / path).resolve()

    api = config.api
    api = api.model_copy(
        update={"tls_cert": resolve(api.tls_cert), "tls_key": resolve(api.tls_key), "client_ca": resolve(api.client_ca)}
    )
    clips = config.clips.model_copy(update={"folder": resolve(config.clips.folder)})
    return config.model_copy(
        update={"desired_signing_key": resolve(config.desired_signing_key), "api": api, "clips": clips}
    )


def parse_scheduler_config(
    data: Any, origin: str = "<scheduler config>", base_dir: Path | None = None
) -> SchedulerConfig:
    """Validate a scheduler config mapping; relative SQLite, key and certificate paths are resolved against
    ``base_dir``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    data = {**data, "mqtt": data.get("mqtt") or {}}
    try:
        config = SchedulerConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, origin)) from None
    if base_dir is not None:
        config = _files_relative_to(config, base_dir)
    url = config.store_url
    if base_dir is not None and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_absolute():
            config = config.model_copy(update={"store_url": f"sqlite:///{(base_dir / path).resolve()}"})
    return config


def load_scheduler_config(path: str | Path) -> SchedulerConfig:
    """Load and validate a scheduler config YAML file."""
    path = Path(path)
    return parse_scheduler_config(read_yaml(path, "scheduler config"), str(path), base_dir=path.parent)
