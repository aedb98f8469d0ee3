import itertools
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.errors import UserError
from app.inference.spec import DLIB_DEFAULT_THRESHOLD
from app.recognition.analyzer import FaceAnalyzer
from app.vision.alignment import align_faces
from app.vision.image_io import read_image
from tests.support.shared_data import SHARED_FACES

REPO = Path(__file__).resolve().parents[2]
TRAIN = SHARED_FACES / "knn_examples" / "train"


def settings(**changes) -> Settings:
    base = Settings(
        detector_model=REPO / "checkpoints" / "retinaface_mnet025.onnx",
        embedder_model=REPO / "checkpoints" / "dlib_resnet.onnx",
    )
    return base.replace(**changes)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return FaceAnalyzer(settings())


def largest_face_embedding(analyzer: FaceAnalyzer, path: Path) -> np.ndarray:
    image = read_image(path)
    det = analyzer.detect(image)
    i = det.largest()
    assert i is not None, path
    return analyzer.embed(image, det.landmarks[i : i + 1])[0]


def test_detect_and_embed_two_people(analyzer):
    image = read_image(SHARED_FACES / "two_people.jpg")
    det = analyzer.detect(image)
    assert len(det) == 2
    emb = analyzer.embed(image, det.landmarks)
    assert emb.shape == (2, 128) and emb.dtype == np.float32
    assert np.all(np.isfinite(emb))
    # two different people
    assert analyzer.spec.similarity(emb[:1], emb[1:])[0, 0] < analyzer.spec.threshold


def test_spec_and_model_id(analyzer):
    assert analyzer.spec.kind == "dlib" and analyzer.spec.metric == "euclidean"
    assert analyzer.model_id == analyzer.spec.model_id
    assert analyzer.model_id.startswith("dlib-") and len(analyzer.model_id) == len("dlib-") + 12
    assert analyzer.spec.threshold == DLIB_DEFAULT_THRESHOLD


def test_match_threshold_setting_overrides_the_default():
    assert FaceAnalyzer(settings(match_threshold=0.5)).spec.threshold == 0.5


def test_batched_embedding_equals_one_by_one(analyzer):
    image = read_image(SHARED_FACES / "knn_examples" / "test" / "obama_and_biden.jpg")
    det = analyzer.detect(image)
    batch = analyzer.embed(image, det.landmarks)
    singles = np.concatenate([analyzer.embed(image, det.landmarks[i : i + 1]) for i in range(len(det))])
    np.testing.assert_allclose(batch, singles, atol=1e-4)


def test_detect_batch_matches_detect(analyzer):
    images = [read_image(SHARED_FACES / n) for n in ("obama-480p.jpg", "knn_examples/test/kit_with_rose.jpg")]
    for image, det in zip(images, analyzer.detect_batch(images), strict=True):
        single = analyzer.detect(image)
        np.testing.assert_allclose(det.boxes, single.boxes, atol=0.05)


def test_no_landmarks_gives_no_embeddings(analyzer):
    out = analyzer.embed(np.zeros((50, 50, 3), np.uint8), np.zeros((0, 5, 2), np.float32))
    assert out.shape == (0, 128)


def test_missing_embedder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        FaceAnalyzer(settings(embedder_model=tmp_path / "none.onnx"))


def test_embeddings_separate_people(analyzer):
    """All pairs of the knn_examples training photos: same person above the threshold, others below."""
    photos = [(p.parent.name, p) for p in sorted(TRAIN.glob("*/*")) if p.suffix.lower() in {".jpg", ".jpeg"}]
    assert len(photos) == 9
    emb = {p: largest_face_embedding(analyzer, p) for _, p in photos}
    threshold = analyzer.spec.threshold
    same, different = [], []
    for (na, pa), (nb, pb) in itertools.combinations(photos, 2):
        sim = float(analyzer.spec.similarity(emb[pa][None], emb[pb][None])[0, 0])
        (same if na == nb else different).append(sim)
    assert len(same) == 4 and len(different) == 32
    assert min(same) > threshold + 0.05, same
    assert max(different) < threshold - 0.05, different


def test_same_person_across_resolutions_is_close(analyzer):
    small = largest_face_embedding(analyzer, SHARED_FACES / "obama-240p.jpg")
    large = largest_face_embedding(analyzer, SHARED_FACES / "obama-1080p.jpg")
    assert analyzer.spec.similarity(small[None], large[None])[0, 0] > 0.6  # distance < 0.4


TIGHT_PHOTOS = ["obama-720p.jpg", "lin-manuel-miranda.png", "alex-lacamoire.png", "two_people.jpg"]


def tight_crop(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A square crop inside the face box (cut at the chin and hairline), its offset and side."""
    x1, y1, x2, y2 = box
    side = 0.9 * max(x2 - x1, y2 - y1)
    left, top = int((x1 + x2 - side) / 2), int((y1 + y2 - side) / 2)
    return image[top : int(top + side), left : int(left + side)], np.array([left, top], np.float32), side


def test_a_tight_face_crop_gets_the_landmarks_of_the_uncropped_photo(analyzer):
    plain_errors, errors = [], []
    for name in TIGHT_PHOTOS:
        image = read_image(SHARED_FACES / name)
        whole = analyzer.detect(image)
        i = whole.largest()
        crop, offset, side = tight_crop(image, whole.boxes[i])
        plain = analyzer.detect_batch([crop])[0]  # one look, no margin
        found = analyzer.detect_photo(crop)
        for det, out in ((plain, plain_errors), (found, errors)):
            j = det.largest()
            out.append(np.abs(det.landmarks[j] + offset - whole.landmarks[i]).max() / side)
    assert max(errors) < 0.05, errors  # every landmark within 5 % of the face size
    assert np.mean(errors) < 0.8 * np.mean(plain_errors), (errors, plain_errors)


def test_a_photo_with_room_around_the_face_is_looked_at_once(analyzer):
    image = read_image(SHARED_FACES / "two_people.jpg")
    once, found = analyzer.detect(image), analyzer.detect_photo(image)
    np.testing.assert_array_equal(found.landmarks, once.landmarks)
    np.testing.assert_array_equal(found.boxes, once.boxes)


def test_a_photo_is_embedded_with_its_edges_extended_a_frame_as_it_is(analyzer):
    image = read_image(SHARED_FACES / "alex-lacamoire.png")
    whole = analyzer.detect(image)
    crop, offset, _ = tight_crop(image, whole.boxes[whole.largest()])
    found = analyzer.detect_photo(crop)
    landmarks = found.landmarks[found.largest()][None]
    photo, frame = analyzer.embed_photo(crop, landmarks), analyzer.embed(crop, landmarks)
    np.testing.assert_allclose(frame, analyzer.embed_chips(align_faces(crop, landmarks, analyzer.spec)))
    np.testing.assert_allclose(
        photo, analyzer.embed_chips(align_faces(crop, landmarks, analyzer.spec, edge=True))
    )
    # the uncropped photo's face is nearer to the edge-extended chip than to the black-bordered one
    reference = analyzer.embed(image, whole.landmarks[whole.largest()][None])
    assert np.linalg.norm(photo - reference) < np.linalg.norm(frame - reference)
