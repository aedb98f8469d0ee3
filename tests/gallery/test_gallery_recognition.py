"""Enrolment and identification with the real models and faces, on both gallery engines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from app.config import Settings
from app.errors import UserError
from app.gallery import Gallery, open_gallery
from app.recognition.analyzer import FaceAnalyzer
from app.recognition.enrollment import UNKNOWN, enroll, identify_paths
from app.vision.image_io import read_image
from tests.support.shared_data import SHARED_FACES

REPO = Path(__file__).resolve().parents[2]
TRAIN = SHARED_FACES / "knn_examples" / "train"
TEST = SHARED_FACES / "knn_examples" / "test"
PEOPLE = ["alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"]
# Enrolled persons in each test photo; any other face there must stay unknown.
EXPECTED = {
    "alex_lacamoire1.jpg": ["alex_lacamoire"],
    "johnsnow_test1.jpg": ["kit_harington"],
    "kit_with_rose.jpg": ["kit_harington", "rose_leslie"],
    "obama1.jpg": ["obama"],
    "obama_and_biden.jpg": ["biden", "obama"],
}


def base_settings(tmp: Path) -> Settings:
    return Settings(
        detector_model=REPO / "checkpoints" / "retinaface_mnet025.onnx",
        embedder_model=REPO / "checkpoints" / "dlib_resnet.onnx",
        qdrant_path=tmp / "gallery",
    )


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory: pytest.TempPathFactory) -> FaceAnalyzer:
    return FaceAnalyzer(base_settings(tmp_path_factory.mktemp("unused")))


@pytest.fixture(scope="module", params=["edge", "server"])
def enrolled(
    request: pytest.FixtureRequest, analyzer: FaceAnalyzer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gallery]:
    tmp = tmp_path_factory.mktemp(request.param)
    client = QdrantClient(path=str(tmp / "qdrant-local")) if request.param == "server" else None
    gallery = open_gallery(base_settings(tmp), analyzer.spec, client=client)
    for person in PEOPLE:
        result = enroll(analyzer, gallery, person, [TRAIN / person])
        assert result.added == len(list((TRAIN / person).iterdir())) and not result.skipped
    yield gallery
    gallery.close()


def names_of(analyzer: FaceAnalyzer, gallery: Gallery, path: Path) -> list[str]:
    (result,) = identify_paths(analyzer, gallery, [path], analyzer.spec.threshold)
    return [face.name for face in result.faces]


def test_enrolled_gallery_lists_five_people(enrolled: Gallery, analyzer: FaceAnalyzer) -> None:
    assert enrolled.list() == {
        "alex_lacamoire": 1,
        "biden": 2,
        "kit_harington": 2,
        "obama": 2,
        "rose_leslie": 2,
    }
    info = enrolled.info()
    assert (info.model_id, info.dim, info.metric, info.persons, info.count) == (
        analyzer.spec.model_id,
        128,
        "euclidean",
        5,
        9,
    )


def test_every_enrolled_face_in_test_photos_is_named(enrolled: Gallery, analyzer: FaceAnalyzer) -> None:
    results = identify_paths(analyzer, enrolled, [TEST], analyzer.spec.threshold)
    assert sorted(r.path.name for r in results) == sorted(EXPECTED)
    for result in results:
        names = [face.name for face in result.faces]
        known = sorted(name for name in names if name != UNKNOWN)
        assert known == EXPECTED[result.path.name], (result.path.name, names)
        for face in result.faces:
            assert (face.similarity >= analyzer.spec.threshold) == face.known
            x1, y1, x2, y2 = face.box
            assert 0 <= x1 < x2 <= result.width and 0 <= y1 < y2 <= result.height


def test_two_people_and_obama_at_every_resolution(enrolled: Gallery, analyzer: FaceAnalyzer) -> None:
    assert len(names_of(analyzer, enrolled, SHARED_FACES / "two_people.jpg")) == 2
    for size in ("240p", "480p", "720p", "1080p"):
        assert names_of(analyzer, enrolled, SHARED_FACES / f"obama-{size}.jpg") == ["obama"], size


def test_edge_images_are_processed(enrolled: Gallery, analyzer: FaceAnalyzer) -> None:
    for name in ("32bit.png", "obama_partial_face.jpg", "obama_partial_face2.jpg"):
        names = names_of(analyzer, enrolled, SHARED_FACES / "edge" / name)
        assert len(names) <= 1 and set(names) <= {"obama", UNKNOWN}, (name, names)
    assert names_of(analyzer, enrolled, SHARED_FACES / "edge" / "32bit.png") == ["obama"]


def test_stranger_is_unknown_not_the_nearest_person(enrolled: Gallery, analyzer: FaceAnalyzer) -> None:
    image = read_image(SHARED_FACES / "lin-manuel-miranda.png")
    (result,) = identify_paths(analyzer, enrolled, [SHARED_FACES / "lin-manuel-miranda.png"], 0.4)
    (face,) = result.faces
    assert face.name == UNKNOWN and face.similarity is not None and face.similarity < 0.4
    # The same face is "named" only when the threshold is lowered below its best similarity.
    embedding = analyzer.embed_photo(image, analyzer.detect_photo(image).landmarks)  # as identify does
    (best,) = enrolled.search(embedding, k=1)[0]
    assert best.similarity == pytest.approx(face.similarity, abs=1e-6)
    (lowered,) = identify_paths(
        analyzer, enrolled, [SHARED_FACES / "lin-manuel-miranda.png"], best.similarity
    )
    assert lowered.faces[0].name == best.name


def test_images_without_exactly_one_face_are_skipped(analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    gallery = open_gallery(base_settings(tmp_path), analyzer.spec)
    group = TEST / "obama_and_biden.jpg"
    result = enroll(analyzer, gallery, "obama", [group, SHARED_FACES / "obama-480p.jpg"])
    assert result.added == 1 and [s.path for s in result.skipped] == [group] and result.skipped[0].faces == 3
    before = gallery.vectors("obama")
    with pytest.raises(UserError, match="holds exactly one face"):
        enroll(analyzer, gallery, "group", [group, TEST / "kit_with_rose.jpg"])
    with pytest.raises(UserError, match="not a readable image"):
        enroll(analyzer, gallery, "obama", [SHARED_FACES / "obama-240p.jpg", SHARED_FACES / "README.md"])
    assert gallery.list() == {"obama": 1}
    np.testing.assert_array_equal(gallery.vectors("obama"), before)
    gallery.close()
