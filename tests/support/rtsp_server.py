"""Standalone loopback RTSP server for tests: loops a folder of JPEG frames as H.264 over RTSP.

Runs under Debian's /usr/bin/python3 (which has `gi`), not the project venv, so it imports nothing from the
project. `tests/support/servers.py` (RtspServer) launches it; it can also be run by hand:

    /usr/bin/python3 tests/support/rtsp_server.py --frames-dir DIR --fps 25 --port 0 --mount /stream

Needs the apt packages python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly.

Protocol with the parent:
- prints `READY port=<port> url=<url>` on stdout once the socket listens (or `ERROR <message>` and exits 2);
- SIGTERM: exits at once; the kernel closes every client connection, no RTSP TEARDOWN (a camera that dies);
- SIGUSR1: freeze: connections stay open and RTSP is still answered, but no video is sent (a stalled camera);
- SIGUSR2: unfreeze: video resumes, timestamps rebased to now;
- EOF on stdin (the parent died): exits, so a crashed test run leaves no orphan server behind.

Frames go through `appsrc ! jpegdec ! videoconvert ! x264enc ! rtph264pay`: the frames are decoded by the
parent with cv2, so this side needs no demuxer or decoder for whatever codec the source file used, and the
loop is a frame counter rather than a seek on EOS. Clients must use RTP over TCP (interleaved), which ffmpeg
falls back to by itself when UDP is refused; UDP would need extra ports and is not what the tests exercise.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

REQUIRED_ELEMENTS = {
    "appsrc": "gstreamer1.0-plugins-base",
    "videoconvert": "gstreamer1.0-plugins-base",
    "jpegdec": "gstreamer1.0-plugins-good",
    "rtph264pay": "gstreamer1.0-plugins-good",
    "rtpbin": "gstreamer1.0-plugins-good",
    "x264enc": "gstreamer1.0-plugins-ugly",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--frames-dir", type=Path, required=True, help="folder of *.jpg frames, played sorted"
    )
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--mount", default="/stream")
    parser.add_argument("--address", default="127.0.0.1", choices=["127.0.0.1"], help="loopback only")
    return parser.parse_args(argv)


def fail(message: str) -> None:
    print(f"ERROR {message}", flush=True)
    os._exit(2)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtsp", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtsp, GstRtspServer
    except (ImportError, ValueError) as exc:
        fail(
            f"GStreamer RTSP bindings missing ({exc}): apt-get install python3-gi gir1.2-gst-rtsp-server-1.0"
        )

    Gst.init(None)
    missing = sorted(
        {pkg for name, pkg in REQUIRED_ELEMENTS.items() if Gst.ElementFactory.find(name) is None}
    )
    if missing:
        fail(f"GStreamer elements missing: apt-get install {' '.join(missing)}")

    frame_paths = sorted(args.frames_dir.glob("*.jpg"))
    if not frame_paths:
        fail(f"no *.jpg frames in {args.frames_dir}")
    frames = [p.read_bytes() for p in frame_paths]
    fps_n, fps_d = Gst.util_double_to_fraction(args.fps)
    frame_ns = Gst.util_uint64_scale_int(Gst.SECOND, fps_d, fps_n)
    # A keyframe every second: a client that joins or reconnects decodes within a second. zerolatency alone
    # turns on sliced threads, whose multi-slice frames arrive corrupted after rtph264pay (seen with both
    # FFmpeg and GStreamer clients), hence sliced-threads=false.
    keyframe_every = max(1, round(args.fps))

    launch = (
        "( appsrc name=src is-live=false format=time block=false max-bytes=2000000 "
        f"caps=image/jpeg,framerate={fps_n}/{fps_d},pixel-aspect-ratio=1/1 "
        "! jpegdec ! videoconvert ! video/x-raw,format=I420 "
        "! x264enc tune=zerolatency sliced-threads=false speed-preset=ultrafast "
        f"key-int-max={keyframe_every} bitrate=2000 "
        "! video/x-h264,profile=constrained-baseline "
        "! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )

    state = {"frozen": False}
    # id(media) -> {"src", "index", "pts", "lock"}; one feed per client (shared=False). The lock serialises
    # the streaming thread's need-data with unfreeze's push from the main loop.
    feeds: dict[int, dict] = {}

    def push_next(feed: dict) -> None:
        with feed["lock"]:
            buffer = Gst.Buffer.new_wrapped(frames[feed["index"] % len(frames)])
            buffer.pts = feed["pts"]
            buffer.duration = frame_ns
            feed["index"] += 1
            feed["pts"] += frame_ns
            feed["src"].emit("push-buffer", buffer)

    def on_need_data(src: Gst.Element, _length: int, feed: dict) -> None:
        # Called from the appsrc streaming thread; pushing nothing makes appsrc wait (frozen) until
        # unfreeze pushes again from the main loop.
        if not state["frozen"]:
            push_next(feed)

    def on_media_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        src = media.get_element().get_by_name("src")
        feed = {"src": src, "index": 0, "pts": 0, "lock": threading.Lock()}
        feeds[id(media)] = feed
        src.connect("need-data", on_need_data, feed)
        media.connect("unprepared", lambda m: feeds.pop(id(m), None))

    def running_time(src: Gst.Element) -> int:
        clock = src.get_clock()
        return clock.get_time() - src.get_base_time() if clock is not None else 0

    def freeze() -> bool:
        state["frozen"] = True
        return GLib.SOURCE_CONTINUE

    def unfreeze() -> bool:
        if state["frozen"]:
            state["frozen"] = False
            for feed in list(feeds.values()):
                # Rebase so the sink does not rush the frames it thinks are late after the pause.
                with feed["lock"]:
                    feed["pts"] = max(feed["pts"], running_time(feed["src"]))
                push_next(feed)
        return GLib.SOURCE_CONTINUE

    def on_stdin(fd: int, _condition: GLib.IOCondition) -> bool:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            os._exit(0)
        return GLib.SOURCE_CONTINUE

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(False)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
    factory.connect("media-configure", on_media_configure)

    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        fail(f"cannot listen on {args.address}:{args.port}")
    port = server.get_bound_port()
    if port <= 0:
        fail(f"cannot listen on {args.address}:{args.port}")

    # Exiting straight from SIGTERM is the point: no graceful TEARDOWN, like a camera losing power.
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, lambda: os._exit(0))
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, lambda: os._exit(0))
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR1, freeze)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGUSR2, unfreeze)
    GLib.io_add_watch(
        sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, on_stdin
    )

    print(f"READY port={port} url=rtsp://{args.address}:{port}{args.mount}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main(sys.argv[1:])
