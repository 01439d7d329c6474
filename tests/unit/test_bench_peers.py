"""bench/peers.py without starting anything: its command line and the table it prints (the ratios are
the service's against each peer, round by round)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))  # its sibling modules (launch, traffic)
_spec = importlib.util.spec_from_file_location("peers", REPO / "bench" / "peers.py")
assert _spec and _spec.loader
peers = importlib.util.module_from_spec(_spec)
sys.modules["peers"] = peers
_spec.loader.exec_module(peers)


def test_defaults_fit_a_short_run_and_unknown_peers_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    args = peers.parse_args(["--model", "m"])
    assert peers.peer_names(args) == ["litserve", "mosec"]
    assert (args.rounds, args.clients, args.lone_pairs) == (3, 32, 20)
    assert args.rounds * 3 * (args.seconds + args.lone_pairs * 2 * args.lone_gap) < 300  # seconds measured
    with pytest.raises(SystemExit):
        peers.parse_args(["--peers", "litserve,triton"])
    assert "unknown peers ['triton']" in capsys.readouterr().err


def test_table_gives_medians_ranges_and_round_by_round_ratios() -> None:
    def row(ips: float, lone: float, graph: float) -> dict[str, float]:
        return {"images_per_s": ips, "lone_ms": lone, "graph_ms": graph, "overhead_ms": lone - graph}

    rows = {
        peers.OURS: [row(30, 40, 36), row(20, 50, 45)],
        "mosec": [row(20, 50, 36), row(20, 55, 45)],
    }
    lines = peers.table(rows, 32).splitlines()
    assert lines[0].startswith("| server | images/s, 32 clients |")
    assert lines[2] == "| SimPool Serve | 25.0 (20.0-30.0) | 45.0 (40.0-50.0) | +4.5 (+4.0-+5.0) | - | - |"
    # images/s ratios 1.5 and 1.0; lone ratios 50/40 and 55/50
    mosec = "| mosec | 20.0 (20.0-20.0) | 52.5 (50.0-55.0) | +12.0 (+10.0-+14.0) "
    mosec += "| 1.25 (1.00-1.50) | 1.18 (1.10-1.25) |"
    assert lines[3] == mosec
    assert lines[4] == "| the graph alone, batch 1 | | 40.5 (36.0-45.0) | | | |"
