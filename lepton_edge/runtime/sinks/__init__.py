"""Result sinks: JSON Lines, annotated video, console table."""

from __future__ import annotations

from collections.abc import Sequence

from lepton_edge.config.pipeline import ConsoleSinkConfig, JsonlSinkConfig, SinkConfig, VideoSinkConfig
from lepton_edge.runtime.sinks.base import Sink
from lepton_edge.runtime.sinks.console import ConsoleSink
from lepton_edge.runtime.sinks.jsonl import JsonlSink
from lepton_edge.runtime.sinks.video import VideoSink


def create_sinks(configs: Sequence[SinkConfig], stats, title: str = "") -> list[Sink]:
    """Build the configured sinks; ``stats`` (PipelineStats) feeds the console table."""

    sinks: list[Sink] = []
    for cfg in configs:
        if isinstance(cfg, JsonlSinkConfig):
            sinks.append(JsonlSink(cfg))
        elif isinstance(cfg, VideoSinkConfig):
            sinks.append(VideoSink(cfg))
        elif isinstance(cfg, ConsoleSinkConfig):
            sinks.append(ConsoleSink(cfg, stats, title))
    return sinks


__all__ = ["Sink", "create_sinks"]
