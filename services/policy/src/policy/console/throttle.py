"""How often the console's sign-in may fail: failed sign-ins are counted per client (an IPv4 address,
an IPv6 client's /64, which one subscriber line gets whole) and from everyone together, in a sliding
window. Past either limit, sign-in is refused without looking at the token until enough failures have
left the window, so guessing tokens is slow even from many addresses. Pure (the clock is given).

Counts live in this process: each policy replica counts its own sign-ins."""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict, deque
from dataclasses import dataclass

# Clients whose failures are remembered at most; past it the longest-quiet one is forgotten (an
# attacker spreading over many addresses is still held back by the global limit).
MAX_CLIENTS = 10_000


@dataclass(frozen=True)
class Limited:
    """Sign-in is refused: for this client only (`everyone` False) or for all, for `retry_after_s`."""

    everyone: bool
    retry_after_s: int


def client_key(address: str | None) -> str:
    """Whom a failure counts against: the address, an IPv6 address's /64, or "unknown"."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class SignInThrottle:
    def __init__(self, per_client: int, everyone: int, window_s: float) -> None:
        self.per_client = per_client
        self.everyone = everyone
        self.window_s = window_s
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def check(self, client: str, now: float) -> Limited | None:
        """Whether `client` may try to sign in now (None), or for how long it may not."""
        self._forget(self._all, now)
        if len(self._all) >= self.everyone:
            return Limited(True, self._wait(self._all, len(self._all) - self.everyone, now))
        failures = self._clients.get(client)
        if failures is not None:
            self._forget(failures, now)
            if len(failures) >= self.per_client:
                return Limited(False, self._wait(failures, len(failures) - self.per_client, now))
        return None

    def failed(self, client: str, now: float) -> None:
        failures = self._clients.pop(client, None) or deque()
        failures.append(now)
        self._forget(failures, now)
        self._clients[client] = failures  # the most recent at the end
        while len(self._clients) > MAX_CLIENTS:
            self._clients.popitem(last=False)
        self._all.append(now)
        self._forget(self._all, now)

    def succeeded(self, client: str) -> None:
        """A right token: the client's own failures are forgiven (the global count stays)."""
        self._clients.pop(client, None)

    def _forget(self, failures: deque[float], now: float) -> None:
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()

    def _wait(self, failures: deque[float], over: int, now: float) -> int:
        """Seconds until the failure that keeps the count at the limit leaves the window."""
        return max(1, math.ceil(failures[over] + self.window_s - now))
