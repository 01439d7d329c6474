"""Counting a JPEG's scans from its markers, before libjpeg decodes any of them.

A progressive JPEG may legally repeat scans without end, and libjpeg decodes each one over the whole
image: a 1.7 MB 7000×7000 file with 20,000 scans kept a decode thread busy for 52 s (libjpeg-turbo's
"LJT-01-003"; its authors advise capping the scan count). Ordinary encoders write about 10 scans.
"""

from __future__ import annotations

import re

_SOS, _EOI = 0xDA, 0xD9
# Markers without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, 0xD9}
# Inside entropy-coded data a 0xFF byte is followed by 0x00 (stuffing), RSTn, or 0xFF fill bytes; anything
# else is the next marker.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


def count_scans(data: bytes, stop_after: int) -> int:
    """The number of scans (SOS markers) of the first image in `data`, counting no further than `stop_after`
    + 1. Walks the marker segments by their lengths, so scans of an EXIF thumbnail are not counted.
    A malformed stream stops the count: the decoder reports what is wrong with it."""
    pos, scans, size = 2, 0, len(data)
    while pos + 4 <= size and scans <= stop_after:
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            if marker == _EOI:
                break
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 2 + length
        if marker == _SOS:
            scans += 1
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans
