"""`open_source`: the source a `--source` spec names (parsed once, runtime/sources/spec.py): a GStreamer capture, a
ROS 2 image topic or a replay.
"""

from __future__ import annotations

from runtime.config import SourceConfig
from runtime.errors import MobileVLAError
from runtime.preprocess import Preprocessing
from runtime.ros.names import RosNames
from runtime.sources.base import FrameSource, Skipped
from runtime.sources.replay import ReplaySource, replay_frames
from runtime.sources.spec import H5Spec, SyntheticSpec, TopicSpec


def open_source(config: SourceConfig, pre: Preprocessing, frames: int | None = None, require_actions: bool = False,
                action_dim: int = 2, names: RosNames | None = None) -> FrameSource:
    """The source `config.spec` names: a GStreamer capture, a ROS 2 image topic (`names` resolve it), or a replay
    of synthetic / h5 frames."""
    spec = config.parsed
    if isinstance(spec, (SyntheticSpec, H5Spec)):
        skipped: Skipped = []
        replay = replay_frames(spec, pre, frames, config.h5_color, require_actions, action_dim, skipped)
        return ReplaySource(replay, config.spec, skipped)
    if require_actions:
        raise MobileVLAError(f"source {config.spec} has no recorded actions to score against; use --source h5:DIR")
    if isinstance(spec, TopicSpec):
        from runtime.sources.topic import TopicSource  # Cyclone DDS only when asked for

        return TopicSource(spec, pre, config, names)
    from runtime.sources.gstreamer.capture import GstCapture  # GStreamer is imported only when a capture starts

    return GstCapture(spec, pre, config)
