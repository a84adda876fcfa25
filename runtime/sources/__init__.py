"""Frame sources (docs/design.md §3): the rooms.

- `spec.py`: `--source` specs parsed once into a dataclass per kind; `dispatch.py`: `open_source` on that kind;
- `base.py`: the `FrameSource` protocol, `CaptureResult` (what one read delivers), `Frame` (one replayed frame);
- `synthetic.py` (a generated scene) and `replay.py` (`h5:PATH` episodes; `ReplaySource`);
- `gstreamer/`: `pipeline.py` (descriptions, checks, hints), `buffer.py` (lazy GStreamer, buffer mapping),
  `capture.py` (`GstCapture`: reconnects, stalls, timestamps).
"""
