"""Offline pipeline: RoboVLMs checkpoint -> reference policy -> ONNX parts -> bundle (DESIGN §3)."""
