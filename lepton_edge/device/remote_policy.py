"""The device's remote policy: what a remote (desired) config may point at (docs/protocol.md, "Remote policy").

The policy is ``agent.remote_policy`` of the local config file; a remote config can neither set nor change it.
It governs remote input only (a local ``--config`` file is trusted as it is):

- every file path (model, labels, calibration table and data, validation data, engine cache, sink files, file
  and npy sources) must resolve, symlinks followed and ``..`` collapsed, inside one of the allowed folders
  (the state and cache folders by default) and must not be one of the agent's own state files (session
  counter, last good config, outbox database, downloaded artifacts);
- a source URI's scheme must be allowed; http(s) only to hosts listed in ``http_hosts`` (so loopback,
  link-local and private addresses only when listed), rtsp(s) never to loopback or link-local addresses
  unless listed;
- an artifact URL (``model.artifact.url``) must use a scheme of ``artifact_schemes``; http(s) only to hosts
  listed in ``artifact_hosts`` (the signature covers the URL path, not the host), file:// only inside the
  allowed folders; checked here, before anything is fetched;
- ``agent.telemetry_interval_s`` at most ``max_telemetry_interval_s``, so a live device never looks dead.
- at most :data:`MAX_REMOTE_SINKS` sinks (each runs a thread, holds a file and buffers up to its queue size).
- a ``clips`` section (:func:`check_remote_clips`): its folder a folder of its own strictly inside an allowed folder,
  holding none of the agent's state, and its quota at most ``max_clip_bytes``.
- ``preprocess`` scale, mean and std that keep normalized pixel values within ``MAX_REMOTE_PIXEL_VALUE``
  (1e308 gave infinite scores, and every result was then dropped while telemetry looked healthy).

Each problem is one line naming the field, the value and the rule; the caller refuses the whole config.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lepton_edge.config.clips import ClipsConfig
from lepton_edge.config.device import AgentConfig, DeviceConfig, RemotePolicyConfig, default_cache_dir
from lepton_edge.config.pipeline import ModelConfig
from lepton_edge.device.state import CONFIG_FILE, SESSION_FILE

ARTIFACTS_DIR = "artifacts"
"""Folder of downloaded artifacts inside the state folder (lepton_edge.device.agent)."""
_VIDEO_DEVICE = re.compile(r"^/dev/video[0-9]{1,3}$")
MAX_REMOTE_SINKS = 8
"""Most sinks a remote config may run; the schema bounds each one, this bounds how many."""
MAX_REMOTE_PIXEL_VALUE = 1e6
"""Bound on |(pixel * scale - mean) / std| for pixels 0..255 in a remote preprocess (real ones stay below 300)."""


def allowed_folders(agent: AgentConfig) -> list[Path]:
    """The folders remote paths must resolve into, resolved themselves."""
    folders = agent.remote_policy.allowed_folders
    if folders is None:
        folders = [agent.state_dir, default_cache_dir()]
    return [Path(f).resolve() for f in folders]


def owned_paths(agent: AgentConfig) -> list[Path]:
    """The agent's own state: no remote path may name these (or anything that starts with their names)."""
    state = Path(agent.state_dir)
    paths = [state / SESSION_FILE, state / CONFIG_FILE, state / ARTIFACTS_DIR, Path(agent.outbox.path)]
    return [p.resolve() for p in paths]


def check_remote_config(config: DeviceConfig, agent: AgentConfig, origin: str) -> list[str]:
    """Every way ``config`` (a remote config, already validated and with paths made absolute) breaks the
    policy of the local ``agent`` section; empty when it may be applied. Each workload of the multi-stream form is
    checked as the single-form config it runs (:meth:`DeviceConfig.workload_views`)."""
    problems = []
    for name, view in config.workload_views().items():
        where = f"{origin}: workloads.{name}" if config.multi else origin
        problems += _check_workload(view, agent, where, model=not config.multi)
    for name, model in config.models.items():  # cascade models are in no workload's view
        checker = _Checker(agent, f"{origin}: models.{name}")
        _check_model(checker, model)
        problems += checker.problems
    sinks = sum(len(w.sinks) for w in config.workloads.values())
    if sinks > MAX_REMOTE_SINKS:
        problems.append(f"{origin}: workloads: {sinks} sinks in all refused by the remote policy: a remote config "
                        f"runs at most {MAX_REMOTE_SINKS} sinks on the device")
    if config.agent is not None:
        limit = agent.remote_policy.max_telemetry_interval_s
        interval = config.agent.telemetry_interval_s
        if interval > limit and interval != agent.telemetry_interval_s:  # the local value stays as it is
            problems.append(
                f"{origin}: agent.telemetry_interval_s: {interval:g} s is above the remote limit of {limit:g} s "
                "(remote_policy.max_telemetry_interval_s, kept below the scheduler's heartbeat timeout so a "
                "live device never looks offline)"
            )
    return problems


def _check_model(checker: _Checker, model: ModelConfig, prefix: str = "") -> None:
    checker.path(f"{prefix}path", model.path)
    if isinstance(model.labels, Path):
        checker.path(f"{prefix}labels", model.labels)
    for name in ("calibration", "validation_data", "cache_dir"):
        value = getattr(model, name)
        if value is not None:
            checker.path(f"{prefix}{name}", value)
    if model.calibration_data is not None:
        checker.path(f"{prefix}calibration_data", Path(model.calibration_data))
    if model.artifact is not None:
        checker.artifact_url(model.artifact.url)


def _check_workload(config: DeviceConfig, agent: AgentConfig, origin: str, *, model: bool) -> list[str]:
    """The policy's rules for one single-form config; ``model`` False leaves its model to the caller."""
    checker = _Checker(agent, origin)
    if model and config.model is not None:
        _check_model(checker, config.model, "model.")
    for i, cascade in enumerate(config.cascade if model else ()):  # the multi form's are among its models
        _check_model(checker, cascade.model, f"cascade.{i}.model.")
    if len(config.sinks) > MAX_REMOTE_SINKS:
        checker.refuse("sinks", f"{len(config.sinks)} sinks", f"a remote config runs at most {MAX_REMOTE_SINKS} sinks")
    pre = config.preprocess
    largest = (255 * pre.scale + max(abs(m) for m in pre.mean)) / min(abs(s) for s in pre.std)
    if not largest <= MAX_REMOTE_PIXEL_VALUE:  # also catches inf and nan
        checker.refuse("preprocess", f"scale={pre.scale:g}, mean={pre.mean}, std={pre.std}",
                       f"normalized pixel values could reach {largest:g}; a remote config keeps them within "
                       f"±{MAX_REMOTE_PIXEL_VALUE:g}")
    for i, sink in enumerate(config.sinks):
        path = getattr(sink, "path", None)
        if path is not None:
            checker.path(f"sinks.{i}.path", path)
        max_bytes = getattr(sink, "max_bytes", None)
        if max_bytes is not None and max_bytes > agent.remote_policy.max_sink_bytes:
            checker.refuse(f"sinks.{i}.max_bytes", f"{max_bytes} bytes",
                           f"a remote file sink rotates at most at remote_policy.max_sink_bytes "
                           f"({agent.remote_policy.max_sink_bytes} bytes)")
    if config.source is not None:
        checker.source(config.source.uri)
        if config.source.clips is not None:
            checker.problems += check_remote_clips(config.source.clips, agent, origin, "source.clips")
    return checker.problems


def check_remote_clips(clips: ClipsConfig, agent: AgentConfig, origin: str, field: str = "clips") -> list[str]:
    """Every way a remote ``clips`` section (paths already made absolute) breaks the policy of the local ``agent``:
    the clip folder must resolve (symlinks followed) strictly inside an allowed folder, be none of the agent's own
    state and hold none of it (the clip store deletes ``.part`` files and unpaired ``.mp4`` files it finds), and the
    quota must stay within ``remote_policy.max_clip_bytes``. The schema bounds the times and sizes."""
    checker = _Checker(agent, origin)
    checker.path(f"{field}.folder", clips.folder)
    try:
        folder = Path(clips.folder).resolve()
    except (OSError, RuntimeError):
        return checker.problems  # already refused by path()
    if any(folder == allowed for allowed in checker.folders):
        checker.refuse(f"{field}.folder", clips.folder, "clips need a folder of their own inside an allowed folder, "
                       "not the allowed folder itself")
    state = Path(agent.state_dir).resolve()
    if any(own.is_relative_to(folder) for own in checker.owned) or state.is_relative_to(folder):
        checker.refuse(f"{field}.folder", clips.folder, "the clip folder may not hold the agent's own state")
    limit = agent.remote_policy.max_clip_bytes
    if clips.max_bytes > limit:
        checker.refuse(f"{field}.max_bytes", f"{clips.max_bytes} bytes",
                       f"a remote clip quota is at most remote_policy.max_clip_bytes ({limit} bytes)")
    return checker.problems


def policy_fields(data: dict[str, Any], origin: str) -> list[str]:
    """Problems for a remote config mapping that tries to set the remote policy itself."""
    problems = []
    if "remote_policy" in data:
        problems.append(f"{origin}: remote_policy: {_LOCAL_ONLY}")
    agent = data.get("agent")
    if isinstance(agent, dict) and "remote_policy" in agent:
        problems.append(f"{origin}: agent.remote_policy: {_LOCAL_ONLY}")
    return problems


_LOCAL_ONLY = (
    "the remote policy is set only by the device's local config file and cannot be changed remotely; "
    "remove it from the desired config"
)


class _Checker:
    def __init__(self, agent: AgentConfig, origin: str) -> None:
        self.policy: RemotePolicyConfig = agent.remote_policy
        self.origin = origin
        self.folders = allowed_folders(agent)
        self.owned = owned_paths(agent)
        self.problems: list[str] = []

    def refuse(self, field: str, value: object, rule: str) -> None:
        self.problems.append(f"{self.origin}: {field}: {str(value)[:200]!r} refused by the remote policy: {rule}")

    def path(self, field: str, path: Path) -> None:
        try:
            resolved = Path(path).resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop, an unreadable folder
            self.refuse(field, path, f"cannot be resolved ({e})")
            return
        for own in self.owned:
            if resolved == own or resolved.is_relative_to(own) or (
                resolved.parent == own.parent and resolved.name.startswith(own.name)
            ):
                self.refuse(field, path, f"{own} is the agent's own state and is never named by a remote config")
                return
        if not any(resolved.is_relative_to(folder) for folder in self.folders):
            shown = ", ".join(str(f) for f in self.folders)
            where = f" (it resolves to {resolved})" if resolved != Path(path) else ""
            self.refuse(
                field,
                path,
                f"file paths must stay inside the allowed folders ({shown}){where}; "
                "see agent.remote_policy.allowed_folders in the local config",
            )

    def source(self, uri: str) -> None:
        field = "source.uri"
        scheme, sep, rest = uri.partition("://")
        scheme = scheme.lower() if sep else ""
        if not sep:
            if uri.startswith("gst:"):
                scheme = "gst"
            elif _VIDEO_DEVICE.match(uri):
                scheme = "v4l2"
            else:
                scheme, rest = "file", uri
        if scheme in ("http", "https"):
            self.http_host(uri)
            return
        if scheme not in self.policy.source_schemes:
            allowed = ", ".join(self.policy.source_schemes)
            self.refuse(field, uri, f"scheme {scheme}:// is not allowed (allowed: {allowed}, and http(s) to "
                        "the hosts in agent.remote_policy.http_hosts)")
            return
        if scheme in ("file", "npy"):
            if rest.startswith("localhost/"):
                rest = rest[len("localhost"):]
            if not rest.startswith("/"):
                self.refuse(field, uri, "file URIs need an absolute path inside the allowed folders")
                return
            self.path(field, Path(rest))
            if "?" in rest:  # the path the source opens, without its options
                self.path(field, Path(rest.split("?", 1)[0]))
        elif scheme in ("rtsp", "rtsps"):
            host = _hostname(uri)
            if host is None or (_internal(host, private=False) and host not in self.policy.http_hosts):
                self.refuse(field, uri, "rtsp to a loopback, link-local or missing host is refused unless the "
                            "host is listed in agent.remote_policy.http_hosts")

    def artifact_url(self, url: str) -> None:
        field = "model.artifact.url"
        scheme = urlsplit(url).scheme.lower()
        if scheme not in self.policy.artifact_schemes:
            allowed = ", ".join(self.policy.artifact_schemes)
            self.refuse(field, url, f"scheme {scheme}:// is not allowed for artifacts (allowed: {allowed}; "
                        "agent.remote_policy.artifact_schemes)")
        elif scheme == "file":
            self.path(field, Path(unquote(urlsplit(url).path)))
        else:
            host = _hostname(url)
            if host is None or host not in self.policy.artifact_hosts:
                kind = "a loopback, link-local or private address, " if host and _internal(host, private=True) else ""
                self.refuse(field, url, f"artifact host {host!r} is {kind}not in agent.remote_policy.artifact_hosts "
                            "(artifacts are fetched only from listed hosts)")

    def http_host(self, uri: str) -> None:
        host = _hostname(uri)
        if host is None:
            self.refuse("source.uri", uri, "http(s) URI without a host")
        elif host not in self.policy.http_hosts:
            kind = "a loopback, link-local or private address, " if _internal(host, private=True) else ""
            self.refuse(
                "source.uri",
                uri,
                f"http(s) host {host!r} is {kind}not in agent.remote_policy.http_hosts (http sources reach only "
                "listed hosts)",
            )


def _hostname(uri: str) -> str | None:
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return None
    return host.lower() if host else None


def _internal(host: str, *, private: bool) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    internal = address.is_loopback or address.is_link_local or address.is_unspecified
    return internal or (private and address.is_private)
