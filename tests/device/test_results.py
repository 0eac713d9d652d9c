"""The MQTT results sink: its token bucket, best-effort and durable delivery."""

import pytest

from lepton_edge.core.metrics import TokenBucket
from lepton_edge.fleet.protocol import TopicKind
from tests.device.helpers import wait_until


def test_token_bucket_allows_the_rate_plus_a_burst():
    bucket = TokenBucket(10.0, burst=10, now=0.0)
    assert sum(bucket.take(0.0) for _ in range(15)) == 10
    assert sum(bucket.take(0.5) for _ in range(15)) == 5
    assert sum(bucket.take(100.0) for _ in range(50)) == 10  # never more than the burst saved up
    with pytest.raises(ValueError):
        TokenBucket(0)


@pytest.mark.integration
def test_results_above_the_rate_are_dropped_and_counted_without_slowing_the_pipeline(
    mqtt_broker, start_agent, recorder, unique
):
    device = f"rs-{unique}"
    rec = recorder(mqtt_broker.port, f"lepton/v1/devices/{device}/results")
    agent = start_agent(mqtt_broker.port, device, agent={"results": {"max_rate_hz": 4, "qos": 0}})
    wait_until(lambda: agent.controller.stats.results >= 45)
    sink = agent.result_sink
    published, limited = sink.published, sink.rate_limited
    assert limited > published > 0  # 30 fps in, 4 per second (plus a burst of 4) out
    assert published + limited <= agent.controller.stats.results
    assert agent.controller.stats.drops.snapshot().get("sink_full", 0) == 0  # policy drops are not sink_full
    wait_until(lambda: len(rec.of(TopicKind.RESULT)) >= 4)
    messages = rec.of(TopicKind.RESULT)
    assert [m.seq for m in messages] == list(range(1, len(messages) + 1))  # seq counts published results
    assert all(not m.durable for m in messages)


@pytest.mark.integration
def test_best_effort_results_while_offline_are_dropped_not_queued(fresh_broker, start_agent, unique):
    agent = start_agent(fresh_broker.port, f"rs-{unique}", agent={"results": {"qos": 0}})
    assert agent.client.wait_connected(10)
    fresh_broker.kill()
    wait_until(lambda: not agent.connected)
    sink = agent.result_sink
    before = sink.send_failed
    results = agent.controller.stats.results
    wait_until(lambda: sink.send_failed >= before + 5)  # QoS 0 while offline fails at once and is counted
    wait_until(lambda: agent.controller.stats.results >= results + 10)  # the pipeline does not wait
    assert not [m for m in agent.outbox.pending() if m.topic.endswith("/results")]  # best effort: no outbox
