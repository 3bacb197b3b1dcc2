"""Import a script from deploy/ (a folder of scripts, not a package) as a module, for its tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"


def load(name: str) -> ModuleType:
    """deploy/<name>.py as the module ``deploy_<name>`` (loaded once, then reused)."""
    module_name = f"deploy_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
