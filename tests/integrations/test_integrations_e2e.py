"""End to end on the Hamilton clip with Lin-Manuel Miranda and Alex Lacamoire enrolled, against a real
mosquitto: events, retained states and discovery as a subscriber receives them, the last will on kill -9,
a broker away for 3 s mid-run, /metrics against the JSON summary, snapshots, and bad settings."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.config import load_settings
from app.enroll import main as enroll_main
from app.integrations.runtime import Integrations
from app.recognition.analyzer import FaceAnalyzer
from app.stages.assembly import run_pipeline
from tests.pipeline.process_checks import REPO, RunningPipeline
from tests.support.mosquitto import MosquittoBroker, free_port
from tests.support.mqtt_subscriber import Subscriber
from tests.support.shared_data import SHARED_FACES

pytestmark = pytest.mark.slow

HAMILTON = SHARED_FACES / "short_hamilton_clip.mp4"
LIN, ALEX = "Lin-Manuel Miranda", "Alex Lacamoire"
FILE_KEYS = {"camera", "time", "frame", "track", "name", "status", "similarity", "box"}  # the --events file
ADDED_KEYS = {"timestamp"}  # MQTT events carry this too (and "snapshot" with snapshots on)
CONFIGS = {
    f"homeassistant/sensor/facepipe/{object_id}/config"
    for object_id in ("person_lin_manuel_miranda", "person_alex_lacamoire", "camera_default_face")
}
GUARD_S = 180.0  # failure guards only: nothing here measures speed


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gallery") / "faces"
    for name, photo in ((LIN, "lin-manuel-miranda.png"), (ALEX, "alex-lacamoire.png")):
        assert enroll_main(["--gallery", str(folder), "add", name, str(SHARED_FACES / photo)]) == 0
    return folder


def cli(gallery: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["-m", "app.main", "--env-file", str(tmp_path / "none.env"), "--source", str(HAMILTON),
            "--no-gui", "--gallery", str(gallery), *extra]  # fmt: skip


def mqtt_env(port: int, **more: object) -> dict[str, str]:
    return {
        "FACEPIPE_MQTT_HOST": "127.0.0.1",
        "FACEPIPE_MQTT_PORT": str(port),
        **{k: str(v) for k, v in more.items()},
    }


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mqtt_events(sub: Subscriber) -> list[dict]:
    """Events as received, repeats (QoS 1 is at-least-once) removed, in order."""
    seen, out = set(), []
    for message in sub.on("facepipe/events"):
        event = json.loads(message.payload)
        key = (event["frame"], event["track"], event["status"], event["name"])
        if key not in seen:
            seen.add(key)
            out.append(event)
    return out


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_run_publishes_every_event_states_and_discovery_and_metrics_agree_with_the_summary(
    gallery, tmp_path
):
    events_file, snaps = tmp_path / "events.jsonl", tmp_path / "snaps"
    metrics_port = free_port()
    with MosquittoBroker() as broker, Subscriber(broker.port, "facepipe/#", "homeassistant/#") as sub:
        overrides = {"video_source": str(HAMILTON), "gui": False, "max_speed": True,
                     "qdrant_path": str(gallery), "events": str(events_file), "mqtt_host": "127.0.0.1",
                     "mqtt_port": broker.port,
                     "metrics_port": metrics_port, "snapshots_dir": str(snaps)}  # fmt: skip
        settings = load_settings(overrides, env_file=None)
        integrations = Integrations(settings)
        integrations.start()
        scrapes: list[dict] = []
        done = threading.Event()

        def scraper() -> None:
            while not done.wait(0.1):
                scrapes.append(scrape(metrics_port))

        thread = threading.Thread(target=scraper, daemon=True)
        try:
            thread.start()
            result = run_pipeline(settings, integrations=integrations)
            done.set()
            thread.join(GUARD_S)
            final = scrape(metrics_port)  # the server outlives the run until integrations.stop()
        finally:
            done.set()
            integrations.stop()
        assert sub.wait_for(lambda m: sub.on("facepipe/available")[-1:] and
                            sub.on("facepipe/available")[-1].payload == "offline", GUARD_S)  # fmt: skip
        received = mqtt_events(sub)
        states = {t: json.loads(sub.on(t)[-1].payload) for t in ("facepipe/person/lin_manuel_miranda",
                                                                 "facepipe/camera/default/face")}  # fmt: skip
        assert {m.topic for m in sub.snapshot()} >= CONFIGS
        assert [m.payload for m in sub.on("facepipe/available")] == ["online", "offline"]
        with Subscriber(broker.port, "homeassistant/#", "facepipe/#", client_id="home-assistant") as late:
            # Retained messages of the two filters come in turn: wait for the person's state too.
            person = "facepipe/person/lin_manuel_miranda"
            assert late.wait_for(lambda m: {x.topic for x in m if x.retain} >= CONFIGS | {person}, GUARD_S)

    summary = result.summary
    assert result.exit_code == 0 and summary["frames"] == 275 and summary["dropped"] == 0
    # Every event of the file arrived over MQTT, with the same fields plus camera, timestamp and snapshot.
    written = read_events(events_file)
    assert len(written) == summary["recognitions"]["known"] + summary["recognitions"]["unknown"] >= 2
    assert [{k: e[k] for k in FILE_KEYS | {"snapshot"}} for e in received] == written
    assert all(set(e) == FILE_KEYS | ADDED_KEYS | {"snapshot"} and e["camera"] == "default" for e in received)
    assert {e["name"] for e in received} <= {None, LIN, ALEX} and LIN in {e["name"] for e in received}
    lin = [e for e in received if e["name"] == LIN][-1]
    assert states["facepipe/person/lin_manuel_miranda"]["camera"] == "default"
    assert states["facepipe/person/lin_manuel_miranda"]["similarity"] == lin["similarity"]
    assert states["facepipe/camera/default/face"]["name"] == LIN  # idle clear is 60 s away
    # /metrics: read during the run, and after it equal to the summary.
    cam = (("camera", "default"),)
    frames_seen = [s[("facepipe_frames_total", cam)] for s in scrapes]
    assert frames_seen == sorted(frames_seen) and any(0 < f < 275 for f in frames_seen)
    assert final[("facepipe_frames_total", cam)] == summary["frames"]
    assert final[("facepipe_dropped_frames_total", cam)] == summary["dropped"]
    assert final[("facepipe_faces_total", cam)] == summary["faces"]
    for status in ("known", "unknown"):
        key = ("facepipe_recognitions_total", (("camera", "default"), ("status", status)))
        assert final[key] == summary["recognitions"][status]
    assert (
        final[("facepipe_gallery_persons", ())] == 2 and final[("facepipe_mqtt_events_sent_total", ())] >= 2
    )
    # Snapshots: one JPEG per event, readable, a face in it.
    crops = sorted(p for p in snaps.iterdir() if p.suffix == ".jpg")
    assert [Path(e["snapshot"]) for e in written] == crops
    analyzer = FaceAnalyzer(settings)
    for crop in crops:
        image = cv2.imread(str(crop))
        assert image is not None and len(analyzer.detect(image)) >= 1, crop.name


def test_kill_9_of_the_pipeline_makes_the_broker_publish_offline(gallery, tmp_path):
    with MosquittoBroker() as broker, Subscriber(broker.port, "facepipe/available") as sub:
        run = RunningPipeline(cli(gallery, tmp_path), env=mqtt_env(broker.port))
        try:
            assert sub.wait_for(lambda m: [x.payload for x in m] == ["online"], GUARD_S), run.stderr
            run.proc.send_signal(signal.SIGKILL)
            run.proc.wait(GUARD_S)
            assert sub.wait_for(lambda m: [x.payload for x in m] == ["online", "offline"], GUARD_S)
        finally:
            run.kill()


def test_a_broker_away_for_3_s_mid_run_loses_no_event_and_no_frame(gallery, tmp_path):
    # Played at 20 fps (13.8 s): the outage and the reconnection after it (backoff up to 2 s) end well
    # before the clip does, however slow the machine is to start.
    slow = ("--fps-target", "20")
    plain = RunningPipeline(cli(gallery, tmp_path, *slow, "--events", str(tmp_path / "plain.jsonl")))
    plain.wait(GUARD_S)
    reference = plain.summary()
    events_file = tmp_path / "events.jsonl"
    with (
        MosquittoBroker(persistent=True) as broker,
        Subscriber(broker.port, "facepipe/#", persistent=True) as sub,
    ):
        run = RunningPipeline(
            cli(gallery, tmp_path, *slow, "--events", str(events_file)), env=mqtt_env(broker.port)
        )
        try:
            assert sub.wait_for(lambda m: mqtt_events(sub), GUARD_S), run.stderr  # mid-run: events flow
            broker.stop(graceful=True)
            time.sleep(3.0)  # the outage the test is about, not a wait for something
            broker.start()
            run.wait(GUARD_S)  # nothing blocks at shutdown: the run ends by itself
        finally:
            run.kill()
        written = read_events(events_file)
        assert sub.wait_for(lambda m: len(mqtt_events(sub)) >= len(written), GUARD_S)
        received = mqtt_events(sub)
    summary = run.summary()
    assert run.proc.returncode == 0, run.stderr
    assert summary["frames"] == reference["frames"] == 275 and summary["dropped"] == reference["dropped"] == 0
    assert [{k: e[k] for k in FILE_KEYS} for e in received] == written
    assert "MQTT connection to 127.0.0.1:" in run.stderr and "lost" in run.stderr
    assert "Traceback" not in run.stderr


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True, text=True, timeout=GUARD_S,
    )  # fmt: skip


def test_a_port_that_is_not_a_number_is_one_line(gallery, tmp_path):
    result = run_cli(cli(gallery, tmp_path), {"FACEPIPE_MQTT_HOST": "127.0.0.1", "FACEPIPE_MQTT_PORT": "abc"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: environment FACEPIPE_MQTT_PORT='abc' is not a valid int (invalid literal for int() with "
        "base 10: 'abc'); fix it in .env, the environment or the command line"
    ]


def test_a_metrics_port_in_use_is_one_line_before_anything_starts(gallery, tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - where the metrics server listens
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(cli(gallery, tmp_path), {"FACEPIPE_METRICS_PORT": str(port)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: FACEPIPE_METRICS_PORT={port} is in use; choose another port, or stop what listens there"
    ]


@pytest.mark.parametrize(
    ("env", "warning"),
    [
        (
            {"FACEPIPE_MQTT_HOST": "192.0.2.1", "FACEPIPE_MQTT_PASSWORD": "pw-never-shown"},
            "MQTT broker 192.0.2.1:",
        ),
        ({"FACEPIPE_MQTT_TLS": "true"}, "TLS handshake failed"),
    ],
    ids=["unreachable-host", "tls-to-a-plain-port"],
)
def test_a_broker_that_cannot_be_reached_is_one_warning_and_the_run_goes_on(gallery, tmp_path, env, warning):
    with MosquittoBroker() as broker:
        result = run_cli(
            cli(gallery, tmp_path, "--max-speed", "--max-frames", "30"), mqtt_env(broker.port, **env)
        )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["frames"] == 30
    lines = [line for line in result.stderr.splitlines() if "MQTT" in line]
    assert warning in lines[0], result.stderr  # one warning for the outage; at the end, what did not go
    assert len(lines) == 2 and "event(s) not delivered to" in lines[1], result.stderr
    assert "Traceback" not in result.stderr and "pw-never-shown" not in result.stderr
