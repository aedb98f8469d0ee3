"""The shape of a run: named nodes (one stage object each, one process each) and the channels between them.

    capture:front ─┐
    capture:door  ─┼─▶ detect ─▶ postprocess ─▶ recognize ─▶ gui
    capture:yard  ─┘   (one queue per camera into detect, read in turn)

- A node is a stage object plus its name (unique: it names the process, `fp-NAME`, and the node in every
  message) and, for a source, the stream it produces. What the stage can do is its declared
  `Capabilities` (stage_runner.py).
- A channel is a bounded queue from one node to another. A node has any number of incoming channels (read
  fairly, `channels.FairInbox`) and one outgoing channel, or several that each carry a given set of
  streams (`Channel.streams`: the detector feeding several tracking lanes routes each frame by its
  stream). Side channels a pair of stages use between themselves (requests and answers) are queues the
  assembly hands to both stage objects, listed in `side_queues` so the supervisor closes them.
- A stream is one camera: its index (`FrameMeta.stream`), its name, its shared-memory ring (created by the
  supervisor once its capture reports the frame size: `ring_slots`, plus `held` for a file), and the node
  that produces it.

The supervisor (supervisor.py) runs any such graph; `PipelineGraph.linear` is the one-camera line of
stages the project started with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.pipeline.frame_ring import FrameRingHandle
from app.pipeline.stage_runner import Capabilities, capabilities_of


@dataclass
class Node:
    name: str
    stage: Any
    stream: int | None = None  # a source node's stream; None for shared nodes

    @property
    def caps(self) -> Capabilities:
        return capabilities_of(self.stage)


@dataclass(frozen=True)
class Channel:
    src: str
    dst: str
    maxsize: int
    streams: tuple[int, ...] | None = None  # only these streams' messages (None: all of them)


@dataclass(frozen=True)
class Stream:
    index: int
    camera: str
    ring: FrameRingHandle
    source: str  # the name of the node that produces it
    # Frames of a file stream a stage holds back on top of the frames in flight (the recognize stage's name
    # look-ahead): its ring gets that many more slots, so holding them never starves the capture.
    held: int = 0


@dataclass
class PipelineGraph:
    nodes: list[Node]
    channels: list[Channel]
    streams: list[Stream]
    side_queues: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique: {names}")
        known = set(names)
        for ch in self.channels:
            if ch.src not in known or ch.dst not in known:
                raise ValueError(f"channel {ch.src} -> {ch.dst} names an unknown node")
        for name in names:
            out = self.outputs(name)
            if len(out) > 1:
                routed = [s for ch in out for s in (ch.streams or ())]
                if any(ch.streams is None for ch in out) or len(routed) != len(set(routed)):
                    raise ValueError(f"node {name}'s outgoing channels must carry disjoint sets of streams")
        for stream in self.streams:
            node = self.node(stream.source)
            if not node.caps.source or node.stream != stream.index:
                raise ValueError(f"stream {stream.camera} is not produced by a source node ({stream.source})")
        if sorted(s.index for s in self.streams) != list(range(len(self.streams))):
            raise ValueError("streams are numbered 0..N-1")

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def inputs(self, name: str) -> list[Channel]:
        return [ch for ch in self.channels if ch.dst == name]

    def outputs(self, name: str) -> list[Channel]:
        return [ch for ch in self.channels if ch.src == name]

    def output(self, name: str) -> Channel | None:
        """A node's one outgoing channel (sources and nodes that do not route by stream)."""
        out = self.outputs(name)
        return out[0] if out else None

    def stream_of(self, node: Node) -> Stream | None:
        return None if node.stream is None else self.streams[node.stream]

    def stage_names(self) -> list[str]:
        """Distinct names of the stages frames go through, in node order (what the metrics report: capture,
        detect, ...); services (the embedding worker) stamp no frame."""
        out: list[str] = []
        for node in self.nodes:
            if not node.caps.service and node.stage.name not in out:
                out.append(node.stage.name)
        return out

    @classmethod
    def linear(
        cls, stages: list[Any], ring: FrameRingHandle, ring_slots: int, camera: str = "default"
    ) -> PipelineGraph:
        """One camera: stages[0] the source, each stage feeding the next (node names = stage names)."""
        if len(stages) < 2:
            raise ValueError("a pipeline needs a source and at least one more stage")
        if not capabilities_of(stages[0]).source:
            raise ValueError(f"the first stage ({stages[0].name}) is not a source")
        nodes = [Node(stages[0].name, stages[0], stream=0)] + [Node(s.name, s) for s in stages[1:]]
        channels = [
            # The source->detect queue may hold refs to frames a live source has since overwritten.
            Channel(a.name, b.name, 2 * ring_slots + 2 if i == 0 else ring_slots + 2)
            for i, (a, b) in enumerate(zip(nodes, nodes[1:], strict=False))
        ]
        return cls(nodes, channels, [Stream(0, camera, ring, nodes[0].name)])
