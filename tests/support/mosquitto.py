"""A real MQTT broker for tests: Debian's mosquitto on a free loopback port, with a generated config.

    with MosquittoBroker() as broker:       # started, port open
        broker.port
        broker.stop()                       # every client is cut at once (the process is killed)
        broker.start()                      # back on the SAME port (no persistence: retained ones are gone)

`MosquittoBroker(users={"name": "password"})` accepts only those users. `MosquittoBroker(persistent=True)`
keeps retained messages and the sessions of clients that asked for one (clean_session=False) across
`stop(graceful=True)` (SIGTERM: mosquitto saves its database) and `start()`, so a test subscriber misses
nothing published while it was reconnecting.

The process is always killed: on stop(), on leaving the `with`, at garbage collection and at interpreter
exit. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")
READY_TIMEOUT_S = 60.0  # a failure guard: the broker says when it is ready
STOP_TIMEOUT_S = 3.0


class BrokerError(RuntimeError):
    """The broker could not start (the message says why and what to install)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _kill(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT_S)


class MosquittoBroker:
    def __init__(self, port: int = 0, persistent: bool = False, users: dict[str, str] | None = None) -> None:
        if not MOSQUITTO.is_file():
            raise BrokerError(f"{MOSQUITTO} not found: install Debian's mosquitto (apt-get)")
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.config = self.folder / "mosquitto.conf"
        self.log = self.folder / "mosquitto.log"
        access = "allow_anonymous true\n"
        if users:  # only these users, with these passwords
            passwords = self.folder / "passwords"
            for i, (user, password) in enumerate(users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run([str(MOSQUITTO_PASSWD), *create, "-b", str(passwords), user, password],
                               check=True, capture_output=True, timeout=10)  # fmt: skip
            access = f"allow_anonymous false\npassword_file {passwords}\n"
        off = "persistence false\n"
        persistence = f"persistence true\npersistence_location {self.folder}/\n" if persistent else off
        self.config.write_text(
            # Started as root, mosquitto would switch to its own user, who cannot write our folder.
            f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\n{access}{persistence}"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\n"
        )
        self._process: subprocess.Popen | None = None
        # Runs at garbage collection or, at the latest, at interpreter exit: the broker never outlives us.
        self._holder: list[subprocess.Popen | None] = [None]
        weakref.finalize(self, MosquittoBroker._cleanup, self.folder, self._holder)

    @staticmethod
    def _cleanup(folder: Path, holder: list) -> None:
        _kill(holder[0])
        shutil.rmtree(folder, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        self._process = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._holder[0] = self._process
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not port_open(self.port):
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise BrokerError(f"mosquitto exited at start: {' '.join(err.split())[:300]}")
            if time.monotonic() > deadline:
                _kill(self._process)
                raise BrokerError(f"mosquitto did not open port {self.port} in {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.02)
        return self

    def stop(self, graceful: bool = False) -> None:
        """Kill the broker (clients see the connection drop, as with a crash or a power cut); `graceful`:
        SIGTERM, so a persistent broker saves its database first."""
        if graceful and self.running:
            assert self._process is not None
            self._process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(STOP_TIMEOUT_S)
        _kill(self._process)
        self._process = None
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
