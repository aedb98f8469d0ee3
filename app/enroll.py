"""Gallery helper CLI: enroll, list, remove and identify faces.

    python -m app.enroll add NAME PATH...          images or folders; one face per image
    python -m app.enroll list [--json]
    python -m app.enroll remove NAME
    python -m app.enroll identify IMAGE... [--json] [--output annotated.jpg]
    python -m app.enroll verify                    read every embedding back; names a damaged part
    python -m app.enroll backup DIR                a verified copy of the gallery in the new folder DIR
    python -m app.enroll restore DIR               replace the gallery by the backup in DIR
    python -m app.enroll unknowns list|show|name|forget ...   review the unknown faces runs kept
    python -m app.enroll show|rename|export|import ...         manage the face library
(the library commands live in app.recognition.library_cli)

Options such as --gallery PATH override settings from the environment and `.env` (or the file --env-file
names), before or after the command; each means what it means in `python -m app.main` (see `app.config`).
Errors print one line, `error: ...`, on stderr and exit with status 2; the gallery is then unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli_exit import OneLineArgumentParser, run_cli
from app.config import GALLERY_SETTINGS, MODEL_SETTINGS, Settings, add_setting_flags, settings_from_flags
from app.errors import UserError
from app.gallery import gallery_location, open_gallery
from app.gallery.base import check_name
from app.recognition import library_cli

if TYPE_CHECKING:
    from app.gallery.backup import BackupSummary
    from app.recognition.analyzer import FaceAnalyzer

# The settings this CLI takes as options, before or after the command; `app.config.setting_flag` makes each
# option, so one shared with `app.main` means the same there. Values go to load_settings as text.
SETTINGS = (*GALLERY_SETTINGS, *MODEL_SETTINGS, "log_level")


def _add_setting_options(parser: argparse.ArgumentParser) -> None:
    add_setting_flags(parser, SETTINGS)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m app.enroll", description="Enroll, list, remove and identify faces in the gallery."
    )
    _add_setting_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = commands.add_parser("add", help="enroll a person from images or folders (one face per image)")
    add.add_argument("name", help="the person's name")
    add.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="images or folders of images")

    list_ = commands.add_parser("list", help="list enrolled persons and their number of embeddings")
    list_.add_argument("--json", action="store_true", help="print one JSON document")

    remove = commands.add_parser("remove", help="remove a person and all their embeddings")
    remove.add_argument("name")

    identify = commands.add_parser("identify", help="name the faces in images")
    identify.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="images or folders of images")
    identify.add_argument("--json", action="store_true", help="print one JSON document")
    identify.add_argument(
        "--output", type=Path, help="write an annotated copy here (several images: NAME-<image>.jpg)"
    )
    identify.add_argument("--overwrite", action="store_true", help="replace --output files that exist")

    verify = commands.add_parser("verify", help="check every embedding of the gallery (exit 2 if damaged)")
    backup = commands.add_parser("backup", help="write a verified copy of the gallery to a new folder")
    backup.add_argument(
        "dir", type=Path, metavar="DIR", help="a folder that does not exist yet (or is empty)"
    )
    restore = commands.add_parser("restore", help="replace the gallery by a backup (even a damaged gallery)")
    restore.add_argument("dir", type=Path, metavar="DIR", help="a folder written by `backup`")

    for sub in (verify, backup, restore):
        sub.add_argument("--json", action="store_true", help="print one JSON document")
    for sub in (add, list_, remove, identify, verify, backup, restore):
        _add_setting_options(sub)
    library_cli.extend_parsers(add, list_, remove)
    COMMANDS.update(library_cli.register(commands, _add_setting_options))
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    return settings_from_flags(args, SETTINGS)


def _analyzer(settings: Settings) -> FaceAnalyzer:
    # imported here: list and remove need no models, and onnxruntime is slow to import
    from app.recognition.analyzer import FaceAnalyzer

    return FaceAnalyzer(settings)


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    from app.recognition.enrollment import collect_images, enroll, enrollment_notes

    check_name(args.name)  # before anything loads, for every form of add
    if args.video is not None:
        return library_cli.cmd_add_video(args, settings)
    if not args.paths:
        raise UserError("add needs images or folders, or --video FILE")
    if args.json:
        return library_cli.cmd_add_json(args, settings, _analyzer)
    collect_images(args.paths)  # a bad name or a missing path fails before the models load
    analyzer = _analyzer(settings)
    with closing(open_gallery(settings, analyzer.spec)) as gallery:
        result = enroll(analyzer, gallery, args.name, args.paths)
        listing = gallery.list()
    for skipped in result.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    print(
        f"enrolled {result.name}: {result.added} embedding(s) from {len(result.sources)} image(s); "
        f"{result.name} now has {listing.get(result.name, 0)}, the gallery {len(listing)} person(s)"
    )
    print("\n".join(enrollment_notes(result)))
    _update_discovery(settings, added=[result.name], removed=[])
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    if args.details:
        return library_cli.cmd_list_details(args, settings)
    with closing(open_gallery(settings, None)) as gallery:
        info = gallery.info()
        persons = gallery.list()
    where = gallery_location(settings)
    if args.json:
        doc = {
            "gallery": where,
            "model_id": info.model_id or None,
            "dim": info.dim or None,
            "metric": info.metric or None,
            "count": info.count,
            "persons": persons,
        }
        print(json.dumps(doc, indent=2))
        return 0
    if not persons:
        print(f"gallery {where} is empty")
        return 0
    print(
        f"gallery {where} ({info.model_id}, {info.dim}-d {info.metric}): "
        f"{len(persons)} person(s), {info.count} embedding(s)"
    )
    width = max(len(name) for name in persons)
    for name, count in persons.items():
        print(f"  {name:<{width}}  {count}")
    return 0


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    check_name(args.name)
    if args.embedding is not None:
        return library_cli.cmd_remove_embedding(args, settings)
    if args.json:
        return library_cli.cmd_remove_json(args, settings)
    with closing(open_gallery(settings, None)) as gallery:
        removed = gallery.remove(args.name)
        if not removed:
            known = ", ".join(gallery.list()) or "none"
            raise UserError(
                f"no person named {args.name!r} in gallery {gallery_location(settings)} (enrolled: {known})"
            )
    print(f"removed {args.name}: {removed} embedding(s)")
    _update_discovery(settings, added=[], removed=[args.name])
    return 0


def _update_discovery(settings: Settings, added: list[str], removed: list[str]) -> None:
    """With MQTT configured, Home Assistant sees the person appear or go now, not at the next run."""
    from app.integrations.mqtt import MqttConfig, publish_person_discovery

    config = MqttConfig.from_settings(settings)
    if config is not None:
        publish_person_discovery(config, added, removed)


def cmd_identify(args: argparse.Namespace, settings: Settings) -> int:
    from app.recognition.enrollment import collect_images, identify_paths

    images = collect_images(args.images)
    if args.output is not None:  # never over an input image or another output, before the models load
        from app.output_paths import check_output_paths
        from app.recognition.enrollment import annotated_output_paths

        outputs = annotated_output_paths(args.output, images)
        check_output_paths([("image", p) for p in images], [("--output", o) for o in outputs], args.overwrite)
    analyzer = _analyzer(settings)
    threshold = analyzer.spec.threshold
    with closing(open_gallery(settings, analyzer.spec)) as gallery:
        empty = not gallery.list()
        results = identify_paths(analyzer, gallery, args.images, threshold, output=args.output)
    if empty:
        print(
            f"note: gallery {gallery_location(settings)} is empty, so every face is unknown", file=sys.stderr
        )
    if args.json:
        doc: dict[str, Any] = {
            "gallery": gallery_location(settings),
            "model_id": analyzer.spec.model_id,
            "metric": analyzer.spec.metric,
            "threshold": threshold,
            "images": [
                {
                    "path": str(item.path),
                    "width": item.width,
                    "height": item.height,
                    "output": str(item.output) if item.output else None,
                    "faces": [
                        {
                            "box": [round(v, 1) for v in face.box],
                            "score": round(face.score, 4),
                            "name": face.name,
                            "similarity": None if face.similarity is None else round(face.similarity, 4),
                        }
                        for face in item.faces
                    ],
                }
                for item in results
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    for item in results:
        print(f"{item.path}: {len(item.faces)} face(s)" + (f" -> {item.output}" if item.output else ""))
        for face in item.faces:
            box = ",".join(str(round(v)) for v in face.box)
            similarity = "-" if face.similarity is None else f"{face.similarity:.3f}"
            print(f"  {face.name:<20} similarity {similarity}  box {box}")
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from app.gallery.backup import verify_gallery

    report = verify_gallery(settings)
    doc = {"gallery": report.where, "intact": True, "count": report.count, "persons": report.persons,
           "checksum": report.checksum}  # fmt: skip
    return library_cli.emit(args, doc, [report.line()])


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from app.gallery.backup import backup_gallery

    done = backup_gallery(settings, args.dir)
    return _emit_copy(args, settings, done, f"backed up {gallery_location(settings)} to {done.folder}")


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from app.gallery.backup import restore_gallery

    done = restore_gallery(settings, args.dir)
    return _emit_copy(args, settings, done, f"restored {gallery_location(settings)} from {done.folder}")


def _emit_copy(args: argparse.Namespace, settings: Settings, done: BackupSummary, line: str) -> int:
    """The report of a backup or a restore: the gallery, the backup folder and what was copied."""
    doc = {"gallery": gallery_location(settings), "backup": str(done.folder), "count": done.count,
           "persons": done.persons}  # fmt: skip
    return library_cli.emit(args, doc, [f"{line}: {done.describe()}"])


COMMANDS = {
    "add": cmd_add,
    "list": cmd_list,
    "remove": cmd_remove,
    "identify": cmd_identify,
    "verify": cmd_verify,
    "backup": cmd_backup,
    "restore": cmd_restore,
}


def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    return COMMANDS[args.command](args, settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _run(args), interrupted_message="interrupted")


if __name__ == "__main__":
    sys.exit(main())
