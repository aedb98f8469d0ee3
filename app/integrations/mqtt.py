"""MQTT publisher: events, retained per-person and per-camera states, availability, Home Assistant discovery.

Runs as one thread of the parent process (never on the frame path). `submit(event)` only appends to a
bounded buffer and returns; the thread owns the paho client (paho is not thread-safe) and does everything
else: connecting and reconnecting on a capped backoff, publishing, idle clears, discovery.

Delivery. Events go out with QoS 1. While the broker is away they wait in the buffer (`MQTT_BUFFER`
messages; when full the oldest is dropped and counted in `dropped`); once handed to paho and not yet
acknowledged (at most `INFLIGHT`), paho itself re-sends them after a reconnect. So a broker that goes away
for a while loses no event, at worst repeats one (QoS 1 is at-least-once). Retained states are
last-value-wins: only the newest value of each topic is kept, and all are published again on every
connect (a broker restarted without persistence has forgotten them).

Availability: `<prefix>/available` is `online` (retained) on connect, `offline` on an orderly stop, and the
broker publishes `offline` itself (last will) when the connection dies with the process (kill -9).

Messages never carry or log the password; the broker is named as `host:port`.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho

from app.config import Settings
from app.integrations import discovery
from app.pipeline.reconnect import BackoffPolicy, RetrySchedule
from app.url_masking import mask_url

log = logging.getLogger(__name__)

# A broker that is away is tried again within 2 s of its return; a refused connection costs nothing.
BROKER_BACKOFF = BackoffPolicy(first_s=0.25, factor=2.0, cap_s=2.0, jitter=0.2)
INFLIGHT = 100  # events handed to paho and not yet acknowledged
CONNECT_TIMEOUT_S = 3.0  # TCP connect, TLS handshake, then again for the broker's CONNACK
KEEPALIVE_S = 15  # the broker declares us dead (last will) after 1.5x this without a packet
LOOP_S = 0.05  # the thread's longest sleep: how fast it sees new events and a stop
QOS = 1


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int = 1883
    user: str | None = None
    password: str | None = None
    tls: bool = False
    prefix: str = "facepipe"
    client_id: str = "facepipe"
    buffer: int = 10000
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    camera_idle_s: float = 60.0

    @classmethod
    def from_settings(cls, s: Settings) -> MqttConfig | None:
        """None when MQTT is off (no MQTT_HOST)."""
        if not s.mqtt_host:
            return None
        return cls(
            host=s.mqtt_host, port=s.mqtt_port, user=s.mqtt_user, password=s.mqtt_password, tls=s.mqtt_tls,
            prefix=s.mqtt_topic_prefix.strip("/"), client_id=s.mqtt_client_id, buffer=s.mqtt_buffer,
            discovery=s.ha_discovery, discovery_prefix=s.ha_discovery_prefix.strip("/"),
            camera_idle_s=s.camera_idle_s,
        )  # fmt: skip

    @property
    def where(self) -> str:
        """The broker as shown in logs: never a password, even one written into the host."""
        host = mask_url(self.host) if "://" in self.host else self.host.rsplit("@", 1)[-1]
        return f"{host}:{self.port}"


def iso_time(unix_time: float) -> str:
    return datetime.fromtimestamp(unix_time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _describe(exc: BaseException, tls: bool) -> str:
    text = " ".join(str(getattr(exc, "strerror", None) or exc or type(exc).__name__).split())
    # A plain MQTT port answers a TLS hello by closing: a reset, an EOF or an SSL error mid-handshake.
    if tls and isinstance(exc, ssl.SSLError | ConnectionResetError | ConnectionAbortedError):
        reason = getattr(exc, "reason", None) or text
        return f"TLS handshake failed: {reason}; is FACEPIPE_MQTT_TLS right for this port?"
    return text


class MqttPublisher:
    """The MQTT side of a run. `start()`, `submit(event)` from any thread, `set_persons(names)`, `stop()`."""

    def __init__(
        self,
        config: MqttConfig,
        cameras: list[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.cameras = list(cameras)
        self.clock = clock
        self.wall_clock = wall_clock
        self.dropped = 0  # events dropped from a full buffer
        self.sent = 0  # events the broker acknowledged
        self.connects = 0
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self._buffer: deque[tuple[str, str]] = deque()
        self._states: dict[str, str] = {}  # retained state topic -> newest payload
        self._dirty: set[str] = set()
        self._persons: list[str] | None = None  # None until the gallery's list is known
        self._discovery_due = False
        self._retained_configs: set[str] = set()  # this node's configs the broker holds
        self._configs_sent: dict[str, str] | None = None  # the wanted configs, as sent on this connection
        self._last_face: dict[str, float | None] = {}
        self._unacked: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: paho.Client | None = None
        self._connecting_since: float | None = None
        self._schedule: RetrySchedule | None = None
        self._warned = False  # one warning per outage
        p = config.prefix
        self.topics = {"available": discovery.availability_topic(p), "events": discovery.events_topic(p)}
        now = wall_clock()
        for camera in self.cameras:
            idle = {"name": None, "camera": camera, "last_seen": None, "since": iso_time(now)}
            self._set_state(discovery.camera_topic(p, camera), idle)

    # -- any thread ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._client = self._new_client()
        self._schedule = RetrySchedule(BROKER_BACKOFF, self.clock)
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()

    def submit(self, event: dict[str, Any]) -> None:
        """Queue an event (never blocks); a known face also updates the person's and the camera's state."""
        payload = json.dumps(event)
        with self._lock:
            if len(self._buffer) >= self.config.buffer:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append((self.topics["events"], payload))
            if event.get("status") == "known" and event.get("name"):
                camera = str(event.get("camera", ""))
                seen = iso_time(float(event.get("timestamp") or self.wall_clock()))
                state = {"name": event["name"], "camera": camera, "last_seen": seen,
                         "similarity": event.get("similarity"), "track": event.get("track")}  # fmt: skip
                if event.get("snapshot"):
                    state["snapshot"] = event["snapshot"]
                self._set_state(discovery.person_topic(self.config.prefix, event["name"]), state)
                self._set_state(discovery.camera_topic(self.config.prefix, camera), state)
                self._last_face[camera] = self.clock()

    def set_persons(self, names: list[str]) -> None:
        """The enrolled persons: discovery gets a sensor for each, and loses those no longer enrolled."""
        with self._lock:
            self._persons = sorted(set(names))
            self._discovery_due = True

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def wait_sent(self, timeout: float) -> bool:
        """Wait (bounded) until every submitted event was acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._buffer and not self._unacked:
                    return True
            if not self.connected.is_set():
                return False
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 2.0) -> None:
        """Publish `offline`, disconnect, end the thread; returns within about `timeout` in every case."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                # Still inside a connect attempt (bounded by CONNECT_TIMEOUT_S): a daemon thread, so it
                # cannot hold the exit; the outage was already reported.
                log.debug("MQTT: the connection to %s did not close in %.1f s; left behind",
                          self.config.where, timeout)  # fmt: skip
            self._thread = None
        with self._lock:
            undelivered = len(self._buffer) + len(self._unacked)
        if undelivered:  # said, not dropped in silence (an EVENTS file keeps them all)
            log.warning("MQTT: %d event(s) not delivered to %s by the end of the run (the broker was away)",
                        undelivered, self.config.where)  # fmt: skip

    # -- the thread ---------------------------------------------------------------------------------------

    def _new_client(self) -> paho.Client:
        c = self.config
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=c.client_id, protocol=paho.MQTTv311)
        client.will_set(self.topics["available"], discovery.OFFLINE, qos=QOS, retain=True)
        if c.user:
            client.username_pw_set(c.user, c.password)
        if c.tls:
            client.tls_set()  # the system's CA certificates
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(INFLIGHT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _run(self) -> None:
        client = self._client
        assert client is not None and self._schedule is not None
        try:
            while not self._stop.is_set():
                self._step(client)
            self._say_goodbye(client)
        except Exception:  # noqa: BLE001 - a bug here must not take the pipeline down; say it once
            log.exception("MQTT publisher stopped")

    def _step(self, client: paho.Client) -> None:
        assert self._schedule is not None
        if not self.connected.is_set() and self._connecting_since is None:
            if self._schedule.due():
                self._try_connect(client)
            else:
                self._stop.wait(min(LOOP_S, self._schedule.wait_s()))
                return
        if self._connecting_since is not None and self.clock() - self._connecting_since > CONNECT_TIMEOUT_S:
            self._failed("no answer to CONNECT")
            client.disconnect()
        rc = client.loop(timeout=LOOP_S)
        if rc != paho.MQTT_ERR_SUCCESS and (self.connected.is_set() or self._connecting_since is not None):
            self._lost(paho.error_string(rc))
        if self.connected.is_set():
            self._send(client)
        self._clear_idle_cameras()

    def _try_connect(self, client: paho.Client) -> None:
        try:
            client.connect(self.config.host, self.config.port, keepalive=KEEPALIVE_S)
        except (OSError, ValueError) as exc:
            self._failed(_describe(exc, self.config.tls))
            return
        self._connecting_since = self.clock()

    def _failed(self, why: str) -> None:
        assert self._schedule is not None
        self._connecting_since = None
        delay = self._schedule.failed()
        if not self._warned:
            self._warned = True
            log.warning("MQTT broker %s unavailable (%s); events are kept (up to %d) and retried",
                        self.config.where, why, self.config.buffer)  # fmt: skip
        log.debug("MQTT connect to %s failed (%s); next try in %.2f s", self.config.where, why, delay)

    def _lost(self, why: str) -> None:
        if self.connected.is_set():
            self.connected.clear()
            self._schedule = RetrySchedule(BROKER_BACKOFF, self.clock)
            self._connecting_since = None
            if not self._stop.is_set():
                self._warned = True
                log.warning("MQTT connection to %s lost (%s); events are kept (up to %d) and retried",
                            self.config.where, why, self.config.buffer)  # fmt: skip
        elif self._connecting_since is not None:
            self._failed(why)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            refused = reason_code.value in (4, 5, 134, 135)
            hint = "; check FACEPIPE_MQTT_USER and FACEPIPE_MQTT_PASSWORD" if refused else ""
            self._failed(f"the broker refused the connection: {reason_code}{hint}")
            client.disconnect()
            return
        self._connecting_since = None
        self.connects += 1
        if self._warned:
            log.warning("MQTT broker %s connected again", self.config.where)
        else:
            log.info("MQTT broker %s connected", self.config.where)
        self._warned = False
        self.connected.set()
        client.publish(self.topics["available"], discovery.ONLINE, qos=QOS, retain=True)
        if self.config.discovery:
            c = self.config
            client.subscribe(discovery.node_config_filter(c.discovery_prefix, c.client_id))
        with self._lock:
            self._dirty = set(self._states)  # the broker may have forgotten them
            self._configs_sent = None
            self._discovery_due = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._lost(str(reason_code))

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            if mid in self._unacked:
                self._unacked.discard(mid)
                self.sent += 1

    def _on_message(self, client, userdata, message) -> None:
        # Our node's retained discovery configs, as the broker holds them (ours come back here too).
        with self._lock:
            if message.payload:
                self._retained_configs.add(message.topic)
            else:
                self._retained_configs.discard(message.topic)
            self._discovery_due = True

    def _send(self, client: paho.Client) -> None:
        with self._lock:
            states = [(topic, self._states[topic]) for topic in self._dirty]
            self._dirty.clear()
            discovery_messages = self._discovery_changes() if self._discovery_due else {}
        for topic, payload in discovery_messages.items():
            client.publish(topic, payload, qos=QOS, retain=True)
        for topic, payload in states:
            client.publish(topic, payload, qos=QOS, retain=True)
        while True:
            with self._lock:
                if not self._buffer or len(self._unacked) >= INFLIGHT:
                    return
                topic, payload = self._buffer.popleft()
                info = client.publish(topic, payload, qos=QOS)
                if info.rc != paho.MQTT_ERR_SUCCESS:
                    # Not taken (the connection just went): back to the front, in order.
                    self._buffer.appendleft((topic, payload))
                    return
                self._unacked.add(info.mid)

    def _discovery_changes(self) -> dict[str, str]:
        """Configs to publish now (under the lock): every wanted one, and an empty one per stale one."""
        self._discovery_due = False
        if not self.config.discovery or self._persons is None:
            return {}
        c = self.config
        wanted = discovery.discovery_messages(c.prefix, c.discovery_prefix, c.client_id, self._persons,
                                              self.cameras)  # fmt: skip
        out = {topic: "" for topic in self._retained_configs - wanted.keys()}
        if self._configs_sent != wanted:
            out.update(wanted)
            self._configs_sent = wanted
        return out

    def _clear_idle_cameras(self) -> None:
        now = self.clock()
        with self._lock:
            for camera, last in self._last_face.items():
                if last is not None and now - last >= self.config.camera_idle_s:
                    topic = discovery.camera_topic(self.config.prefix, camera)
                    previous = json.loads(self._states[topic])
                    self._set_state(topic, {"name": None, "camera": camera,
                                            "last_seen": previous.get("last_seen"),
                                            "since": iso_time(self.wall_clock())})  # fmt: skip
                    self._last_face[camera] = None

    def _set_state(self, topic: str, state: dict[str, Any]) -> None:
        self._states[topic] = json.dumps(state)
        self._dirty.add(topic)

    def _say_goodbye(self, client: paho.Client) -> None:
        """An orderly stop: buffered events get a short chance to go, then `offline`, then disconnect."""
        if not self.connected.is_set():
            return
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and self.connected.is_set():
            self._send(client)
            with self._lock:
                if not self._buffer and not self._unacked:
                    break
            client.loop(timeout=LOOP_S)
        info = client.publish(self.topics["available"], discovery.OFFLINE, qos=QOS, retain=True)
        while time.monotonic() < deadline + 0.5 and not info.is_published() and self.connected.is_set():
            client.loop(timeout=LOOP_S)
        self.connected.clear()
        client.disconnect()
        client.loop(timeout=LOOP_S)


def publish_person_discovery(
    config: MqttConfig, added: list[str], removed: list[str], timeout: float = 5.0
) -> bool:
    """From a short-lived connection (the enroll CLI): Home Assistant sensors for `added`, and removal of
    those of `removed`. Its own client id and no last will, so a running pipeline's connection and
    availability are untouched. False, with one warning, when the broker does not take them in `timeout`."""
    if not config.discovery:
        return True
    c = config
    client = paho.Client(
        paho.CallbackAPIVersion.VERSION2, client_id=f"{c.client_id}-enroll", protocol=paho.MQTTv311
    )
    if c.user:
        client.username_pw_set(c.user, c.password)
    if c.tls:
        client.tls_set()
    client.connect_timeout = min(CONNECT_TIMEOUT_S, timeout)
    wanted = discovery.discovery_messages(c.prefix, c.discovery_prefix, c.client_id, added, [])
    gone = discovery.discovery_messages(c.prefix, c.discovery_prefix, c.client_id, removed, [])
    messages = {**{topic: "" for topic in gone}, **wanted}
    try:
        client.connect(c.host, c.port, keepalive=KEEPALIVE_S)
    except (OSError, ValueError) as exc:
        log.warning("MQTT broker %s unavailable (%s); Home Assistant discovery not updated until the "
                    "pipeline next starts", c.where, _describe(exc, c.tls))  # fmt: skip
        return False
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        infos = [client.publish(topic, payload, qos=QOS, retain=True) for topic, payload in messages.items()]
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        done = all(info.is_published() for info in infos)
    except (RuntimeError, ValueError):  # the connection went before the configs did
        done = False
    finally:
        client.disconnect()
        client.loop_stop()
    if not done:
        log.warning("MQTT broker %s did not take the discovery update in %.0f s; it is sent when the "
                    "pipeline next starts", c.where, timeout)  # fmt: skip
    return done
