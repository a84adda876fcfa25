"""Policy backends (docs/design.md §6): the rooms.

- `base.py`: the `Runner` and `PolicyBackend` contracts;
- `select.py`: which backend runs a bundle here, decided once (`open_backend`, what the CLI calls);
- `onnxruntime.py`: ONNX Runtime's runner and backend; `onnx_forms.py`: which graph each part runs on it;
- `tensorrt/`: `engines.py` (which engine, compatibility, I/O checks), `runner.py` (one engine), `backend.py` (the
  three engines with the history on the device and the CUDA graph);
- `cuda.py`: every CUDA call (pycuda and the driver through ctypes), imported lazily.
"""
