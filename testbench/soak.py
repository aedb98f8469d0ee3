"""Long runs and start/stop cycles of the real pipeline: memory per process, /dev/shm, leftovers.

    .venv/bin/python testbench/soak.py --minutes 10 [--every 10] [--fps-target 10]
    .venv/bin/python testbench/soak.py --cycles 100 [--cycle-seconds 1]

Soak: serves a looping source (a generated demo clip on the loopback MJPEG server, or `--clip FILE`, or any
`--source URL`), enrolls the demo people, runs `python -m app.main --no-gui` on it for `--minutes`, and every
`--every` seconds samples the RSS (VmRSS) of the supervisor ("main") and of every stage process (`fp-<stage>`,
by name, so a restarted capture keeps its column) and /dev/shm: this run's frame ring and all of /dev/shm in
use. Prints a table as it goes, then stops the pipeline with SIGINT and prints one JSON line last: per
process RSS at start (first sample after `--warmup` s), end, max and growth; ring and /dev/shm bytes; the
pipeline's own summary; and what was left behind (processes, segments).

Cycles: `--cycles N` starts the pipeline, waits until it runs, lets it run `--cycle-seconds`, stops it with
SIGINT, and checks that every process it had is gone and its ring segment unlinked; one JSON line last with
the totals (expected: 0 leftover processes and 0 segments).

Live sources are capped at `--fps-target` (default 10) so a soak does not take a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")
RING_PREFIX = "facering"
STAGE_PREFIX = "fp-"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0


# -- /proc and /dev/shm --------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def rss_kb(pid: int) -> int | None:
    value = proc_status(pid).get("VmRSS")
    return int(value.split()[0]) if value else None


def children_of(pid: int) -> dict[int, str]:
    """{pid: name} of the live (not zombie) children of `pid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            status = proc_status(int(entry.name))
            if status.get("PPid") == str(pid) and not status.get("State", "").startswith("Z"):
                found[int(entry.name)] = status.get("Name", "?")
    return found


def alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if proc_status(pid) and not proc_status(pid).get("State", "").startswith("Z")]


def ring_segments(owner_pid: int) -> list[Path]:
    return sorted(SHM.glob(f"{RING_PREFIX}-{owner_pid}-*"))


def ring_bytes(owner_pid: int) -> tuple[int, int]:
    """(bytes in memory, nominal bytes) of this run's ring segments: pages are only used once written."""
    resident = nominal = 0
    for path in ring_segments(owner_pid):
        with contextlib.suppress(OSError):
            stat = path.stat()
            resident += stat.st_blocks * 512
            nominal += stat.st_size
    return resident, nominal


def shm_used_bytes() -> int:
    stats = os.statvfs(SHM)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


# -- the pipeline as a child process -------------------------------------------------------------------------


class Pipeline:
    """`python -m app.main ...` with stderr read line by line in a thread."""

    def __init__(self, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("VIDEO_SOURCE", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.main", *argv], cwd=REPO, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.pids: dict[int, str] = {}  # every process seen under it, by pid

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def wait_running(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until "pipeline running"; UserError when it exits or times out first."""
        while not any("pipeline running" in line for line in self.stderr):
            if self.proc.poll() is not None or time.monotonic() - self.started > timeout:
                tail = " | ".join(self.stderr[-3:])
                raise UserError(f"the pipeline did not start (exit {self.proc.poll()}): {tail}")
            time.sleep(0.05)
        return time.monotonic() - self.started

    def children(self) -> dict[int, str]:
        found = children_of(self.proc.pid)
        self.pids.update(found)
        return found

    def stop(self) -> tuple[int, float, dict | None]:
        """SIGINT, wait; (exit code, seconds to stop, the JSON summary or None). Kills it after a timeout."""
        self.children()
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)  # stdout holds one summary line: it cannot fill its pipe
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        took = time.monotonic() - started
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()
        self.proc.stdout.close()
        self._reader.join(2)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        return self.proc.returncode, took, json.loads(lines[-1]) if lines else None

    def leftovers(self, settle_s: float = 1.0) -> tuple[list[int], list[str]]:
        """(processes of this run still alive, its ring segments still in /dev/shm) after a short settle."""
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline and (alive(list(self.pids)) or ring_segments(self.proc.pid)):
            time.sleep(0.05)
        return alive(list(self.pids)), [p.name for p in ring_segments(self.proc.pid)]


# -- the looping source --------------------------------------------------------------------------------------


@contextmanager
def looping_source(args: argparse.Namespace, work: Path) -> Iterator[tuple[str, dict[str, list[Path]]]]:
    """(the source URL, the photos to enroll by name): the loopback MJPEG server looping the clip."""
    from app.demo import demo_sets, standard_scenario, write_video

    enroll: dict[str, list[Path]] = {}
    if args.source:
        yield args.source, enroll
        return
    sets = demo_sets(args.images) if args.images else demo_sets()
    enroll = sets.enroll
    clip = args.clip
    if clip is None:
        scenario = standard_scenario(sets.video, size=(640, 360), fps=25.0, seconds=args.clip_seconds, seed=0)
        clip = write_video(scenario, work / "demo.mp4")
    from tests.support.servers import MjpegServer

    max_frames = int(args.clip_seconds * 25) + 1
    with MjpegServer(clip, fps=25.0, max_frames=max_frames) as server:
        yield server.url, enroll


def enroll_people(gallery: Path, people: dict[str, list[Path]]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name, photos in people.items():
        command = [
            sys.executable,
            "-m",
            "app.enroll",
            "--gallery",
            str(gallery),
            "add",
            name,
            *map(str, photos),
        ]
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise UserError(f"enrolling {name} failed: {result.stderr.strip().splitlines()[-1:]}")


def pipeline_argv(args: argparse.Namespace, url: str, work: Path) -> list[str]:
    return [
        "--source", url, "--no-gui", "--fps-target", str(args.fps_target), "--gallery", str(work / "gallery"),
        "--env-file", str(work / "none.env"), "--tracks-out", str(work / "tracks.jsonl"),
        "--events", str(work / "events.jsonl"), "--log-level", "INFO",
        "--overwrite",  # every cycle writes the same scratch files
        *args.pipeline_args,
    ]  # fmt: skip


# -- soak ----------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t_s: float
    rss_kb: dict[str, int]
    ring_bytes: int
    ring_nominal_bytes: int
    shm_used_bytes: int


@dataclass
class SoakReport:
    samples: list[Sample] = field(default_factory=list)

    def take(self, pipeline: Pipeline, t0: float) -> Sample:
        rss = {"main": rss_kb(pipeline.proc.pid) or 0}
        for pid, name in sorted(pipeline.children().items(), key=lambda item: item[1]):
            value = rss_kb(pid)
            if value is not None:
                key = name if name.startswith(STAGE_PREFIX) else f"other:{name}"
                rss[key] = rss.get(key, 0) + value
        sample = Sample(time.monotonic() - t0, rss, *ring_bytes(pipeline.proc.pid), shm_used_bytes())
        self.samples.append(sample)
        return sample

    def rss_table(self, warmup_s: float) -> dict[str, dict[str, int]]:
        after = [s for s in self.samples if s.t_s >= warmup_s] or self.samples
        names = sorted({name for s in self.samples for name in s.rss_kb})
        table = {}
        for name in names:
            values = [s.rss_kb[name] for s in after if name in s.rss_kb]
            if values:
                table[name] = {"start": values[0], "end": values[-1], "max": max(values),
                               "growth": values[-1] - values[0]}  # fmt: skip
        return table


def print_header(names: list[str]) -> None:
    print("   t_s  " + "  ".join(f"{n.removeprefix(STAGE_PREFIX):>11}" for n in names) + "   ring_MB  shm_MB")
    print("        " + "  ".join(f"{'RSS MB':>11}" for _ in names), flush=True)


def print_sample(sample: Sample, names: list[str]) -> None:
    cells = "  ".join(f"{sample.rss_kb.get(n, 0) / 1024:11.1f}" for n in names)
    print(
        f"{sample.t_s:6.0f}  {cells}  {sample.ring_bytes / 1e6:8.1f}  {sample.shm_used_bytes / 1e6:6.1f}",
        flush=True,
    )


def soak(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, looping_source(args, Path(tmp)) as (url, people):
        work = Path(tmp)
        enroll_people(work / "gallery", people)
        shm_before = shm_used_bytes()
        pipeline = Pipeline(pipeline_argv(args, url, work))
        try:
            startup_s = pipeline.wait_running()
            t0 = time.monotonic()
            report = SoakReport()
            names: list[str] = []
            deadline = t0 + args.minutes * 60
            while True:
                sample = report.take(pipeline, t0)
                if not names or set(sample.rss_kb) - set(names):
                    names = sorted(set(names) | set(sample.rss_kb), key=lambda n: (n != "main", n))
                    print_header(names)
                print_sample(sample, names)
                if pipeline.proc.poll() is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(args.every, remaining))
        finally:
            code, stop_s, summary = pipeline.stop()
        left_processes, left_segments = pipeline.leftovers()
        rings = [s.ring_bytes for s in report.samples]
        used = [s.shm_used_bytes for s in report.samples]
        return {
            "mode": "soak",
            "minutes": args.minutes,
            "every_s": args.every,
            "fps_target": args.fps_target,
            "samples": len(report.samples),
            "startup_s": round(startup_s, 2),
            "rss_kb": report.rss_table(args.warmup),
            "ring_bytes": {
                "start": rings[0],
                "end": rings[-1],
                "max": max(rings),
                "nominal": report.samples[-1].ring_nominal_bytes,
            },
            # All of /dev/shm, other programs' segments included: "before" and "after" are outside this run.
            "shm_used_bytes": {
                "before": shm_before,
                "start": used[0],
                "end": used[-1],
                "max": max(used),
                "after": shm_used_bytes(),
            },  # fmt: skip
            "pipeline": {
                "exit_code": code,
                "stop_s": round(stop_s, 2),
                "frames": summary.get("frames") if summary else None,
                "fps": summary.get("fps") if summary else None,
                "dropped": summary.get("dropped") if summary else None,
                "capture_restarts": summary.get("capture_restarts") if summary else None,
                "stop_reason": summary.get("stop_reason") if summary else None,
            },
            "leftover_processes": len(left_processes),
            "leftover_shm_segments": len(left_segments),
            "warnings": [line for line in pipeline.stderr if " WARNING " in line][-5:],
        }


# -- cycles --------------------------------------------------------------------------------------------------


def cycles(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, looping_source(args, Path(tmp)) as (url, people):
        work = Path(tmp)
        enroll_people(work / "gallery", people)
        entries_before = len(list(SHM.iterdir()))
        results = []
        late_stages: list[str] = []  # stages the supervisor had to terminate for not stopping in time
        print(" cycle  start_s  stop_s  exit  frames  left_procs  left_shm  terminated", flush=True)
        for index in range(args.cycles):
            pipeline = Pipeline(pipeline_argv(args, url, work))
            try:
                startup_s = pipeline.wait_running()
                pipeline.children()
                time.sleep(args.cycle_seconds)
            finally:
                code, stop_s, summary = pipeline.stop()
            processes, segments = pipeline.leftovers()
            frames = summary.get("frames") if summary else None
            late = [
                line.split("stage ", 1)[1].split()[0] for line in pipeline.stderr if "did not stop in" in line
            ]
            late_stages.extend(late)
            results.append(
                (startup_s, stop_s, code, frames, len(processes), len(segments), len(pipeline.pids))
            )
            terminated = ",".join(late) or "-"
            print(f"{index + 1:6d}  {startup_s:7.2f}  {stop_s:6.2f}  {code:4d}  {frames!s:>6}  "
                  f"{len(processes):10d}  {len(segments):8d}  {terminated}", flush=True)  # fmt: skip
        starts = [r[0] for r in results]
        stops = [r[1] for r in results]
        return {
            "mode": "cycles",
            "cycles": len(results),
            "clean_exits": sum(r[2] == 130 for r in results),
            "exit_codes": sorted({r[2] for r in results}),
            "leftover_processes": sum(r[4] for r in results),
            "leftover_shm_segments": sum(r[5] for r in results),
            "processes_per_run": max(r[6] for r in results),
            "start_s": {"mean": round(sum(starts) / len(starts), 2), "max": round(max(starts), 2)},
            "stop_s": {"mean": round(sum(stops) / len(stops), 2), "max": round(max(stops), 2)},
            "frames_per_run_min": min((r[3] or 0) for r in results),
            "terminated_stages": {name: late_stages.count(name) for name in sorted(set(late_stages))},
            # Everything in /dev/shm (rings, multiprocessing semaphores), other programs' included.
            "shm_entries": {"before": entries_before, "after": len(list(SHM.iterdir()))},
        }


# -- CLI -----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Soak and start/stop cycles of the pipeline (see the module doc)."
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--minutes", type=float, help="soak: run this long (fractions allowed)")
    mode.add_argument("--cycles", type=int, help="start/stop this many short runs")
    p.add_argument("--every", type=float, default=10.0, help="soak: seconds between samples (default 10)")
    p.add_argument(
        "--warmup", type=float, default=30.0, help="soak: 'start' RSS is the first sample after this"
    )
    p.add_argument(
        "--cycle-seconds", type=float, default=1.0, help="cycles: seconds each run runs (default 1)"
    )
    p.add_argument("--fps-target", type=float, default=10.0, help="cap of the live source rate (default 10)")
    p.add_argument("--source", help="soak this URL instead of the looping demo clip")
    p.add_argument("--clip", type=Path, help="loop this video instead of a generated demo clip")
    p.add_argument("--clip-seconds", type=float, default=12.0, help="length of the generated demo clip")
    p.add_argument("--images", type=Path, help="demo images folder (default: data/demo/images)")
    p.add_argument("--json-out", type=Path, help="also write the final JSON here")
    p.add_argument("pipeline_args", nargs="*", help="extra flags for app.main (after --)")
    return p


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops the pipeline


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.minutes is not None and args.minutes <= 0 or args.cycles is not None and args.cycles < 1:
            raise UserError("--minutes must be > 0 and --cycles at least 1")
        result = soak(args) if args.minutes is not None else cycles(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    line = json.dumps(result)
    if args.json_out is not None:
        args.json_out.write_text(line + "\n")
    print(line, flush=True)
    clean = result["leftover_processes"] == 0 and result["leftover_shm_segments"] == 0
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
