"""Choose the match threshold from your own photos: the trade-off table and the threshold for a target.

Lay the photos out one sub-folder per person (DIR/<person>/*.jpg, or DIR/<set>/<person>/*.jpg); include
people who will NOT be enrolled, they play the strangers. Same protocol as eval_identification.py
(app/recognition/calibration.py): seeded random splits, half the people enrolled with K photos, the rest
strangers; for each K the lowest threshold accepting at most --far of the pooled strangers, and the
recommendation is the strictest of them (more enrolled photos give a stranger more chances).

    .venv/bin/python testbench/calibrate.py --images ../shared/data/identities --far 0.01
    MATCH_THRESHOLD=<threshold printed> .venv/bin/python -m app.main ...

Prints the table (identified / strangers accepted / wrong person, per K and threshold), then one JSON line
last: threshold (recommended), far_target, enroll (the Ks), and per K the rates at the recommended threshold.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.errors import UserError  # noqa: E402
from testbench.eval_identification import build_parser, load_faces  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__.splitlines()[0])
    parser.set_defaults(enroll=None)
    parser.add_argument("--far", type=float, default=0.01, help="strangers-accepted target (share)")
    parser.add_argument("--step", type=float, default=0.01, help="threshold step of the table")
    args = parser.parse_args(argv)
    ks = [args.enroll] if args.enroll is not None else [1, 3]
    from app.recognition.calibration import split_scores, threshold_at_far, trade_off

    try:
        if not 0.0 < args.far < 1.0:
            raise UserError(f"--far must be a share between 0 and 1 (0.01 = 1 %), got {args.far}")
        if not 0.0 < args.step <= 0.1:
            raise UserError(f"--step must be in (0, 0.1], got {args.step}")
        faces, spec = load_faces(args)
        scores = {k: split_scores(faces, k, args.splits, args.seed, spec.metric) for k in ks}
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    at_target = {k: threshold_at_far(s.stranger_best, args.far) for k, s in scores.items()}
    # Round up to the table's precision so the recommendation never accepts more than the target.
    recommended = math.ceil(max(at_target.values()) * 1000 - 1e-9) / 1000
    lo = math.floor((min(at_target.values()) - 0.06) / args.step) * args.step
    hi = max(at_target.values()) + 0.06
    thresholds = sorted({round(t, 4) for t in np.arange(lo, hi, args.step)} | {recommended, spec.threshold})
    print(
        f"model {spec.model_id} ({spec.metric}); {len(faces.people)} faces of {len(set(faces.people))} people"
    )
    print(f"current threshold {spec.threshold:.3f}; columns per K: identified / strangers accepted / wrong")
    print("threshold  " + "  ".join(f"{f'K={k}':^24}" for k in ks))
    tables = {k: {row.threshold: row for row in trade_off(s, thresholds)} for k, s in scores.items()}
    for t in thresholds:
        marks = " <- recommended" if t == recommended else (" <- current" if t == spec.threshold else "")
        cells = "  ".join(
            f"{r.identified:7.3f} /{r.strangers_accepted:7.4f} /{r.wrong_person:6.4f}"
            for r in (tables[k][t] for k in ks)
        )
        print(f"{t:9.3f}  {cells}{marks}")
    for k, t in at_target.items():
        print(f"K={k}: strangers accepted <= {args.far:g} from threshold {t:.4f}")
    print(f"recommended threshold {recommended:.3f} (set MATCH_THRESHOLD={recommended:.3f})")
    line: dict[str, object] = {
        "threshold": recommended,
        "far_target": args.far,
        "enroll": ks,
        "current_threshold": spec.threshold,
        "splits": args.splits,
        "seed": args.seed,
        "people": len(set(faces.people)),
        "images": len(faces.people),
        "model_id": spec.model_id,
    }
    for k in ks:
        row = tables[k][recommended]
        line[f"identified_k{k}"] = round(row.identified, 4)
        line[f"strangers_accepted_k{k}"] = round(row.strangers_accepted, 4)
        line[f"threshold_at_far_k{k}"] = round(at_target[k], 4)
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
