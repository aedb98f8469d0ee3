"""Face sprites: a generous crop around the detected face of a photo with a soft elliptical alpha mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.demo.face_locator import FaceLocation, FaceLocator
from app.errors import UserError
from app.recognition.analyzer import TIGHT_FILL, TIGHT_MARGIN
from app.vision.image_io import read_image

# Ellipse semi-axes in face-box widths/heights: wide enough for ears, hair and collar, so the detector sees a
# face in context rather than a cut-out; the face box itself stays fully opaque.
ELLIPSE_AX = 0.95
ELLIPSE_AY = 0.88
ELLIPSE_UP = 0.04  # ellipse centre above the face-box centre (face heights): more hair, less shirt
FEATHER = 0.22  # alpha ramps from 1 to 0 over the outer 22% of the ellipse radius
SPRITE_FACE_H = 260  # stored faces are at most this tall: about the largest face a 1080p scenario shows
OPAQUE = 128  # alpha (0-255) above which a sprite pixel counts as covering what is behind it
# A face that fills its photo (TIGHT_FILL) is searched again with edge-replicated borders (TIGHT_MARGIN of
# the photo's long side), as enrolment does (FaceAnalyzer.detect_photo) and as it is drawn in a frame
# (`cut_sprite` pads the same way where the ellipse leaves the photo); that box is the ground truth's. On
# the bare photo a tight crop's box (the bbt and johns sets are 150 px face crops) is clipped to the photo
# and squeezed by the missing context: on the sprite drawn in a frame the detector's box was 1.1-1.5x
# taller, IoU 0.49-0.78 with it (photos with context: 0.82-0.97). The bare photo's box still places and
# sizes the sprite, so frames are drawn as before; only the truth they are scored against changed.

# Landmark order under a horizontal flip: the image-left eye becomes the image-right one, same for the mouth.
_FLIP_LANDMARKS = [1, 0, 2, 4, 3]


@dataclass(frozen=True)
class Sprite:
    bgra: np.ndarray  # (h,w,4) uint8; alpha is the soft mask
    face_box: np.ndarray  # (4,) float32 x1,y1,x2,y2 in sprite pixels
    landmarks: np.ndarray  # (5,2) float32 in sprite pixels
    pyramid: tuple[np.ndarray, ...] = ()  # bgra halved again and again, for cheap good-looking downscales
    # The ground-truth face box and landmarks (sprite pixels): where the detector finds the face as drawn,
    # which for a face that fills its photo is not `face_box` (see `locate_photo`); None: face_box itself.
    truth_box: np.ndarray | None = None
    truth_landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.pyramid:
            levels = [self.bgra]
            while min(levels[-1].shape[:2]) >= 32:
                h, w = levels[-1].shape[:2]
                levels.append(cv2.resize(levels[-1], (w // 2, h // 2), interpolation=cv2.INTER_AREA))
            object.__setattr__(self, "pyramid", tuple(levels))

    def scaled(self, width: int, height: int) -> np.ndarray:
        """The sprite resized to width x height, from the smallest pyramid level at least that large.

        Coordinates stay exact (they scale by width/w, height/h whichever level is used); it costs a fraction
        of INTER_AREA on the full sprite.
        """
        source = self.bgra
        for level in self.pyramid[1:]:
            if level.shape[1] < width or level.shape[0] < height:
                break
            source = level
        return cv2.resize(source, (width, height), interpolation=cv2.INTER_LINEAR)

    @property
    def face_height(self) -> float:
        return float(self.face_box[3] - self.face_box[1])

    @property
    def face_center(self) -> tuple[float, float]:
        b = self.face_box
        return float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2


def cut_sprite(
    image_bgr: np.ndarray,
    face: FaceLocation,
    flip: bool = False,
    brightness: float = 0.0,
    truth: FaceLocation | None = None,
) -> Sprite:
    """Crop the ellipse around `face` (padding with edge pixels where it leaves the photo), scale, mask.

    `face` places and sizes the sprite; `truth` (photo pixels, default `face`) is what the ground truth
    reports for it (`locate_photo`)."""
    box = face.box.astype(np.float64)
    fw, fh = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2 - ELLIPSE_UP * fh
    ax, ay = ELLIPSE_AX * fw, ELLIPSE_AY * fh
    x0, y0 = int(np.floor(cx - ax)), int(np.floor(cy - ay))
    x1, y1 = int(np.ceil(cx + ax)), int(np.ceil(cy + ay))
    h, w = image_bgr.shape[:2]
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    src = cv2.copyMakeBorder(image_bgr, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image_bgr
    crop = src[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
    offset = np.array([x0, y0], np.float64)

    scale = min(1.0, SPRITE_FACE_H / fh)
    if scale < 1.0:
        # An explicit output size: OpenCV then maps coordinates by exactly (output size / input size).
        size = (round((x1 - x0) * scale), round((y1 - y0) * scale))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    sh, sw = crop.shape[:2]
    sx, sy = sw / (x1 - x0), sh / (y1 - y0)
    to_sprite = np.array([sx, sy])

    # Soft elliptical mask, evaluated at pixel centres in sprite coordinates.
    ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float32) + 0.5
    ecx, ecy = (cx - x0) * sx, (cy - y0) * sy
    r = np.sqrt(((xs - ecx) / (ax * sx)) ** 2 + ((ys - ecy) / (ay * sy)) ** 2)
    alpha = np.clip((1.0 - r) / FEATHER, 0.0, 1.0)

    bgr = crop.astype(np.float32)
    if brightness:
        bgr += brightness
    bgra = np.dstack([np.clip(bgr, 0, 255), alpha * 255.0]).round().astype(np.uint8)

    def to_sprite_pixels(located: FaceLocation) -> tuple[np.ndarray, np.ndarray]:
        b = located.box.astype(np.float64)
        out_box = np.concatenate([(b[:2] - offset) * to_sprite, (b[2:] - offset) * to_sprite])
        out_lms = (located.landmarks.astype(np.float64) - offset) * to_sprite
        if flip:
            out_box = np.array([sw - out_box[2], out_box[1], sw - out_box[0], out_box[3]])
            out_lms = out_lms[_FLIP_LANDMARKS] * [-1, 1] + [sw, 0]
        return out_box.astype(np.float32), out_lms.astype(np.float32)

    if flip:
        bgra = bgra[:, ::-1]
    sprite_box, sprite_lms = to_sprite_pixels(face)
    truth_box, truth_lms = to_sprite_pixels(truth) if truth is not None else (None, None)
    return Sprite(
        np.ascontiguousarray(bgra), sprite_box, sprite_lms, truth_box=truth_box, truth_landmarks=truth_lms
    )


def locate_photo(path: Path, locator: FaceLocator) -> tuple[np.ndarray, FaceLocation, FaceLocation]:
    """Read a photo and find its main face with `locator`: (photo, face, truth) for `cut_sprite`.

    `face` is found on the photo itself and places the sprite. `truth` is the same face found on the photo
    framed by its edge pixels when the face fills the photo (box and landmarks in the photo's own pixels;
    the box may reach outside it), else `face`: the ground truth's box."""
    image = read_image(path)
    try:
        face: FaceLocation | None = locator.locate(image, source=str(path))
    except UserError:
        face = None  # a face too close to the edges may only be found with a margin
    h, w = image.shape[:2]
    if face is not None:
        x1, y1, x2, y2 = face.box
        if max((x2 - x1) / w, (y2 - y1) / h) < TIGHT_FILL:
            return image, face, face
    pad = int(round(TIGHT_MARGIN * max(h, w)))
    framed = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    found = locator.locate(framed, source=str(path))
    truth = FaceLocation(found.box - pad, found.landmarks - pad)
    return image, truth if face is None else face, truth
