"""Pinning a Ray actor's process to CPU cores, so stages measured on one node do not steal each other's cores."""

from __future__ import annotations

import os

import torch


def pin(cores: list[int], threads: int | None = None) -> None:
    """Restrict this process to `cores` and run torch on `threads` (default: one per core); no-op when empty."""
    if not cores:
        return
    available = sorted(os.sched_getaffinity(0))
    if not set(cores) <= set(range(os.cpu_count() or 1)):
        raise ValueError(f"cpu_affinity {cores}: this node has cores 0..{(os.cpu_count() or 1) - 1} "
                         f"(this process may use {available}); choose cores that exist or leave cpu_affinity empty")
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(threads or len(cores))
