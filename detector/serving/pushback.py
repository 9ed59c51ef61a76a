"""The retry pushback each connection was given, held to.

A refusal tells the client when to come back (`grpc-retry-pushback-ms`). A client that resends at once instead
gains nothing from it but costs everyone: every refusal is work for the server's event loop, and a client on the
same machine takes the cores the queue it was refused by needs (under a 20x overload on 2 cores, resending clients
slowed the admitted queue 2.7x, and a quarter of the admitted requests missed their deadline). So a request that
arrives on a connection before the pushback that connection was given has passed is held for it (never past its own
deadline) and only then goes to admission, like any other. A client that honours the pushback is never held.

Only as many requests are held as the connection was refused: one channel often carries many callers (one channel per
process is gRPC's advice), and a refusal of one of them is no reason to hold the others' new calls, which were told
nothing. Holding every call on a refused connection cost polite callers that shared it a median 0.85 s of their 2 s
deadline under overload at 3x64x64; they then reached admission too late to be admitted safely.

Connections are told apart by their peer address (address and port: one per channel). Peers that cannot be told
apart (Unix sockets) are never held: one client's pushback would hold the others.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from detector.errors import Overloaded

# A request held past its deadline is refused with this share of its time left (at least ANSWER_GUARD_S), so the
# refusal reaches the client in time through a busy event loop.
ANSWER_GUARD_SHARE = 0.2
ANSWER_GUARD_S = 0.05
PRUNE_EVERY = 256  # calls between sweeps of passed entries
# At most this many requests held at once (each keeps its samples in memory); past it, early requests go straight to
# admission, which refuses them at once as before. Closed-loop clients hold at most one request each.
MAX_HELD = 1024


def identity(peer: str) -> str:
    """The connection a gRPC peer string names (``ipv4:127.0.0.1:50432``, ``ipv6:[::1]:50432``), or "" where it
    cannot tell clients apart (``unix:...``, empty)."""
    return peer if peer.startswith(("ipv4:", "ipv6:")) else ""


class PushbackLedger:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_held: int = MAX_HELD,
                 on_hold: Callable[[], None] = lambda: None):
        self._clock = clock
        self.max_held = max_held
        self._on_hold = on_hold  # called once for every request held, whether it goes on to admission or is refused
        self._holding = 0
        self._not_before: dict[str, float] = {}
        self._owed: dict[str, int] = {}  # refusals not yet matched by a held request, per connection
        self._calls = 0

    def told(self, client: str, retry_after_s: float) -> None:
        """``client`` was refused and asked to come back in ``retry_after_s``."""
        if client:
            until = self._clock() + retry_after_s
            self._not_before[client] = max(self._not_before.get(client, 0.0), until)
            self._owed[client] = self._owed.get(client, 0) + 1

    def due(self, client: str) -> float:
        """Seconds until ``client`` may send again (0: now)."""
        self._prune()
        return max(self._not_before.get(client, 0.0) - self._clock(), 0.0) if client else 0.0

    async def hold(self, client: str, deadline: float | None) -> float:
        """Wait until ``client``'s pushback has passed; the seconds held. Where the deadline (a time.monotonic()
        value) comes first, refuse (Overloaded) before it, with the rest of the pushback as the new one. (Held
        requests come back together when it passes; spreading them over its second half, as a refusal's pushback
        is drawn, measured worse: more of them came back to a full queue, to be refused and held again.)"""
        wait = self.due(client)
        if not wait or self._holding >= self.max_held or not self._owed.get(client):
            return 0.0
        self._owed[client] -= 1
        self._holding += 1
        self._on_hold()
        try:
            return await self._wait(client, wait, deadline)
        finally:
            self._holding -= 1

    async def _wait(self, client: str, wait: float, deadline: float | None) -> float:
        now = self._clock()
        answer_by = None if deadline is None else deadline - max(ANSWER_GUARD_SHARE * (deadline - now), ANSWER_GUARD_S)
        if answer_by is not None and now + wait > answer_by:
            await asyncio.sleep(max(answer_by - now, 0.0))
            rest = self.due(client)
            raise Overloaded(f"this connection came back before the retry pushback it was given; its deadline "
                             f"passes first; retry in about {rest * 1000:.0f} ms", max(rest, 0.001))
        await asyncio.sleep(wait)
        return wait

    def _prune(self) -> None:
        self._calls += 1
        if self._calls % PRUNE_EVERY == 0:
            now = self._clock()
            self._not_before = {k: t for k, t in self._not_before.items() if t > now}
            self._owed = {k: n for k, n in self._owed.items() if k in self._not_before}

    def __len__(self) -> int:
        return len(self._not_before)

    @property
    def holding(self) -> int:
        """Requests held now."""
        return self._holding
