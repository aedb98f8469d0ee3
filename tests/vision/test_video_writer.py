"""The annotated video writer: H.264 that plays up to the last frame even when its process is killed."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from app.errors import UserError
from app.vision.video_writer import CrashSafeVideoWriter, check_video_path
from tests.support.child_process import kill_hard, python_child
from tests.support.waiting import wait_until

WRITER_CHILD = """
import os
import sys
from pathlib import Path
import numpy as np
from app.vision.video_writer import CrashSafeVideoWriter
out, progress = Path(sys.argv[1]), Path(sys.argv[2])
writer = CrashSafeVideoWriter(out, 25.0, (160, 96))
i = 0
while True:  # until killed
    frame = np.full((96, 160, 3), (i * 7) % 256, np.uint8)
    writer.write(frame)
    i += 1
    progress.with_suffix(".tmp").write_text(str(i))
    os.replace(progress.with_suffix(".tmp"), progress)  # never seen half-written
"""


def decoded_frames(path: Path) -> tuple[int, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(stream)), stream.codec_context.name


def cv2_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_a_closed_video_is_h264_with_every_frame(tmp_path):
    out = tmp_path / "v.mp4"
    writer = CrashSafeVideoWriter(out, 30.0, (161, 91))  # odd sides are padded, not refused
    for i in range(40):
        writer.write(np.full((91, 161, 3), i, np.uint8))
    writer.close()
    assert decoded_frames(out) == (40, "h264") and cv2_frames(out) == 40
    assert b"moof" in out.read_bytes()  # fragmented: the index does not wait for the close


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_writer_killed_with_sigkill_leaves_every_frame_but_the_last_readable(tmp_path, suffix):
    out, progress = tmp_path / f"v{suffix}", tmp_path / "progress"

    def thirty_written() -> bool:
        text = progress.read_text() if progress.exists() else ""
        return (text.isdigit() and int(text) >= 30) or child.poll() is not None

    with python_child(WRITER_CHILD, str(out), str(progress)) as child:
        wait_until(thirty_written, "30 frames written", poll_s=0.01)
        assert child.poll() is None, "the writer ended by itself"
        kill_hard(child)
    written = int(progress.read_text())
    frames, codec = decoded_frames(out)
    assert codec == "h264" and written - 1 <= frames <= written + 1, (frames, written)
    assert cv2_frames(out) == frames


def test_unknown_formats_are_refused_in_one_line(tmp_path):
    for name in ("v.webm", "v.avi", "v"):
        with pytest.raises(UserError, match="unknown video format .* name the --output file .mp4"):
            check_video_path(tmp_path / name)
