"""Write a verification pairs CSV (file_x,file_y,Decision) from photos with one known identity each.

Default source: ../shared/data/faces/knn_examples: train/<person>/* plus the single-person test photos
(multi-person photos are left out: the evaluation uses the largest face, which has no single label there).
`--extras` adds the set's other distinct single-face photos (a third Alex Lacamoire photo, Lin-Manuel Miranda,
a third Obama photo); resized or cropped copies of photos already in the set are left out on purpose, as they
would make positives trivially easy.

    .venv/bin/python testbench/make_pairs.py --images ../shared/data/faces --out data/pairs_knn.csv
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# knn_examples/test photos that show exactly one person, with who it is.
SINGLE_PERSON_TEST = {
    "knn_examples/test/alex_lacamoire1.jpg": "alex_lacamoire",
    "knn_examples/test/johnsnow_test1.jpg": "kit_harington",
    "knn_examples/test/obama1.jpg": "obama",
}
EXTRAS = {
    "alex-lacamoire.png": "alex_lacamoire",
    "lin-manuel-miranda.png": "lin_manuel_miranda",
    "edge/obama3.jpg": "obama",
}


def labelled_images(images_dir: Path, extras: bool = False) -> list[tuple[str, str]]:
    """(relative path, identity) for every usable photo under `images_dir`, sorted by path."""
    items: dict[str, str] = {}
    train = images_dir / "knn_examples" / "train"
    for person_dir in sorted(p for p in train.iterdir() if p.is_dir()):
        for image in sorted(person_dir.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                items[image.relative_to(images_dir).as_posix()] = person_dir.name
    chosen = dict(SINGLE_PERSON_TEST)
    if extras:
        chosen.update(EXTRAS)
    for rel, person in chosen.items():
        if (images_dir / rel).is_file():
            items[rel] = person
    return sorted(items.items())


def all_pairs(items: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    return [(a, b, "Yes" if pa == pb else "No") for (a, pa), (b, pb) in itertools.combinations(items, 2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("../shared/data/faces"), help="face data folder")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--extras", action="store_true", help="add the other distinct single-face photos")
    args = parser.parse_args(argv)
    if not (args.images / "knn_examples" / "train").is_dir():
        print(
            f"error: {args.images}/knn_examples/train not found; pass --images DIR of the face data",
            file=sys.stderr,
        )
        return 2
    items = labelled_images(args.images, args.extras)
    pairs = all_pairs(items)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_x", "file_y", "Decision"])
        writer.writerows(pairs)
    positives = sum(p[2] == "Yes" for p in pairs)
    counts = f"{len(pairs)} pairs ({positives} same, {len(pairs) - positives} different)"
    print(f"{len(items)} images, {counts} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
