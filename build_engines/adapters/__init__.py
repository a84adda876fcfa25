"""Policy families (docs/adapters.md): the built-in adapters and `--policy path/to/file.py:ClassName`."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path

from build_engines.adapters.base import PolicyAdapter
from runtime.errors import MobileVLAError

DEFAULT_POLICY = "robovlms-lstm"


def builtin_adapters() -> dict[str, type[PolicyAdapter]]:
    from build_engines.adapters.clip import ClipLSTMAdapter, ClipMLPAdapter
    from build_engines.adapters.fusion import FeatureFusionAdapter
    from build_engines.adapters.robovlms import EnsembleAdapter, RoboVLMsAdapter, RoboVLMsMLPAdapter

    classes: list[type[PolicyAdapter]] = [RoboVLMsAdapter, RoboVLMsMLPAdapter, FeatureFusionAdapter, ClipLSTMAdapter,
                                          ClipMLPAdapter, EnsembleAdapter]
    return {cls.family: cls for cls in classes}


POLICY_CHOICES = ("robovlms-lstm", "robovlms-mlp", "feature-fusion", "clip-lstm", "clip-mlp", "ensemble")


def policy_help() -> str:
    return ", ".join(POLICY_CHOICES) + ", or path/to/adapter.py:ClassName"


def adapter_class(policy: str) -> type[PolicyAdapter]:
    """The adapter class `--policy` names: a built-in family, or `FILE.py:ClassName` (a team's own)."""
    builtin = builtin_adapters()
    if policy in builtin:
        return builtin[policy]
    path_text, colon, name = policy.rpartition(":")
    if not colon or not path_text.endswith(".py"):
        raise MobileVLAError(f"--policy {policy!r} is not a built-in family ({', '.join(builtin)}) or "
                             f"path/to/adapter.py:ClassName")
    path = Path(path_text)
    if not path.is_file():
        raise MobileVLAError(f"--policy {policy}: {path} does not exist; give the adapter's Python file and class, "
                             f"e.g. --policy my_team/adapter.py:MyPolicy")
    spec = importlib.util.spec_from_file_location(f"mobile_vla_adapter_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise MobileVLAError(f"--policy {policy}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the team's own code: any error it raises on import is theirs to fix
        raise MobileVLAError(f"--policy {policy}: importing {path} failed ({type(exc).__name__}: {exc}); fix the "
                             f"adapter file (docs/adapters.md)") from exc
    cls = getattr(module, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, PolicyAdapter)) or inspect.isabstract(cls):
        found = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, PolicyAdapter)
                       and not inspect.isabstract(v) and v.__module__ == module.__name__)
        raise MobileVLAError(f"--policy {policy}: {path} has no concrete PolicyAdapter subclass {name!r} (it has: "
                             f"{', '.join(found) or 'none'}); see docs/adapters.md")
    return cls


def load_adapter(policy: str, options: Mapping[str, str] | None = None) -> PolicyAdapter:
    return adapter_class(policy)(options)


def config_policy(config: Path | None) -> str | None:
    """The family a training config names (`policy_family`, else RoboVLMs' act_head.type), if it says."""
    if config is None or not config.is_file():
        return None
    from build_engines.training_config import load_json

    raw = load_json(config)
    family = raw.get("policy_family")
    if isinstance(family, str):
        return family
    head = raw.get("act_head")
    kind = head.get("type") if isinstance(head, dict) else None
    return {"FCDecoder": "robovlms-mlp", "LSTMDecoder": "robovlms-lstm",
            "MobileVLALSTMDecoder": "robovlms-lstm"}.get(str(kind))
