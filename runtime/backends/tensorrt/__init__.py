"""The TensorRT backend: engines.py, runner.py, backend.py (runtime/backends/__init__.py)."""
