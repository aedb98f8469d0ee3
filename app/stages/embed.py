"""Face embedding and gallery search: `FaceEmbedder` (the one place that runs the embedder and asks the
gallery), and `EmbedStage`, the shared embedding worker process that serves every stream's tracking.

Tracking never waits for the embedder (`recognize.py`): it sends `EmbedRequest`s (aligned chips of the few
tracks that need a look) on a side queue and applies the `EmbedResult`s when they come back. The worker
takes every request already queued (up to `max_faces` faces), runs them through the model in one batch,
searches the gallery once for all of them, and answers each request on the results queue. Batches mix
tracks and streams, so on a GPU ten cameras' new faces cost one model call.

A gallery server that stops answering mid-run degrades, as it always did: answers say
`gallery_unavailable`, no embedding is spent until the next retry (`reconnect.GALLERY_BACKOFF`), names
already given stay. An unreachable server at start-up is still a one-line error (`open_gallery` in setup).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from app.config import Settings
from app.errors import UserError
from app.pipeline.cpu_meter import ModelCpu
from app.pipeline.messages import EmbedRequest, EmbedResult
from app.pipeline.reconnect import GALLERY_BACKOFF, BackoffPolicy, RetrySchedule
from app.pipeline.stage_runner import Capabilities
from app.recognition.identity_config import IdentityConfig

if TYPE_CHECKING:
    from app.inference.torch_backend import TorchModel

log = logging.getLogger(__name__)

GALLERY_K = 2  # the runner-up person lets the identity manager abstain on near ties
MAX_FACES = 64  # faces per model call in the worker: R100 fp16 runs 10k faces/s at batch 256 on an H200
TORCH_WARM_BATCHES = (1, 2, 4, 8, 16, 32, 64)  # CUDA graphs captured at start, not mid-run


class FaceEmbedder:
    """The embedder model, its spec, and the gallery: chips -> embeddings -> matches."""

    def __init__(
        self,
        settings: Settings,
        threads: int | None = None,
        gallery_backoff: BackoffPolicy = GALLERY_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.threads = settings.threads if threads is None else threads
        self.gallery_backoff = gallery_backoff
        self.clock = clock  # paces gallery retries; tests pass a frame clock so the pacing is deterministic
        self.gallery: Any = None
        self.gallery_outages = 0
        self.gallery_down: RetrySchedule | None = None  # set while the gallery server is not answering
        self._torch: TorchModel | None = None  # the model, when it runs on the torch backend

    def setup(self, warm_batches: tuple[int, ...] | None = None) -> dict[str, object]:
        from app.gallery import gallery_location, open_gallery
        from app.recognition.embedder import load_embedder

        s = self.settings
        if s.backend == "torch":
            from app.inference.cuda_driver import set_gpu_wait

            set_gpu_wait(s.gpu_wait)  # before load_embedder makes the CUDA context
        self.model, spec = load_embedder(s, self.threads)
        self.spec = spec
        if s.backend == "torch":
            from app.inference.torch_backend import TorchModel

            # Chips cross as bytes and are normalised on the device (TorchModel.run_images).
            self._torch = self.model if isinstance(self.model, TorchModel) else None
        self.gallery = open_gallery(s, spec)
        info = self.gallery.info()
        if info.persons == 0:
            log.warning("the gallery at %s is empty: every face will be unknown", gallery_location(s))
        w, h = spec.input_size
        # Warm-up: the first run of a session is slow, and the torch backend captures a CUDA graph per batch
        # bucket on first use, which would stall a frame mid-run.
        if warm_batches is None:
            warm_batches = (1, 2, 4, 8, 16) if s.backend == "torch" else (1,)
        for batch in warm_batches:
            self.embed(np.zeros((batch, h, w, 3), np.uint8))
        return {
            "embedder": spec.model_id,
            "threshold": spec.threshold,
            "gallery": gallery_location(s),
            "persons": info.persons,
            "person_names": sorted(self.gallery.list()),  # Home Assistant discovery: a sensor per person
            "embeddings": info.count,
        }

    def paused(self) -> bool:
        """The gallery is away and its next retry is not due: spend no embedding now."""
        return self.gallery_down is not None and not self.gallery_down.due()

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(N,h,w,3) chips in the spec's channel order -> (N,dim) embeddings, in the model's batches."""
        if not len(chips):
            return np.zeros((0, self.spec.dim), np.float32)
        if self._torch is not None:
            return self.spec.postprocess(self._torch.run_images(chips, self.spec.mean, self.spec.std)[0])
        return self.spec.postprocess(self.model.run(self.spec.preprocess(chips))[0])

    def search(self, vectors: np.ndarray) -> list | None:
        """Gallery matches per vector; None while the gallery server is not answering (retried later)."""
        try:
            found = self.gallery.search(vectors, k=GALLERY_K)
        except UserError as exc:  # mid-run every gallery error degrades: the server may come back
            down = self.gallery_down
            if down is None:
                down = self.gallery_down = RetrySchedule(self.gallery_backoff, self.clock)
                self.gallery_outages += 1
                log.warning("gallery unavailable (%s); tracking goes on without new names, retrying", exc)
            delay = down.failed()
            log.debug("gallery search failed %d times; next try in %.2f s", down.failures, delay)
            return None
        if self.gallery_down is not None:
            log.warning("gallery available again after %.1f s", self.gallery_down.elapsed_s())
            self.gallery_down = None
        return found

    def close(self) -> None:
        if self.gallery is not None:
            self.gallery.close()
            self.gallery = None


class EmbedStage:
    """The shared embedding worker: batched embedding and gallery search for every stream's tracks."""

    name = "embed"
    capabilities = Capabilities(service=True)

    def __init__(
        self,
        settings: Settings,
        requests: Any,
        results: Any | list[Any],
        threads: int | None = None,
        max_faces: int = MAX_FACES,
        sightings: Any = None,
        lanes: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.embedder = FaceEmbedder(settings, threads)
        # EMBED_GATHER_MS: after the first request, wait up to this long for more to share its model call.
        self.gather_s = settings.embed_gather_ms / 1000.0
        self.clock = clock
        self.identity_config = IdentityConfig()  # the tracking stages' (their template arithmetic)
        self.requests = requests  # queue of EmbedRequest (from recognize)
        # Queues of EmbedResult, one per tracking stage (EmbedRequest.reply_to picks it).
        self.results = results if isinstance(results, list) else [results]
        self.max_faces = max(1, int(max_faces))
        self.batches = 0
        self.faces = 0
        self.model_cpu = ModelCpu()  # CPU inside the embedder calls (the runner logs it against the loop's)
        # KEEP_UNKNOWN: the unknown-face store, held here for every tracking process (`lanes` of them send
        # their finished sightings on `sightings`, each ending with LaneDone).
        self.sightings = sightings
        self.lanes = lanes
        self.lanes_done = 0
        self.unknowns: Any = None

    def setup(self) -> dict[str, object]:
        import cv2

        cv2.setNumThreads(1)
        torch = self.embedder.settings.backend == "torch"
        warm = tuple(b for b in TORCH_WARM_BATCHES if b <= self.max_faces) if torch else None
        info = self.embedder.setup(warm)
        if self.sightings is not None:
            from app.recognition.unknowns import start_writer

            self.unknowns = start_writer(self.embedder.settings, self.embedder.spec)
        return info

    def serve(self, timeout: float) -> None:
        """Answer every request queued now (waiting up to `timeout` for the first, then up to `gather_s`
        for more), in one model call."""
        self._take_sightings()
        try:
            first = self.requests.get(timeout=timeout)
        except queue.Empty:
            return
        batch: list[EmbedRequest] = [first]
        faces = len(first.track_ids)
        deadline = self.clock() + self.gather_s if self.gather_s > 0 else None
        while faces < self.max_faces:
            remaining = 0.0 if deadline is None else deadline - self.clock()
            try:
                msg = self.requests.get(timeout=remaining) if remaining > 0 else self.requests.get_nowait()
            except queue.Empty:
                break
            batch.append(msg)
            faces += len(msg.track_ids)
        for request, result in zip(batch, self.answer(batch), strict=True):
            self.results[request.reply_to].put(result)

    def answer(self, batch: list[EmbedRequest]) -> list[EmbedResult]:
        """The results of a batch of requests: one model call and one gallery search for all their faces."""
        embedder = self.embedder
        if embedder.paused():
            vectors: np.ndarray | None = None
            found = None
        else:
            chips = np.concatenate([r.chips for r in batch]) if len(batch) > 1 else batch[0].chips
            with self.model_cpu.measure():
                vectors = embedder.embed(chips)
            found = embedder.search(self._queries(batch, vectors)) if len(vectors) else []
            self.batches += 1
            self.faces += len(vectors)
        unavailable = embedder.gallery_down is not None
        out = []
        start = 0
        for r in batch:
            n = len(r.track_ids)
            if vectors is None or found is None:
                part, matches = np.zeros((0, 0), np.float32), None
            else:
                part, matches = vectors[start : start + n], list(found[start : start + n])
            start += n
            out.append(EmbedResult(r.request, r.stream, r.frame, r.track_ids, r.qualities, part, matches,
                                   unavailable))  # fmt: skip
        return out

    def _queries(self, batch: list[EmbedRequest], vectors: np.ndarray) -> np.ndarray:
        """What to search with: each track's template with its new embedding folded in (as the tracking
        stage would search in-process), or the embedding itself for a track with no template yet."""
        from app.recognition.identity import templates_with

        spec, floor = self.embedder.spec, self.identity_config.quality_floor
        kept: list[tuple[np.ndarray, np.ndarray] | None] = []
        qualities: list[float] = []
        for request in batch:
            parts = request.templates or [None] * len(request.track_ids)
            kept += [
                None if p is None else (p.qualities, p.vectors)
                for p, _ in zip(parts, request.qualities, strict=True)
            ]
            qualities += request.qualities
        # All the batch's templates at once: numpy's per-call cost on tiny arrays was most of the time.
        return templates_with(kept, vectors, qualities, spec.threshold, spec.metric, floor)[0]

    def _take_sightings(self, wait_s: float = 0.0) -> None:
        """Hand the sightings queued now to the store's writer; with `wait_s`, wait that long in all for the
        lanes that have not said LaneDone."""
        if self.sightings is None:
            return
        from app.recognition.unknowns import LaneDone

        deadline = time.monotonic() + wait_s
        while True:
            remaining = deadline - time.monotonic()
            waiting = wait_s > 0 and self.lanes_done < self.lanes and remaining > 0
            try:
                msg = self.sightings.get(timeout=remaining) if waiting else self.sightings.get_nowait()
            except queue.Empty:
                if waiting:
                    continue
                return
            if isinstance(msg, LaneDone):
                self.lanes_done += 1
            elif self.unknowns is not None:
                self.unknowns.submit([msg])

    def close(self) -> None:
        if self.sightings is not None:
            from app.recognition.unknowns import CLOSE_TIMEOUT_S

            # The lanes' last sightings (their open tracks, finished as they close) come after the stop.
            self._take_sightings(wait_s=CLOSE_TIMEOUT_S)
            if self.lanes_done < self.lanes:
                log.warning("unknowns: %d tracking process(es) ended without their last sightings",
                            self.lanes - self.lanes_done)  # fmt: skip
        if self.unknowns is not None:
            self.unknowns.close()
            self.unknowns = None
        self.embedder.close()
        for q in self.results:  # answers nobody will read after the run: do not wait for them at exit
            if hasattr(q, "cancel_join_thread"):
                q.cancel_join_thread()
        if self.batches:
            log.info("embedding: %d faces in %d batches (%.1f a batch)", self.faces, self.batches,
                     self.faces / self.batches)  # fmt: skip
