import threading

import pytest

from lepton_edge.runtime.channel import CLOSED, Channel, ChannelClosed


def test_latest_policy_evicts_oldest_and_never_blocks():
    ch = Channel(1, "latest")
    assert ch.put(1) is None
    assert ch.put(2) == 1
    assert ch.put(3) == 2
    assert ch.get() == 3


def test_block_policy_waits_for_room():
    ch = Channel(1, "block")
    ch.put("a")
    done = threading.Event()

    def producer():
        ch.put("b")
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert not done.wait(0.1)
    assert ch.get() == "a"
    assert done.wait(2)
    assert ch.get() == "b"
    t.join()


def test_close_drains_then_reports_closed():
    ch = Channel(3)
    ch.put(1)
    ch.put(2)
    ch.close()
    with pytest.raises(ChannelClosed):
        ch.put(3)
    assert [ch.get(), ch.get(), ch.get()] == [1, 2, CLOSED]


def test_abort_wakes_blocked_producer_and_consumer():
    full, empty = Channel(1), Channel(1)
    full.put(0)
    errors = []

    def blocked_put():
        try:
            full.put(1)
        except ChannelClosed:
            errors.append("put")

    got = []
    threads = [threading.Thread(target=blocked_put), threading.Thread(target=lambda: got.append(empty.get()))]
    for t in threads:
        t.start()
    full.abort()
    empty.abort()
    for t in threads:
        t.join(2)
        assert not t.is_alive()
    assert errors == ["put"] and got == [CLOSED]


def test_get_timeout():
    with pytest.raises(TimeoutError):
        Channel(1).get(timeout=0.01)
