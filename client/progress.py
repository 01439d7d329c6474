"""The progress bar of `simpool-embed`, one look for both engines (asyncio and Ray)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int, desc: str, disable: bool) -> tqdm:
    """Images done, on stderr (stdout stays free for results); smoothed so the rate does not jump."""
    return tqdm(
        total=total,
        unit="img",
        desc=desc,
        disable=disable,
        dynamic_ncols=True,
        smoothing=0.1,
        file=sys.stderr,
    )
