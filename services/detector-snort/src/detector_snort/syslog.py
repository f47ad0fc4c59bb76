"""Syslog listeners (UDP and TCP, RFC 5424 and RFC 3164) for sensors that send `alert_syslog` (or
Suricata EVE over syslog). TCP takes both RFC 6587 framings: octet counting and newline-terminated.

Syslog cannot be re-read, so a crash loses what was in flight (as with any syslog receiver); what
was received is folded and saved like every other source. The sensor name comes from configuration
(per sending address, else the listener's), never from the message. The drain loop reports progress
(`on_progress`, also while idle) so that /healthz fails if it ever stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Mapping
from datetime import tzinfo
from typing import Any, Final

from .alerts import Alert
from .engine import SourceEngine
from .parsers import MAX_SYSLOG_MESSAGE, ParseError, parse_syslog
from .pipeline import LINES

log = logging.getLogger(__name__)

QUEUE_SIZE: Final = 10_000
BATCH: Final = 1_000
BEAT_EVERY: Final = 1.0  # seconds between progress reports of an idle drain loop


class SyslogReceiver:
    def __init__(
        self,
        engine: SourceEngine,
        host: str,
        *,
        udp_port: int = 0,
        tcp_port: int = 0,
        tz: tzinfo,
        max_message: int = MAX_SYSLOG_MESSAGE,
        peers: Mapping[ipaddress.IPv4Address | ipaddress.IPv6Address, str] | None = None,
        on_progress: Callable[[], object] = lambda: None,
    ) -> None:
        self.engine = engine
        self.peers = {str(ip): sensor for ip, sensor in (peers or {}).items()}
        self.on_progress = on_progress
        self.host = host
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.tz = tz
        self.max_message = max_message
        self.queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue(QUEUE_SIZE)  # (message, sensor)
        self._transport: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.udp_port:
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(self), local_addr=(self.host, self.udp_port)
            )
        if self.tcp_port:
            self._server = await asyncio.start_server(self._client, self.host, self.tcp_port)
        self._track(asyncio.create_task(self._drain(), name="syslog drain"))

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _track(self, task: asyncio.Task[Any] | None) -> None:
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def sensor_for(self, peer: object) -> str:
        """The configured name of a sending address, else the listener's."""
        if isinstance(peer, tuple) and peer:
            address = str(peer[0]).partition("%")[0]
            with contextlib.suppress(ValueError):
                mapped = ipaddress.ip_address(address)
                if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
                    mapped = mapped.ipv4_mapped
                return self.peers.get(str(mapped), self.engine.source.sensor)
        return self.engine.source.sensor

    def offer(self, message: bytes, peer: object = None) -> None:
        """From the UDP socket: never block the loop; a full queue drops (and counts) the datagram."""
        try:
            self.queue.put_nowait((message, self.sensor_for(peer)))
        except asyncio.QueueFull:
            LINES.labels(self.engine.source.name, "dropped:queue_full").inc()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(asyncio.current_task())  # stopped with the receiver
        try:
            await self._frames(reader, self.sensor_for(writer.get_extra_info("peername")))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _frames(self, reader: asyncio.StreamReader, sensor: str) -> None:
        buf = bytearray()
        skipping = False  # inside an over-long newline-terminated message
        while chunk := await reader.read(1 << 16):
            buf += chunk
            while buf:
                if skipping:
                    newline = buf.find(b"\n")
                    if newline < 0:
                        buf.clear()
                        break
                    del buf[: newline + 1]
                    skipping = False
                    continue
                if 49 <= buf[0] <= 57:  # octet counting: "LEN SP MSG" (LEN has no leading zero)
                    space = buf.find(b" ", 0, 8)
                    if space < 0:
                        if len(buf) >= 8:
                            self._bad("bad_framing")
                            return  # the stream cannot be resynchronised
                        break
                    length = int(buf[:space])
                    if length > self.max_message:
                        self._bad("too_long")
                        return
                    if len(buf) < space + 1 + length:
                        break
                    await self.queue.put((bytes(buf[space + 1 : space + 1 + length]), sensor))
                    del buf[: space + 1 + length]
                    continue
                newline = buf.find(b"\n")
                if newline < 0:
                    if len(buf) > self.max_message:
                        self._bad("too_long")
                        buf.clear()
                        skipping = True
                    break
                message = bytes(buf[:newline])
                del buf[: newline + 1]
                if message.strip():
                    await self.queue.put((message, sensor))

    def _bad(self, reason: str) -> None:
        LINES.labels(self.engine.source.name, f"bad:{reason}").inc()
        self.engine.pipeline.bad_lines.warning(reason, "syslog over TCP: %s", reason)

    async def _drain(self) -> None:
        source = self.engine.source
        pipeline = self.engine.pipeline
        while True:
            self.on_progress()
            try:  # asyncio.timeout: wait_for (3.11) can swallow the cancellation that stops it
                async with asyncio.timeout(BEAT_EVERY):
                    batch = [await self.queue.get()]
            except TimeoutError:
                continue
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            counts: dict[str, int] = {}
            alerts: list[tuple[Alert, str | None]] = []
            for message, sensor in batch:
                try:
                    alert = parse_syslog(message, tz=self.tz, sensor=sensor, max_len=self.max_message)
                except ParseError as exc:
                    pipeline.bad(source, exc, counts)
                    continue
                if alert is None:
                    counts["not_alert"] = counts.get("not_alert", 0) + 1
                    continue
                alerts.append((alert, None))
            try:
                await self.engine.feed_alerts(alerts, counts)
            except OSError as exc:
                # The state could not be saved (disk full?): the observations stay pending in memory
                # and are saved with the next batch; stopping would lose every later alert.
                log.error("syslog: state not saved: %s", exc)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, receiver: SyslogReceiver) -> None:
        self.receiver = receiver

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.receiver.offer(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.warning("syslog UDP socket: %s", exc)
