"""The pushback ledger: a connection that comes back before the retry pushback it was given waits for it (never past
its deadline); others, and peers that cannot be told apart, are never held."""

from __future__ import annotations

import asyncio
import time

import pytest

from detector.errors import Overloaded
from detector.serving import pushback
from detector.serving.pushback import ANSWER_GUARD_S, ANSWER_GUARD_SHARE, PushbackLedger, identity


def run(coro):
    return asyncio.run(coro)


def test_a_connection_is_its_peer_address_and_unix_sockets_name_no_one():
    assert identity("ipv4:127.0.0.1:50432") == "ipv4:127.0.0.1:50432"
    assert identity("ipv6:[::1]:50432") == "ipv6:[::1]:50432"
    assert identity("unix:/tmp/detector.sock") == ""
    assert identity("") == ""


def test_a_client_that_comes_back_early_is_held_until_its_pushback_and_others_are_not():
    ledger = PushbackLedger()
    ledger.told("ipv4:10.0.0.1:1", 0.3)

    async def both():
        t0 = time.monotonic()
        held = await ledger.hold("ipv4:10.0.0.1:1", deadline=None)
        early = time.monotonic() - t0
        other = await ledger.hold("ipv4:10.0.0.2:1", deadline=None)
        return held, early, other

    held, early, other = run(both())
    assert 0.25 <= held <= 0.3 and early >= 0.25
    assert other == 0.0
    assert ledger.due("ipv4:10.0.0.1:1") == 0.0  # its pushback has passed: the next request goes straight through


def test_a_later_shorter_pushback_does_not_shorten_the_one_given_before():
    ledger = PushbackLedger()
    ledger.told("ipv4:10.0.0.1:1", 1.0)
    ledger.told("ipv4:10.0.0.1:1", 0.1)
    assert 0.9 < ledger.due("ipv4:10.0.0.1:1") <= 1.0


def test_a_client_without_an_identity_is_never_held():
    ledger = PushbackLedger()
    ledger.told("", 5.0)
    assert ledger.due("") == 0.0 and len(ledger) == 0
    assert run(ledger.hold("", deadline=None)) == 0.0


def test_a_deadline_before_the_pushback_is_refused_before_the_deadline_with_the_rest_of_the_pushback():
    ledger = PushbackLedger()
    ledger.told("ipv4:10.0.0.1:1", 2.0)
    t0 = time.monotonic()
    with pytest.raises(Overloaded, match="came back before the retry pushback") as err:
        run(ledger.hold("ipv4:10.0.0.1:1", deadline=t0 + 0.3))
    answered = time.monotonic() - t0
    answer_by = 0.3 - max(ANSWER_GUARD_SHARE * 0.3, ANSWER_GUARD_S)
    assert answer_by - 0.02 <= answered < 0.3  # held, but answered with time to spare before the deadline
    assert 2.0 - answered - 0.05 <= err.value.retry_after_s <= 2.0 - answered + 0.01  # what is left of the pushback


def test_passed_pushbacks_are_swept(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(pushback, "PRUNE_EVERY", 4)
    ledger = PushbackLedger(clock=lambda: now[0])
    for port in range(10):
        ledger.told(f"ipv4:10.0.0.1:{port}", 1.0)
    ledger.told("ipv4:10.0.0.2:1", 60.0)
    now[0] += 2.0
    for _ in range(4):
        ledger.due("ipv4:10.0.0.9:1")
    assert len(ledger) == 1 and ledger.due("ipv4:10.0.0.2:1") == pytest.approx(58.0)


def test_past_the_cap_an_early_request_is_not_held_but_sent_on_to_admission():
    ledger = PushbackLedger(max_held=1)
    ledger.told("ipv4:10.0.0.1:1", 0.2)

    async def two():
        return await asyncio.gather(ledger.hold("ipv4:10.0.0.1:1", None), ledger.hold("ipv4:10.0.0.1:1", None))

    held = sorted(run(two()))
    assert held[0] == 0.0 and held[1] > 0.15
    assert ledger.holding == 0


def test_every_held_request_is_counted_once_whether_it_goes_on_or_is_refused_before_its_deadline():
    counted = []
    ledger = PushbackLedger(on_hold=lambda: counted.append(1))
    ledger.told("ipv4:10.0.0.1:1", 0.2)
    assert run(ledger.hold("ipv4:10.0.0.1:2", deadline=None)) == 0.0 and not counted  # another connection: not held
    assert run(ledger.hold("ipv4:10.0.0.1:1", deadline=None)) > 0.15 and len(counted) == 1  # held, then on
    ledger.told("ipv4:10.0.0.1:1", 2.0)
    with pytest.raises(Overloaded):
        run(ledger.hold("ipv4:10.0.0.1:1", deadline=time.monotonic() + 0.1))  # held, then refused
    assert len(counted) == 2


def test_a_connection_holds_as_many_early_requests_as_it_was_refused_and_lets_the_others_through():
    """One channel carries many callers: two refusals hold the next two early calls on it, not a third caller's."""
    ledger = PushbackLedger()
    for _ in range(2):
        ledger.told("ipv4:10.0.0.1:1", 0.2)

    async def three():
        return await asyncio.gather(*(ledger.hold("ipv4:10.0.0.1:1", deadline=None) for _ in range(3)))

    held = sorted(run(three()))
    assert held[0] == 0.0  # the third call was told nothing: straight to admission
    assert all(0.15 <= h <= 0.2 for h in held[1:])
