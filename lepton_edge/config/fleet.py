"""Schemas of the fleet connection: the MQTT broker and the outbox. Only pydantic: no client is imported."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class TlsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = Field(None, description="CA bundle that signs the broker certificate; None: system CAs.")
    cert_file: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = Field(None, description="Private key (PEM) of the client certificate.")
    insecure: bool = Field(
        False,
        description="Skip the broker hostname check. Only for testing: it allows man-in-the-middle attacks.",
    )

    @model_validator(mode="after")
    def _cert_with_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both for mutual TLS, or neither")
        return self


class MqttConfig(BaseModel):
    """How a device (or the scheduler) reaches the MQTT broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("localhost", min_length=1, description="Broker host name or IP address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (usually 1883, 8883 with TLS).")
    client_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[!-~]+$",
        description="Fixed MQTT client id of this device (printable ASCII, no spaces); a persistent session "
        "is bound to it, so it must not change and must not be shared by two processes.",
    )
    keepalive_s: int = Field(30, ge=5, le=65535, description="Seconds between keepalive pings when idle.")
    session_expiry_s: int = Field(
        86400,
        ge=0,
        le=0xFFFFFFFF,
        description="How long the broker keeps the session (subscriptions, queued QoS 1 messages) after a "
        "disconnect. 0 ends the session at disconnect: messages sent while offline are lost.",
    )
    tls: TlsConfig | None = Field(None, description="Connect with TLS; None uses plain TCP.")
    username: str | None = Field(
        default_factory=lambda: os.environ.get("LEPTON_MQTT_USERNAME") or None,
        description="User name; defaults to the LEPTON_MQTT_USERNAME environment variable.",
    )
    password: SecretStr | None = Field(
        default_factory=lambda: (
            SecretStr(os.environ["LEPTON_MQTT_PASSWORD"]) if os.environ.get("LEPTON_MQTT_PASSWORD") else None
        ),
        description="Password; defaults to the LEPTON_MQTT_PASSWORD environment variable.",
    )
    reconnect_min_s: float = Field(1.0, gt=0, le=3600, description="First wait before reconnecting.")
    reconnect_max_s: float = Field(60.0, gt=0, le=3600, description="Cap of the doubling reconnect wait.")
    connect_timeout_s: float = Field(10.0, gt=0, le=300, description="Timeout of one TCP/TLS connect attempt.")
    transport: Literal["tcp", "websockets"] = Field("tcp", description="MQTT over TCP or over WebSockets.")
    websocket_path: str = Field("/mqtt", description="HTTP path of the broker's WebSocket endpoint.")
    max_inflight: int = Field(20, ge=1, le=65535, description="QoS 1 messages sent but not yet acknowledged.")
    max_queued: int = Field(
        10000,
        ge=0,
        description="QoS 1 messages held in memory while offline or over max_inflight; 0: unlimited.",
    )

    @model_validator(mode="after")
    def _checks(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username (set username or LEPTON_MQTT_USERNAME)")
        return self



class OutboxConfig(BaseModel):
    """Where the outbox lives and how big it may grow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="SQLite database file; its folder is created.")
    max_bytes: int = Field(
        64 * 1024 * 1024,
        ge=4096,
        description="Bound on stored topic + payload bytes (the file is somewhat larger: SQLite overhead).",
    )
    max_age_s: float | None = Field(
        7 * 86400.0, gt=0, description="Messages older than this are dropped (and counted); None keeps them."
    )
    batch_size: int = Field(32, ge=1, le=1000, description="Messages the forwarder keeps in flight at once.")
    synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="`normal`: a put survives a process crash; `full`: also a power loss (an fsync per put).",
    )
    disk_reserve_bytes: int = Field(
        1024 * 1024,
        ge=0,
        description="Size of the preallocated `<path>.reserve` file, deleted when the file system is full so "
        "SQLite has room to drop low-priority messages for a high-priority one; 0 keeps no reserve.",
    )
