import cv2
import pytest

from app.config import load_settings
from app.errors import UserError
from app.gallery import open_gallery
from app.recognition.analyzer import FaceAnalyzer
from app.recognition.enrollment import enroll, enrollment_notes
from app.vision.image_io import read_image
from tests.support.shared_data import SHARED_FACES, SHARED_IDENTITIES

JOHN = SHARED_IDENTITIES / "johns" / "John_Salley"
OTHER = SHARED_IDENTITIES / "johns" / "John_Simm"


@pytest.fixture(scope="module")
def analyzer():
    return FaceAnalyzer(load_settings({}, env_file=None))


@pytest.fixture
def gallery(tmp_path, analyzer):
    g = open_gallery(load_settings({"qdrant_path": tmp_path / "g"}, env_file=None), analyzer.spec)
    yield g
    g.close()


def test_a_blurred_photo_is_skipped_with_the_reason_and_the_sharp_ones_enrolled(tmp_path, analyzer, gallery):
    image = read_image(SHARED_FACES / "obama-720p.jpg")
    blurred = tmp_path / "blurred.png"
    cv2.imwrite(str(blurred), cv2.GaussianBlur(image, (0, 0), 8))
    result = enroll(analyzer, gallery, "obama", [SHARED_FACES / "obama-720p.jpg", blurred])
    assert result.added == 1
    assert [s.path for s in result.skipped] == [blurred]
    assert result.skipped[0].reason.startswith("too blurred")
    assert gallery.list() == {"obama": 1}


def test_only_unfit_photos_enrol_nothing_and_say_why(tmp_path, analyzer, gallery):
    image = read_image(SHARED_FACES / "obama-720p.jpg")
    blurred = tmp_path / "blurred.png"
    cv2.imwrite(str(blurred), cv2.GaussianBlur(image, (0, 0), 8))
    with pytest.raises(UserError, match="fit for recognition.*too blurred"):
        enroll(analyzer, gallery, "obama", [blurred])
    assert gallery.list() == {}


def test_each_photo_is_reported_and_a_photo_of_someone_else_is_flagged(analyzer, gallery):
    johns = sorted(JOHN.iterdir())[:3]
    intruder = sorted(OTHER.iterdir())[0]
    result = enroll(analyzer, gallery, "john", [*johns, intruder])
    assert result.added == 4
    flagged = {p.path for p in result.photos if p.outlier}
    assert flagged == {intruder}
    notes = enrollment_notes(result)
    assert len(notes) == 4 and "unlike the others" in notes[3] and "quality" in notes[0]


def test_a_single_photo_gets_the_hint_to_add_more(analyzer, gallery):
    result = enroll(analyzer, gallery, "obama", [SHARED_FACES / "obama-720p.jpg"])
    assert result.photos[0].spread is None and not result.photos[0].outlier
    assert "enroll 3 or more photos" in enrollment_notes(result)[-1]
