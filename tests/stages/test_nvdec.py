"""Which decoder a source gets (DECODER=auto|ffmpeg|nvdec), and NVDEC's error path on a machine without
PyNvVideoCodec or a GPU: one line naming the fix, or FFmpeg when NVDEC was only preferred."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from app.errors import UserError
from app.inference.cuda_driver import PrimaryContext
from app.stages import nvdec
from app.stages.nvdec import NvdecUnavailable, choose_decoder, nvdec_problem, open_capture
from app.stages.sources import parse_source
from tests.support.shared_data import HAMILTON, REPO

FILE = parse_source(str(HAMILTON))
URL = parse_source("rtsp://user:secret@127.0.0.1:8554/cam")
WEBCAM = parse_source("0")
MISSING = "FACEPIPE_DECODER=nvdec needs NVIDIA's PyNvVideoCodec ..."


@pytest.mark.parametrize("spec", [FILE, URL])
def test_auto_takes_nvdec_when_it_works_and_ffmpeg_when_it_does_not(spec):
    assert choose_decoder("auto", spec, problem=None) == "nvdec"
    assert choose_decoder("auto", spec, problem=MISSING) == "ffmpeg"


def test_ffmpeg_is_ffmpeg_and_webcams_always_use_opencv():
    assert choose_decoder("ffmpeg", FILE, problem=None) == "ffmpeg"
    for setting in ("auto", "nvdec"):
        assert choose_decoder(setting, WEBCAM, problem=None) == "ffmpeg"


def test_nvdec_required_but_unavailable_says_why():
    with pytest.raises(NvdecUnavailable, match="PyNvVideoCodec"):
        choose_decoder("nvdec", FILE, problem=MISSING)
    assert choose_decoder("nvdec", URL, problem=None) == "nvdec"


def test_an_unknown_decoder_is_one_line():
    with pytest.raises(UserError, match="FACEPIPE_DECODER='vaapi' is not a decoder; use one of auto, ffmpeg"):
        choose_decoder("vaapi", FILE, problem=None)


@pytest.mark.skipif(nvdec_problem() is None, reason="this machine has PyNvVideoCodec and a GPU")
def test_without_the_wheel_or_a_gpu_nvdec_names_the_fix_and_auto_plays_with_ffmpeg():
    problem = nvdec_problem()
    assert problem is not None and "\n" not in problem and "FACEPIPE_DECODER=ffmpeg" in problem
    assert "pip install pynvvideocodec==2.2.4" in problem or "NVIDIA GPU" in problem
    with pytest.raises(NvdecUnavailable) as info:
        open_capture(FILE, "nvdec", 5.0, 3.0)
    assert str(info.value) == problem
    cap = open_capture(FILE, "auto", 5.0, 3.0)
    assert isinstance(cap, cv2.VideoCapture)
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (360, 640, 3)


def test_no_driver_means_no_device(monkeypatch):
    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(nvdec.ctypes, "CDLL", no_library)
    assert nvdec.cuda_devices() == 0


@pytest.mark.skipif(nvdec_problem() is None, reason="this machine has PyNvVideoCodec and a GPU")
def test_a_run_asking_for_nvdec_without_it_is_one_error_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "FACEPIPE_DECODER": "nvdec"}
    result = subprocess.run(
        [sys.executable, "-m", "app.main", "--env-file", str(tmp_path / "none.env"),
         "--source", str(HAMILTON), "--no-gui", "--gallery", str(tmp_path / "gallery")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "FACEPIPE_DECODER" in errors[0] and ("pynvvideocodec" in errors[0] or "GPU" in errors[0])


class FrameLibrary:
    """Stands in for PyNvVideoCodec's demuxer/decoder API (which needs an NVIDIA GPU) to check the adapter's
    own logic: order, colour conversion, end of stream, a source that yields nothing. Frames are real pixels
    of the Hamilton clip, handed out as NV12 host arrays as the library does with usedevicememory=False and
    its native output."""

    class OutputColorType:
        NATIVE = "native"

    def __init__(self, frames: list) -> None:
        self.frames = frames

    def CreateDemuxer(self, filename: str):  # noqa: N802 - the library's name
        frames = self.frames

        class Demuxer:
            def Height(self):  # noqa: N802
                return frames[0].shape[0] if frames else 0

            def Width(self):  # noqa: N802
                return frames[0].shape[1] if frames else 0

            def GetNvCodecId(self):  # noqa: N802
                return 4

            def __iter__(self):
                return iter(range(len(frames)))

        return Demuxer()

    def CreateDecoder(self, gpuid, codec, usedevicememory, outputColorType):  # noqa: N802, N803
        assert usedevicememory is False and outputColorType == "native"
        frames = self.frames

        class Decoder:
            def Decode(self, packet):  # noqa: N802
                return [nv12(frames[packet])]

        return Decoder()


def nv12(bgr: np.ndarray) -> np.ndarray:
    """BGR as NV12 planes: Y, then U and V interleaved at half resolution."""
    h, w = bgr.shape[:2]
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    u = i420[h : h + h // 4].reshape(-1)
    v = i420[h + h // 4 :].reshape(-1)
    return np.concatenate([i420[:h].reshape(-1), np.stack([u, v], axis=1).reshape(-1)]).reshape(h * 3 // 2, w)


def clip_frames(n: int) -> list:
    cap = cv2.VideoCapture(str(HAMILTON))
    frames = [cap.read()[1] for _ in range(n)]
    cap.release()
    return frames


def test_the_nvdec_adapter_reads_every_frame_in_order_as_bgr_then_ends(monkeypatch):
    frames = clip_frames(12)
    monkeypatch.setattr(nvdec, "import_nvc", lambda: FrameLibrary(frames))
    cap = nvdec.NvdecCapture(FILE)
    assert cap.isOpened() and cap.get(cv2.CAP_PROP_FRAME_COUNT) == 275
    slot = np.zeros_like(frames[0])
    got = []
    while True:
        ok, image = cap.read(slot if len(got) % 2 else None)  # into a ring slot, or a new array
        if not ok:
            break
        assert (image is slot) == (len(got) % 2 == 1)
        got.append(image.copy())
    cap.release()
    expected = [cv2.cvtColor(nv12(f), cv2.COLOR_YUV2BGR_NV12) for f in frames]
    assert len(got) == 12 and all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    # NV12 keeps colour at half resolution: the pictures are the clip's, within rounding
    assert all(np.abs(a.astype(int) - b).mean() < 3 for a, b in zip(got, frames, strict=True))
    assert not cap.isOpened()


def test_a_source_nvdec_yields_nothing_from_fails_at_open_and_auto_falls_back_to_ffmpeg(monkeypatch, caplog):
    monkeypatch.setattr(nvdec, "import_nvc", lambda: FrameLibrary([]))
    monkeypatch.setattr(nvdec, "nvdec_problem", lambda: None)
    monkeypatch.setattr(nvdec, "_FELL_BACK", set())
    with pytest.raises(UserError, match="NVDEC gave no frame of .*; set FACEPIPE_DECODER=ffmpeg"):
        open_capture(FILE, "nvdec", 5.0, 3.0)
    for _ in range(2):  # a camera reconnecting opens its source again: the fallback is said once
        cap = open_capture(FILE, "auto", 5.0, 3.0)
        assert isinstance(cap, cv2.VideoCapture) and cap.read()[0]
        cap.release()
    fell_back = [r for r in caplog.records if "using FFmpeg for it" in r.getMessage()]
    assert len(fell_back) == 1 and fell_back[0].levelname == "WARNING"


class ContextLibrary(FrameLibrary):
    """FrameLibrary whose CreateDecoder takes `cudacontext=` as PyNvVideoCodec 2.x does, recording it."""

    def __init__(self, frames: list) -> None:
        super().__init__(frames)
        self.contexts: list[int] = []

    def CreateDecoder(self, gpuid, codec, usedevicememory, outputColorType, cudacontext=0):  # noqa: N802, N803
        self.contexts.append(cudacontext)
        return super().CreateDecoder(gpuid, codec, usedevicememory, outputColorType)


def a_context(released: list, wait: str = "block") -> PrimaryContext:
    return PrimaryContext(device=0, handle=0x7F00, wait=wait, _release=lambda: released.append(True))


def test_without_a_driver_the_decoder_keeps_the_library_context_and_says_why(caplog):
    # This machine has no NVIDIA driver: retaining the primary context fails; the decoder is made as before.
    with caplog.at_level("WARNING", logger="app.stages.nvdec"):
        assert nvdec.decoder_context(0, "block") is None
    assert "NVDEC keeps CUDA's default GPU wait: libcuda (the NVIDIA driver) does not load" in caplog.text
    assert nvdec.decoder_context(0, None) is None


def test_the_decoder_is_given_the_blocking_primary_context_and_lets_it_go_after_itself(monkeypatch):
    frames = clip_frames(3)
    library, released = ContextLibrary(frames), []
    monkeypatch.setattr(nvdec, "import_nvc", lambda: library)
    monkeypatch.setattr(nvdec, "retain_primary_context", lambda gpu, wait: a_context(released, wait))
    cap = nvdec.NvdecCapture(FILE)
    assert library.contexts == [0x7F00] and cap.gpu_wait == "block"
    while cap.read()[0]:
        pass
    cap.release()
    cap.release()  # twice is once
    assert released == [True] and cap._decoder is None


def test_a_library_without_cudacontext_makes_its_own_decoder():
    released: list = []
    library = FrameLibrary(clip_frames(2))  # CreateDecoder(gpuid, codec, usedevicememory, outputColorType)
    decoder = nvdec.create_decoder(
        library, 0, 4, a_context(released), device_memory=False, color=library.OutputColorType.NATIVE
    )
    assert len(decoder.Decode(0)) == 1


def test_asking_for_no_wait_leaves_the_context_to_the_library(monkeypatch):
    library = ContextLibrary(clip_frames(2))
    monkeypatch.setattr(nvdec, "import_nvc", lambda: library)
    cap = nvdec.NvdecCapture(FILE, gpu_wait=None)
    assert library.contexts == [0] and cap.gpu_wait == "library's"
    cap.release()


def test_a_source_nvdec_cannot_open_lets_the_context_go(monkeypatch):
    released: list = []

    class NoDemuxer(ContextLibrary):
        def CreateDemuxer(self, filename: str):  # noqa: N802
            raise RuntimeError(f"cannot open {filename}")

    monkeypatch.setattr(nvdec, "import_nvc", lambda: NoDemuxer([]))
    monkeypatch.setattr(nvdec, "retain_primary_context", lambda gpu, wait: a_context(released, wait))
    with pytest.raises(UserError, match="NVDEC cannot decode .*RuntimeError: cannot open"):
        nvdec.NvdecCapture(FILE)
    assert released == [True]


def test_a_wheel_that_fails_to_load_for_want_of_the_driver_is_one_line(tmp_path, monkeypatch):
    # PyNvVideoCodec's import loads the driver's libnvidia-encode and raises RuntimeError (with a page of
    # troubleshooting) where it is missing: that is NVDEC unavailable, not a crash of DECODER=auto.
    package = tmp_path / "PyNvVideoCodec"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise RuntimeError('libnvidia-encode.so.1: cannot open shared object file\\n\\n=== TROUBLESHOOT')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "PyNvVideoCodec", raising=False)
    with pytest.raises(NvdecUnavailable) as info:
        nvdec.import_nvc()
    message = str(info.value)
    assert "\n" not in message and "libnvidia-encode.so.1: cannot open shared object file" in message
    assert message.endswith("or set FACEPIPE_DECODER=ffmpeg")


def test_nvdec_converts_on_one_opencv_thread(monkeypatch):
    # OpenCV's pool, a thread per core woken for each 1080p conversion in every capture process, was most of
    # NVDEC's host CPU on the H200 (decode_results_h200.jsonl: 6.3 ms a frame against 3.7 on one thread).
    monkeypatch.setattr(nvdec, "import_nvc", lambda: FrameLibrary(clip_frames(1)))
    before = cv2.getNumThreads()
    try:
        cap = nvdec.NvdecCapture(FILE)
        assert cv2.getNumThreads() == nvdec.CONVERT_THREADS == 1
        cap.release()
    finally:
        cv2.setNumThreads(before)


def test_the_nvdec_adapter_hands_out_nv12_planes_copied_into_the_slot(monkeypatch):
    frames = clip_frames(6)
    monkeypatch.setattr(nvdec, "import_nvc", lambda: FrameLibrary(frames))
    cap = nvdec.NvdecCapture(FILE, pixel_format="nv12")
    assert nvdec.delivered_format(cap) == "nv12"
    h, w = frames[0].shape[:2]
    slot = np.zeros((h * 3 // 2, w), np.uint8)
    got = []
    while True:
        ok, image = cap.read(slot if len(got) % 2 else None)
        if not ok:
            break
        assert (image is slot) == (len(got) % 2 == 1)  # into the slot: a plain copy, no conversion
        got.append(image.copy())
    cap.release()
    assert len(got) == 6 and all(np.array_equal(a, nv12(f)) for a, f in zip(got, frames, strict=True))


def test_frame_format_keeps_nv12_exactly_for_the_torch_detector_unless_told():
    assert nvdec.nvdec_frame_format("auto", "torch") == "nv12"
    assert nvdec.nvdec_frame_format("auto", "onnxruntime") == "bgr"
    assert nvdec.nvdec_frame_format("auto", "tensorrt") == "bgr"
    assert nvdec.nvdec_frame_format("bgr", "torch") == "bgr"
    assert nvdec.nvdec_frame_format("nv12", "onnxruntime") == "nv12"
    with pytest.raises(UserError, match=r"^FACEPIPE_FRAME_FORMAT='yuv' is not a frame format; use one of"):
        nvdec.nvdec_frame_format("yuv", "torch")
    assert nvdec.delivered_format(cv2.VideoCapture()) == "bgr"  # OpenCV's captures are BGR


def test_a_bad_frame_format_setting_is_one_line(monkeypatch):
    from app.config import ConfigError, load_settings

    monkeypatch.delenv("FACEPIPE_FRAME_FORMAT", raising=False)
    assert load_settings({}, env_file=None).frame_format == "auto"
    monkeypatch.setenv("FACEPIPE_FRAME_FORMAT", "rgb")
    with pytest.raises(ConfigError, match="FRAME_FORMAT='rgb' is not one of: auto, bgr, nv12") as caught:
        load_settings({}, env_file=None)
    assert "\n" not in str(caught.value)
