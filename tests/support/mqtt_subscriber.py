"""A paho subscriber for tests: records every message (topic, payload, retained flag) as it arrives.

    with Subscriber(port, "facepipe/#", "homeassistant/#") as sub:
        sub.wait_for(lambda msgs: any(m.topic == "facepipe/available" for m in msgs), timeout=10)

It reconnects by itself (and subscribes again) when the broker restarts. Waits are bounded failure guards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import paho.mqtt.client as paho


@dataclass(frozen=True)
class Received:
    topic: str
    payload: str
    retain: bool


class Subscriber:
    def __init__(
        self, port: int, *filters: str, client_id: str = "test-subscriber", persistent: bool = False
    ) -> None:
        self.port = port
        self.filters = filters or ("#",)
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        # persistent: the broker keeps this client's subscriptions and queues its QoS 1 messages while away.
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe([(f, 1) for f in self.filters])

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, message.payload.decode(), bool(message.retain)))

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def on(self, topic: str) -> list[Received]:
        return [m for m in self.snapshot() if m.topic == topic]

    def wait_for(self, condition: Callable[[list[Received]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.snapshot()):
                return True
            time.sleep(0.02)
        return condition(self.snapshot())

    def __enter__(self) -> Self:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the test subscriber could not subscribe")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.client.disconnect()
        self.client.loop_stop()
