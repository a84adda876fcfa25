"""Where the embedded demo bundle lives when no bundle is named."""

from __future__ import annotations

import os
from pathlib import Path

BUNDLE_ENV = "MOBILE_VLA_BUNDLE"


def default_bundle_dir() -> Path:
    """`$MOBILE_VLA_BUNDLE`, else `$XDG_CACHE_HOME/mobile-vla/demo-bundle` (default `~/.cache/...`)."""
    explicit = os.environ.get(BUNDLE_ENV)
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mobile-vla" / "demo-bundle"
