"""The MQTT publisher against a real mosquitto on a loopback port: events, retained states, availability,
last will, Home Assistant discovery, buffering while the broker is away, and bad brokers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from app.integrations import discovery
from app.integrations.mqtt import MqttConfig, MqttPublisher, publish_person_discovery
from tests.support.mosquitto import MosquittoBroker, free_port
from tests.support.mqtt_subscriber import Subscriber
from tests.support.waiting import wait_until

WAIT_S = 60.0  # failure guard only


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0  # how often the publisher looked: its loops, without timing them

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def event(track: int, name: str | None, *, frame: int = 0, camera: str = "default") -> dict:
    return {
        "time": frame / 25, "frame": frame, "track": track, "name": name,
        "status": "known" if name else "unknown", "similarity": 0.6 if name else 0.3,
        "box": [1.0, 2.0, 3.0, 4.0], "camera": camera, "timestamp": 1764590000.0 + frame,
    }  # fmt: skip


@pytest.fixture
def broker():
    with MosquittoBroker() as b:
        yield b


def publisher(port: int, **changes) -> MqttPublisher:
    clock = changes.pop("clock", None)
    config = MqttConfig(host="127.0.0.1", port=port, **changes)
    return MqttPublisher(config, ["default"], **({"clock": clock} if clock else {}))


def events_of(sub: Subscriber) -> list[dict]:
    return [json.loads(m.payload) for m in sub.on("facepipe/events")]


def test_events_states_availability_and_discovery_reach_a_subscriber(broker):
    pub = publisher(broker.port)
    pub.set_persons(["Lin-Manuel Miranda", "Alex Lacamoire"])
    pub.start()
    try:
        with Subscriber(broker.port, "facepipe/#", "homeassistant/#") as sub:
            pub.submit(event(1, "Lin-Manuel Miranda", frame=10))
            pub.submit(event(2, None, frame=11))
            assert sub.wait_for(lambda m: len(events_of(sub)) == 2, WAIT_S)
            assert pub.wait_sent(WAIT_S)
            assert [e["track"] for e in events_of(sub)] == [1, 2]
            assert events_of(sub)[0] == event(1, "Lin-Manuel Miranda", frame=10)
            assert sub.wait_for(lambda m: sub.on("facepipe/person/lin_manuel_miranda"), WAIT_S)
    finally:
        pub.stop()
    # A new subscriber gets the retained state, availability and discovery: what Home Assistant reads.
    with Subscriber(broker.port, "facepipe/#", "homeassistant/#", client_id="late") as late:
        person_config = "homeassistant/sensor/facepipe/person_lin_manuel_miranda/config"
        camera_topic = "facepipe/camera/default/face"
        # Retained messages arrive one by one: wait for every topic read below.
        wanted = {person_config, camera_topic, "facepipe/available", "facepipe/person/lin_manuel_miranda",
                  "homeassistant/sensor/facepipe/person_alex_lacamoire/config",
                  "homeassistant/sensor/facepipe/camera_default_face/config"}  # fmt: skip
        assert late.wait_for(lambda m: {x.topic for x in m} >= wanted, WAIT_S)
        assert late.on("facepipe/available")[-1].payload == "offline"  # orderly stop
        person = json.loads(late.on("facepipe/person/lin_manuel_miranda")[-1].payload)
        assert person["camera"] == "default" and person["last_seen"].startswith("2025-12-01T")
        assert person["similarity"] == 0.6 and person["name"] == "Lin-Manuel Miranda"
        camera = json.loads(late.on("facepipe/camera/default/face")[-1].payload)
        assert camera["name"] == "Lin-Manuel Miranda"
        config = json.loads(late.on(person_config)[-1].payload)
        assert late.on(person_config)[-1].retain
        assert config["state_topic"] == "facepipe/person/lin_manuel_miranda"
        assert config["availability_topic"] == "facepipe/available"
        assert config["value_template"] == "{{ value_json.camera }}"
        assert config["device"]["identifiers"] == ["facepipe_facepipe"]
        assert late.on("homeassistant/sensor/facepipe/person_alex_lacamoire/config")
        assert late.on("homeassistant/sensor/facepipe/camera_default_face/config")


def test_online_while_running_and_offline_by_last_will_when_the_process_is_killed(broker):
    script = textwrap.dedent(f"""
        import time
        from app.integrations.mqtt import MqttConfig, MqttPublisher
        p = MqttPublisher(MqttConfig(host="127.0.0.1", port={broker.port}, client_id="doomed"), ["default"])
        p.start()
        p.connected.wait(10)
        print("connected", flush=True)
        time.sleep(60)
    """)
    with Subscriber(broker.port, "facepipe/available") as sub:
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "connected"
            assert sub.wait_for(lambda m: [x.payload for x in m] == ["online"], WAIT_S)
            child.kill()  # no goodbye: only the broker's last will can say it
            child.wait(10)
            assert sub.wait_for(lambda m: [x.payload for x in m][-1:] == ["offline"], WAIT_S)
        finally:
            child.kill()


def test_a_broker_down_at_start_is_retried_and_gets_every_event(caplog):
    port = free_port()
    pub = publisher(port)
    caplog.set_level(logging.WARNING, "app.integrations.mqtt")
    pub.start()
    try:
        for i in range(5):
            pub.submit(event(i, "Ada", frame=i))
        with MosquittoBroker(port) as broker, Subscriber(broker.port, "facepipe/events") as sub:
            assert sub.wait_for(lambda m: len(m) >= 5, WAIT_S)
            assert [json.loads(m.payload)["track"] for m in sub.snapshot()] == [0, 1, 2, 3, 4]
    finally:
        pub.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("MQTT broker 127.0.0.1:" in w and "unavailable" in w for w in warnings), warnings


def test_events_made_while_the_broker_restarts_all_arrive():
    # The broker keeps the test subscriber's session over the restart: whichever client reconnects first,
    # nothing published meanwhile is missed by the subscriber (that would be the test's loss, not ours).
    with MosquittoBroker(persistent=True) as broker:
        pub = publisher(broker.port)
        pub.start()
        try:
            with Subscriber(broker.port, "facepipe/events", persistent=True) as sub:
                pub.submit(event(0, "Ada"))
                assert sub.wait_for(lambda m: len(m) == 1, WAIT_S)
                broker.stop(graceful=True)
                for i in range(1, 50):
                    pub.submit(event(i, "Ada", frame=i))
                broker.start()
                tracks = lambda m: {json.loads(x.payload)["track"] for x in m}  # noqa: E731
                assert sub.wait_for(lambda m: tracks(m) == set(range(50)), WAIT_S)
            assert pub.dropped == 0
        finally:
            pub.stop()


def test_a_full_buffer_drops_the_oldest_and_counts_them():
    port = free_port()  # nothing listens: every event stays in the buffer
    pub = publisher(port, buffer=10)
    for i in range(25):
        pub.submit(event(i, None, frame=i))
    assert pub.dropped == 15 and pub.buffered == 10
    with MosquittoBroker(port), Subscriber(port, "facepipe/events") as sub:
        pub.start()
        try:
            assert sub.wait_for(lambda m: len(m) == 10, WAIT_S)
            assert [json.loads(m.payload)["track"] for m in sub.snapshot()] == list(range(15, 25))
        finally:
            pub.stop()


def test_a_camera_face_is_cleared_after_the_idle_time(broker):
    clock = FakeClock()
    pub = publisher(broker.port, camera_idle_s=60.0, clock=clock)
    pub.start()
    topic = "facepipe/camera/default/face"
    try:
        with Subscriber(broker.port, topic) as sub:
            pub.submit(event(1, "Ada"))
            assert sub.wait_for(lambda m: m and json.loads(m[-1].payload)["name"] == "Ada", WAIT_S)
            clock.now += 59.0
            seen = clock.reads
            # A few publisher loops look at the clock: still within the idle time.
            wait_until(lambda: clock.reads >= seen + 3, "publisher loops reading the clock", timeout=WAIT_S)
            assert json.loads(sub.on(topic)[-1].payload)["name"] == "Ada"
            clock.now += 1.0
            assert sub.wait_for(lambda m: json.loads(m[-1].payload)["name"] is None, WAIT_S)
            assert json.loads(sub.on(topic)[-1].payload)["last_seen"] is not None
    finally:
        pub.stop()


def test_discovery_removes_a_person_no_longer_enrolled(broker):
    first = publisher(broker.port)
    first.set_persons(["Ada", "Bob"])
    first.start()
    bob = "homeassistant/sensor/facepipe/person_bob/config"
    with Subscriber(broker.port, "homeassistant/#") as sub:
        assert sub.wait_for(lambda m: sub.on(bob), WAIT_S)
        first.stop()
        second = publisher(broker.port)
        second.set_persons(["Ada"])
        second.start()
        try:
            assert sub.wait_for(lambda m: sub.on(bob)[-1].payload == "", WAIT_S)  # empty retained = removed
        finally:
            second.stop()
    with Subscriber(broker.port, "homeassistant/#", client_id="later") as later:
        ada = "homeassistant/sensor/facepipe/person_ada/config"
        assert later.wait_for(lambda m: later.on(ada), WAIT_S)
        assert not later.on(bob)


def test_tls_to_a_plain_port_is_one_warning_and_stop_does_not_hang(broker, caplog):
    caplog.set_level(logging.WARNING, "app.integrations.mqtt")
    pub = publisher(broker.port, tls=True, password="s3cret-pw", user="u")
    pub.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not caplog.records:
            time.sleep(0.05)
    finally:
        stopper = threading.Thread(target=pub.stop, kwargs={"timeout": 2.0})
        stopper.start()
        stopper.join(WAIT_S)  # a stop that hangs leaves this thread running
        assert not stopper.is_alive()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "TLS" in lines[0] and "MQTT_TLS" in lines[0], lines
    assert "\n" not in lines[0] and "s3cret-pw" not in lines[0]
    assert not pub.connected.is_set()


def test_an_unreachable_host_is_one_warning_and_stop_returns(caplog):
    caplog.set_level(logging.WARNING, "app.integrations.mqtt")
    config = MqttConfig(host="192.0.2.1", port=1883, password="hunter2")  # TEST-NET-1: never routed
    pub = MqttPublisher(config, ["default"])
    pub.submit(event(1, "Ada"))
    pub.start()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not caplog.records:
        time.sleep(0.05)
    pub.stop(timeout=1.0)  # the thread may still sit in a connect (bounded by its own timeout): left behind
    lines = [r.getMessage() for r in caplog.records]
    assert lines and lines[0].startswith("MQTT broker 192.0.2.1:1883 unavailable ("), lines
    assert all("hunter2" not in line and "\n" not in line for line in lines)
    assert pub.buffered == 1 and not pub.connected.is_set()
    assert (
        lines[-1]
        == "MQTT: 1 event(s) not delivered to 192.0.2.1:1883 by the end of the run (the broker was away)"
    )


def test_the_broker_is_named_without_its_password():
    config = MqttConfig(host="mqtt://user:pw@broker.local", port=1883, password="pw")
    assert config.where == "mqtt://***@broker.local:1883"
    assert MqttConfig(host="user:pw@broker.local").where == "broker.local:1883"


def test_discovery_payloads_use_the_documented_topics():
    messages = discovery.discovery_messages(
        "facepipe", "homeassistant", "facepipe", ["Zoë Ünal"], ["Front Door"]
    )
    assert set(messages) == {
        "homeassistant/sensor/facepipe/person_zoe_unal/config",
        "homeassistant/sensor/facepipe/camera_front_door_face/config",
    }
    camera = json.loads(messages["homeassistant/sensor/facepipe/camera_front_door_face/config"])
    assert camera["state_topic"] == "facepipe/camera/front_door/face"
    assert camera["payload_not_available"] == "offline"
    assert discovery.slug("李小龍") == "674e_5c0f_9f8d"


def test_enrolling_and_removing_update_discovery_without_touching_availability(broker):
    config = MqttConfig(host="127.0.0.1", port=broker.port)
    ada = "homeassistant/sensor/facepipe/person_ada/config"
    with Subscriber(broker.port, "homeassistant/#", "facepipe/#") as sub:
        assert publish_person_discovery(config, added=["Ada"], removed=[])
        assert sub.wait_for(lambda m: sub.on(ada), WAIT_S)
        assert json.loads(sub.on(ada)[-1].payload)["state_topic"] == "facepipe/person/ada"
        assert publish_person_discovery(config, added=[], removed=["Ada"])
        assert sub.wait_for(lambda m: sub.on(ada)[-1].payload == "", WAIT_S)
        assert not sub.on("facepipe/available")  # no will, no offline: a running pipeline stays online


def test_a_discovery_update_with_no_broker_is_one_warning(caplog):
    caplog.set_level(logging.WARNING, "app.integrations.mqtt")
    assert not publish_person_discovery(
        MqttConfig(host="127.0.0.1", port=free_port()), ["Ada"], [], timeout=2
    )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "Home Assistant discovery not updated" in lines[0], lines


def test_a_wrong_password_is_one_warning_naming_the_settings_and_not_the_password(caplog):
    caplog.set_level(logging.WARNING, "app.integrations.mqtt")
    with MosquittoBroker(users={"facepipe": "right-pw"}) as broker:
        wrong = publisher(broker.port, user="facepipe", password="wrong-pw")
        wrong.start()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not caplog.records:
            time.sleep(0.05)
        wrong.stop()
        right = publisher(broker.port, user="facepipe", password="right-pw")
        right.start()
        try:
            assert right.connected.wait(WAIT_S)
        finally:
            right.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "refused the connection" in lines[0], lines
    assert "check FACEPIPE_MQTT_USER and FACEPIPE_MQTT_PASSWORD" in lines[0] and "wrong-pw" not in lines[0]
