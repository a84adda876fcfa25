"""GStreamer capture: pipeline.py, buffer.py, capture.py (runtime/sources/__init__.py)."""
