"""Run a function in a fresh interpreter whose PyTorch is held to the x86-64 baseline code paths, one thread.

Why the demo fit runs here (measured in docs/building.md, "The embedded demo"): the fit is 800 AdamW steps, which
turn last-bit float differences into different weights. PyTorch picks its kernels by the build host's CPU (AVX-512,
AVX2 or the baseline), MKL and oneDNN theirs, and the thread count splits reductions, so two hosts fitted two
different heads and only one of them passed the INT8 gate. These knobs are read once, when PyTorch loads, so they
cannot be changed in the building process: the work runs in a spawned child that starts with them set.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

# ATen's dispatch (default = no AVX2/AVX-512 kernels), MKL's conditional numerical reproducibility (the same code
# path on every x86-64 CPU), oneDNN's highest ISA, and one thread for OpenMP and MKL (no split reductions).
PINNED_CPU_ENV: Mapping[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """`values` in os.environ for the duration (a spawned child inherits them), then the previous state."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pinned_cpu() -> str:
    """What the child's PyTorch runs on, as the build report records it (e.g. `x86_64, ATen DEFAULT, 1 thread`)."""
    import torch

    return (f"{platform.machine()}, ATen {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} thread(s), MKL_CBWR={os.environ.get('MKL_CBWR', 'unset')}")


def check_pinned() -> None:
    """Run in the child before the work: refuse to go on if PyTorch did not take the baseline."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine() in ("x86_64", "AMD64") and capability != "DEFAULT":
        raise RuntimeError(f"bug: the pinned child's PyTorch runs {capability} kernels, not the baseline")
    torch.set_num_threads(1)


def run_pinned(function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in a spawned child with PINNED_CPU_ENV; its result or its exception comes back here.

    `function` and its arguments must be picklable (module-level function, dataclasses)."""
    context = multiprocessing.get_context("spawn")
    with environment(PINNED_CPU_ENV), ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(pinned_call, function, *args).result()


def pinned_call(function: Callable[..., T], *args: object) -> T:
    """The child's side of run_pinned."""
    check_pinned()
    return function(*args)
