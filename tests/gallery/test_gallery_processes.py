"""The embedded gallery across processes: persistence, a crash without close, a folder held elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.errors import UserError
from app.gallery import open_gallery

REPO = Path(__file__).resolve().parents[2]

SPEC_CODE = """
import json, sys
import numpy as np
from dataclasses import dataclass
from pathlib import Path
from app.config import Settings
from app.gallery import open_gallery

@dataclass(frozen=True)
class Spec:
    model_id: str = "dlib-0123456789ab"
    dim: int = 128
    metric: str = "euclidean"

settings = Settings(qdrant_path=Path(sys.argv[1]))
"""


class Spec:
    model_id = "dlib-0123456789ab"
    dim = 128
    metric = "euclidean"


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SPEC_CODE) + textwrap.dedent(code), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_reopened_in_new_process_returns_same_persons_and_vectors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    enrolled = {"alice": rng.normal(size=(3, 128)).astype(np.float32), "bob": rng.normal(size=(1, 128))}
    gallery = open_gallery(Settings(qdrant_path=tmp_path), Spec())
    for name, vectors in enrolled.items():
        gallery.add(name, vectors, meta={"source": f"{name}.jpg"})
    gallery.close()

    reader = run_python(
        """
        g = open_gallery(settings, Spec())
        out = {"list": g.list(), "vectors": {n: g.vectors(n).tolist() for n in g.list()},
               "top": [m.name for m in g.search(np.asarray(json.loads(sys.argv[2]), np.float32))[0]]}
        g.close()
        print(json.dumps(out))
        """,
        str(tmp_path),
        json.dumps(enrolled["bob"][0].tolist()),
    )
    assert reader.returncode == 0, reader.stderr
    out = json.loads(reader.stdout)
    assert out["list"] == {"alice": 3, "bob": 1}
    assert out["top"] == ["bob"]
    for name, vectors in enrolled.items():
        got = np.asarray(out["vectors"][name], np.float32)
        np.testing.assert_allclose(
            np.sort(got, axis=0), np.sort(vectors.astype(np.float32), axis=0), rtol=1e-6
        )


def test_add_survives_a_process_killed_without_close(tmp_path: Path) -> None:
    writer = run_python(
        """
        import os
        g = open_gallery(settings, Spec())
        g.add("carol", np.ones((2, 128), np.float32))
        os._exit(0)  # no close(), no flush at exit: the write-ahead log must carry the add
        """,
        str(tmp_path),
    )
    assert writer.returncode == 0, writer.stderr
    gallery = open_gallery(Settings(qdrant_path=tmp_path), Spec())
    assert gallery.list() == {"carol": 2}
    gallery.close()


def test_folder_held_by_another_process_gives_one_line_error(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(SPEC_CODE)
            + textwrap.dedent(
                """
                g = open_gallery(settings, Spec())
                g.add("dave", np.ones((1, 128), np.float32))
                print("ready", flush=True)
                sys.stdin.readline()  # hold the gallery until the test says stop
                g.close()
                """
            ),
            str(tmp_path),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(UserError) as excinfo:
            open_gallery(Settings(qdrant_path=tmp_path), Spec())
        message = str(excinfo.value)
        assert "\n" not in message
        assert f"gallery at {tmp_path / 'faces'} is in use by another process (pid {holder.pid})" in message
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
    gallery = open_gallery(Settings(qdrant_path=tmp_path), Spec())  # free again once the holder closed it
    assert gallery.list() == {"dave": 1}
    gallery.close()
