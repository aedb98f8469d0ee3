"""Typed settings of the per-track identity voting (app.recognition.identity): when to embed, how to vote."""

from __future__ import annotations

from dataclasses import dataclass, fields

from app.recognition.quality import QualityConfig


@dataclass(frozen=True)
class IdentityConfig:
    """When to embed a track's face and how much agreeing evidence names it (see app.recognition.identity)."""

    # -- when to embed --
    pending_interval: int = 2  # frames between embeddings while a track is still undecided
    max_pending_embeddings: int = 8  # after that many, an undecided track falls back to refresh_interval
    refresh_interval: int = 45  # frames between re-embeddings of a track decided as a known person
    # An "unknown" decision is revisited sooner: it is often an enrolled person's first poor view (on the
    # hamilton clip Lin's first embeddings score 0.41-0.43 against a 0.46+ threshold); strangers are few, so
    # the cost stays small. 10 frames: Lin named on 107/129 large-face frames instead of 27, no false names.
    unknown_refresh_interval: int = 10
    min_embed_gap: int = 5  # a clearly better view is embedded at most this often
    better_quality_ratio: float = 1.3  # "clearly better": quality above the best embedded one times this
    min_face_size: float = 16.0  # px (box height); smaller faces are not embedded at all
    min_inside: float = 0.85  # faces with less of their box inside the frame are not embedded (bad vectors)
    cross_iou: float = 0.2  # overlapping another track this much marks the identity for re-checking
    clear_iou: float = 0.05  # ... which happens once the overlap has dropped below this
    # A decided track standing this much (IoU) on the spot where a track seen on the last frame vanished
    # may have been given that face by the tracker: its label is withheld until its face is checked again.
    takeover_iou: float = 0.3
    # -- face quality (each term in 0..1; quality = size * frontal * sharpness terms) --
    reference_face_size: float = QualityConfig.reference_size  # px face height where the size term saturates
    reference_sharpness: float = QualityConfig.reference_sharpness  # ... and the sharpness term (64 px crop)
    quality_floor: float = 0.05  # smallest vote weight, so even a poor view counts a little
    # -- voting --
    vote_decay: float = 0.85  # old votes fade by this per new embedding, so the label can recover
    min_evidence: float = 1.2  # weighted votes a label needs before it is given
    decision_margin: float = 0.8  # ... and its lead over the runner-up (another person or unknown)
    switch_margin: float = 1.5  # lead needed to change a label once given (hysteresis)
    match_margin: float = 0.03  # a match closer than this to a different person abstains (similarity units)
    confidence_band: float = 0.1  # votes just above threshold weigh less; full weight at threshold + band
    min_vote_strength: float = 0.25  # the weight factor of a vote exactly at threshold
    # A pending track is named on one embedding of quality >= fast_quality scoring >= threshold +
    # fast_margin (with the match_margin lead over anyone else): a clear view needs no second opinion.
    fast_quality: float = 0.6
    fast_margin: float = 0.06
    # ... or on steady_votes embeddings in a row, whatever their quality, each matching the same person by
    # threshold + fast_margin (and match_margin ahead of anyone else): a small face's votes weigh too
    # little to reach min_evidence (a 35 px face matched at 0.58-0.59 against 0.475, lead 0.15, for 12
    # embeddings stayed unnamed), but agreeing strong matches on every view are evidence enough.
    steady_votes: int = 4
    # ... or on one embedding of any quality scoring >= threshold + sure_margin, sure_lead ahead of anyone
    # else: a small face matched that well is its person (a 62 px face at 0.666, 0.41 ahead, waited for 4
    # embeddings). Strangers' embeddings on the hard scenario (3 seeds, dlib at 0.425) score <= 0.457 (a
    # look-alike relative of an enrolled person, 0.19 ahead, in one drawing of it; 0.428 as it is drawn
    # now); on photos 0.425 accepts 1% of strangers. A template of n views (the query: its kept embeddings
    # and the new one) is as sure at sure_margin / sqrt(n) and sure_lead / sqrt(n): averaging n views leaves
    # about 1/sqrt(n) of one view's noise (2 views: 0.071, 4: 0.05, 13: 0.028). Hamilton: Lin on stage (54
    # px) named on frame 6 instead of 9, template 0.481 after 4 views, 0.15 ahead. Strangers' templates on
    # the hard scenario (seeds 0-8, both trackers): the smaller of margin and lead, times sqrt(n), at most
    # 0.041 where this asks 0.1 (0.080 for the one look-alike the consistent run below names on seed 7).
    sure_margin: float = 0.1
    sure_lead: float = 0.1
    # ... or on consistent_votes embeddings in a row each matching the same person above threshold,
    # consistent_lead ahead of anyone else, by threshold + consistent_margin on average (0 turns it off): a
    # track whose template has settled just above threshold, whose light votes fade before they add up.
    # The run's mean, not each view, has to clear the margin: hard seed 1's stuart (template 0.425-0.451,
    # 0.06-0.10 ahead, 125 frames) was never named, each run of 6 broken by one view at 0.433; named so,
    # seed 1 0.835 -> 0.900. Strangers' templates (hard scenario, seeds 0-8, both trackers): 6 in a row
    # above threshold 0.05 ahead only for seed 7's look-alike (0.444-0.453, which each view at threshold +
    # 0.01 names too); elsewhere their 6-view means stay <= 0.420 and minima <= 0.409: hence 6, not fewer
    # (4 or 5 named 0.001 more when each view had to clear the margin). Margin 0.01 rather than 0.02:
    # enrolled named 0.833 -> 0.844 (seed 2's templates settle at 0.435-0.445), 0 strangers named.
    consistent_votes: int = 6
    consistent_margin: float = 0.01
    consistent_lead: float = 0.05
    # -- memory --
    max_embeddings: int = 12  # embeddings kept per track for its aggregate (best quality first)
    relink_window: int = 300  # frames a vanished track is remembered (re-found id or re-linked by embedding)
    # Re-linking needs similarity >= threshold + relink_margin: "the same face moments ago", stricter than
    # "the same person". dlib on the demo: the same face back after 4 s 0.73; another photo of the same
    # person 0.56-0.59; strangers <= 0.30 (threshold 0.46-0.47).
    relink_margin: float = 0.2
    relink_attempts: int = 3  # a new track's first embeddings that are tried against vanished tracks

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0:
                raise ValueError(f"IdentityConfig.{f.name} must be >= 0, got {value}")
        if not 0.0 < self.vote_decay <= 1.0:
            raise ValueError(f"vote_decay must be in (0, 1], got {self.vote_decay}")
        if self.max_embeddings < 1:
            raise ValueError("max_embeddings must be >= 1")
        if not 0.0 < self.takeover_iou <= 1.0:
            raise ValueError(f"takeover_iou must be in (0, 1], got {self.takeover_iou}")
        if self.steady_votes < 1:
            raise ValueError("steady_votes must be >= 1")
