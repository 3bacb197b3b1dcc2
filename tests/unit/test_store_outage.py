"""What the collector says while its store cannot write: the first failure at once, then one
line per interval (however many retries fall in it), and one line when writes work again."""

import logging

from tests.support.clock import FakeClock
from virtscale.collector.outage import StoreOutage
from virtscale.collector.store import StoreFailed


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "virtscale.collector.outage"]


def test_one_line_per_interval_while_it_lasts_and_one_when_it_ends(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    outage = StoreOutage(interval=30, clock=clock)
    error = StoreFailed("store sqlite:///h.db: writing 5 result(s) failed: database or disk is full")
    for second in range(0, 95, 5):  # a retry every 5 s for 90 s
        clock.now = 1000 + second
        outage.failed(error, 5, 5.0)
    assert outage.ongoing and outage.failures == 19
    said = lines(caplog)
    assert len(said) == 4, said  # at 0, 30, 60 and 90 s
    assert said[0] == f"{error}; 5 result(s) wait unacked; retrying in 5.0 s with backoff"
    assert said[1] == f"store still cannot write after 30 s (7 attempts): {error}; 5 result(s) wait unacked"
    clock.now = 1100
    outage.succeeded()
    outage.succeeded()
    assert lines(caplog)[4:] == ["store writes again after 100 s and 19 failed attempt(s)"]
    assert not outage.ongoing and outage.failures == 0


def test_a_write_that_works_says_nothing(caplog):
    caplog.set_level(logging.INFO)
    StoreOutage(clock=FakeClock()).succeeded()
    assert lines(caplog) == []


def test_a_new_outage_is_reported_at_once(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    outage = StoreOutage(interval=30, clock=clock)
    outage.failed(StoreFailed("locked"), 1, 0.5)
    outage.succeeded()
    clock.now += 1  # well within the interval of the first
    outage.failed(StoreFailed("locked again"), 1, 0.5)
    said = lines(caplog)
    assert len(said) == 3 and said[0].startswith("locked;") and said[2].startswith("locked again;"), said
