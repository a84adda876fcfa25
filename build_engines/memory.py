"""Peak resident memory per build stage, for the build report (`timings.<stage>_peak_rss_gb`)."""

from __future__ import annotations

import logging

from runtime.host import process_memory_mb, reset_peak_rss

log = logging.getLogger("build_engines.memory")


def stage_memory(timings: dict[str, float], stage: str) -> None:
    """Record the peak resident memory since the previous stage as `<stage>_peak_rss_gb`, then reset the peak.

    The kernel's high-water mark (VmHWM) is reset by writing 5 to /proc/self/clear_refs (Linux); where that is
    refused the figure is the build's peak so far, and the log says so.
    """
    timings[f"{stage}_peak_rss_gb"] = round(process_memory_mb()[1] / 1024, 2)
    if not reset_peak_rss():
        log.info("peak memory after %s is the build's peak so far (/proc/self/clear_refs refused the reset)", stage)
