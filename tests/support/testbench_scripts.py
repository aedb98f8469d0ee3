"""Import a `testbench/` script in a test by file path (tests/testbench shadows the `testbench` folder)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    """testbench/<name>.py as module `testbench_<name>` (registered in sys.modules, for dataclasses)."""
    spec = importlib.util.spec_from_file_location(f"testbench_{name}", REPO / "testbench" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"no testbench script {name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
