"""Test support: loopback MJPEG (HTTP) and RTSP video servers that can die, stall and come back.

Import as `from tests.support.servers import MjpegServer, RtspServer, rtsp_support_problem`.
"""
