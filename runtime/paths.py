"""Where the embedded demo's bundle and synthetic episodes live when none is named."""

from __future__ import annotations

import os
from pathlib import Path

BUNDLE_ENV = "MOBILE_VLA_BUNDLE"
EPISODES_ENV = "MOBILE_VLA_EPISODES"


def cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mobile-vla"


def default_bundle_dir() -> Path:
    """`$MOBILE_VLA_BUNDLE`, else `$XDG_CACHE_HOME/mobile-vla/demo-bundle` (default `~/.cache/...`)."""
    explicit = os.environ.get(BUNDLE_ENV)
    return Path(explicit) if explicit else cache_dir() / "demo-bundle"


def default_episodes_dir() -> Path:
    """The demo's synthetic episodes: `$MOBILE_VLA_EPISODES`, else `~/.cache/mobile-vla/demo-episodes`."""
    explicit = os.environ.get(EPISODES_ENV)
    return Path(explicit) if explicit else cache_dir() / "demo-episodes"
