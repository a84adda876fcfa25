"""Reading the runtime's YAML config file: `--config FILE`, else /etc/mobile-vla/runtime.yaml, else the defaults.

The text must be UTF-8 and no mapping may give a key twice (YAML itself would keep the last one silently); what the
file says is then validated by `runtime.config.parse_config`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from runtime.config import RuntimeConfig, parse_config
from runtime.errors import MobileVLAError

SYSTEM_CONFIG = Path("/etc/mobile-vla/runtime.yaml")


def load_config(path: Path | None) -> RuntimeConfig:
    """`path`, else the system config when it exists, else the defaults."""
    if path is None:
        if not SYSTEM_CONFIG.is_file():
            return RuntimeConfig()
        path = SYSTEM_CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MobileVLAError(f"cannot read config file {path}: {exc.strerror}; pass an existing YAML file to "
                             f"--config") from exc
    except UnicodeDecodeError as exc:
        raise MobileVLAError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as "
                             f"UTF-8 YAML") from exc
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise MobileVLAError(f"config file {path} is not valid YAML: {exc}") from exc
    return parse_config(data, str(path))


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`, but a key given twice in one mapping is an error: YAML would silently keep the last one,
    and a safety limit written twice (one of them forgotten) must not be resolved by position."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: dict[object, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"the key {key!r} is given twice (first at line {seen[key].start_mark.line + 1}); keep one",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep)
