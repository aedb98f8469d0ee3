import numpy as np
import pytest

from app.config import load_settings
from app.gallery.factory import open_gallery
from app.recognition.analyzer import FaceAnalyzer
from tests.support.shared_data import DEMO_FILES
from tests.support.testbench_scripts import load_script

et = load_script("eval_tracking")


@pytest.mark.slow
def test_an_enrolment_photo_gives_its_face_not_a_larger_low_score_box(tmp_path, monkeypatch):
    """At a 1280 input with the tracker's low threshold, obama.jpg has its face (score ~1.0) and a larger
    0.22 box over the bottom of the photo: enrolment takes the largest face above the display threshold."""
    monkeypatch.chdir(et.REPO)  # default model paths in the settings are relative to the repo root
    settings = load_settings({"det_size": 1280, "det_threshold": 0.1, "qdrant_path": tmp_path}, env_file=None)
    analyzer = FaceAnalyzer(settings)
    photo = DEMO_FILES["obama.jpg"]
    image = et.cv2.imread(str(photo))
    plain = analyzer.detect(image)
    assert plain.scores[plain.largest()] < 0.6  # the trap: the largest box is not the face
    dets = analyzer.detect_photo(image)  # enrolment photos go the photo path
    face = int(np.argmax(dets.scores))
    expected = analyzer.embed_photo(image, dets.landmarks[face][None])
    gallery = open_gallery(settings, analyzer.spec)
    try:
        assert et.enrol(analyzer, gallery, {"obama": [photo]}, min_score=0.6) == {"obama"}
        found = gallery.search(expected, k=1)[0][0]
    finally:
        gallery.close()
    assert found.name == "obama" and found.similarity == pytest.approx(1.0, abs=1e-3)
