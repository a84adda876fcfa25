"""Offline pipeline: RoboVLMs checkpoint -> reference policy -> ONNX parts -> bundle (docs/design.md §3)."""
