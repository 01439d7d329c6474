"""Replays a traffic trace against simulated simpool-serve pods under the Kubernetes HPA, to choose the
autoscaling targets of deploy/k8s/ before a cluster pays for the experiment.

Pods (the CPU overlay's 2-core layout, from docs/benchmarks.md): a pod drains its queue at ~46.6
images/s with two inference lanes and batches of up to 4; an image's own batch takes
max(lone request, batch x per-image lane time) with lognormal spread (sigma fitted to the measured
lone-request p50/p99). Each pod is a fluid FIFO queue stepped every `dt` seconds: an image arriving
behind Q waiting images waits Q / (the pod's rate), then its batch's service time (Little's law; it
reproduces the benchmark's p50 at 8, 32 and 128 clients within 3 %). Requests spread evenly over
ready pods, as a Service does; beyond SIMPOOL_MAX_QUEUE an image is refused (503).

The autoscaler is the HPA's algorithm: every 15 s, per metric, desired = ceil(current * metric /
target), no change within the 0.1 tolerance; the larger proposal of the two metrics; the scale-up
and scale-down stabilisation windows; the rate policies of deploy/k8s/base/hpa.yaml; min/max. The
metrics it reads are as old as Prometheus makes them: a scrape every 15 s, the queue gauge's latest
scrape, and the lane-busy rate over a minute. A new pod serves only after a start-up delay.

    .venv/bin/python bench/autoscale_sim.py                      # both traces, table + docs/autoscale.png
    .venv/bin/python bench/autoscale_sim.py --queue-targets 4,8,16,32 --no-plot
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# --- measured (docs/benchmarks.md: resnet50, 2 cores, 2026-11-25) --------------------------------
POD_RATE = 46.6  # images/s at 32 clients
LONE_P50, LONE_P99 = 0.0252, 0.0412  # one client: p50, p99 seconds
LANES, MAX_BATCH = 2, 4
SIGMA = math.log(LONE_P99 / LONE_P50) / 2.326  # lognormal spread of a service time


@dataclass(frozen=True)
class Policy:
    kind: str  # "Percent" or "Pods"
    value: int
    period_s: float


@dataclass(frozen=True)
class HpaSpec:
    """The fields of an autoscaling/v2 HorizontalPodAutoscaler that the simulation honours."""

    min_replicas: int = 2
    max_replicas: int = 30
    queue_target: float = 8.0  # simpool_queue_depth, AverageValue per pod
    busy_target: float | None = 1.4  # simpool_inference_busy, AverageValue per pod; None: not used
    tolerance: float = 0.1
    sync_s: float = 15.0
    up_window_s: float = 0.0
    down_window_s: float = 300.0
    up_policies: tuple[Policy, ...] = (Policy("Percent", 300, 60), Policy("Pods", 4, 60))
    down_policies: tuple[Policy, ...] = (Policy("Percent", 20, 60),)


def proposal(current: int, metric: float, target: float, tolerance: float = 0.1) -> int:
    """The HPA's replica proposal for one metric: ceil(current * metric / target), or no change when
    the ratio is within the tolerance."""
    ratio = metric / target
    if abs(ratio - 1.0) <= tolerance:
        return current
    return math.ceil(current * ratio)


@dataclass
class Hpa:
    """The HPA controller's state: past proposals (stabilisation) and past scale events (policies)."""

    spec: HpaSpec
    proposals: deque[tuple[float, int]] = field(default_factory=deque)
    events: deque[tuple[float, int]] = field(default_factory=deque)  # (time, replica change)

    def _limit(self, now: float, current: int, up: bool) -> int:
        policies = self.spec.up_policies if up else self.spec.down_policies
        limits = []
        for p in policies:
            # Replicas at the start of the policy's period: every change within it (up or down) undone.
            start = current - sum(d for t, d in self.events if t > now - p.period_s)
            if up:
                limits.append(
                    math.ceil(start * (1 + p.value / 100)) if p.kind == "Percent" else start + p.value
                )
            else:  # the controller truncates here (and rounds up when scaling up)
                limits.append(int(start * (1 - p.value / 100)) if p.kind == "Percent" else start - p.value)
        # Scale-up selectPolicy Max (the most generous limit); scale-down selectPolicy Min (the least
        # change): both are the largest replica count.
        return max(limits)

    def step(self, now: float, current: int, queue: float, busy: float) -> int:
        s = self.spec
        desired = proposal(current, queue, s.queue_target, s.tolerance)
        if s.busy_target is not None:
            desired = max(desired, proposal(current, busy, s.busy_target, s.tolerance))
        desired = min(max(desired, s.min_replicas), s.max_replicas)
        self.proposals.append((now, desired))
        horizon = max(s.up_window_s, s.down_window_s)
        while self.proposals and self.proposals[0][0] < now - horizon:
            self.proposals.popleft()
        # Stabilisation, as the controller does it: no higher than the highest proposal of the down
        # window, no lower than the lowest of the up window; then the rate policies, then min/max.
        up_floor = min(d for t, d in self.proposals if t >= now - s.up_window_s)
        down_ceiling = max(d for t, d in self.proposals if t >= now - s.down_window_s)
        desired = min(max(current, up_floor), down_ceiling)
        if desired > current:
            desired = min(desired, self._limit(now, current, True))
        elif desired < current:
            desired = max(desired, self._limit(now, current, False))
        desired = min(max(desired, s.min_replicas), s.max_replicas)
        if desired != current:
            self.events.append((now, desired - current))
        while self.events and self.events[0][0] < now - 600:
            self.events.popleft()
        return desired


@dataclass(frozen=True)
class SimConfig:
    dt: float = 0.1
    startup_s: float = 45.0  # scheduling + image already on the node + model load and warm-up
    scrape_s: float = 15.0
    queue_window_s: float = 15.0  # the adapter reads the gauge's latest scrape
    busy_window_s: float = 60.0  # the adapter's rate() window
    max_queue: int = 256
    initial_pods: int | None = None  # None: what the first second's load needs at the busy target
    seed: int = 0


@dataclass
class Result:
    t: np.ndarray  # seconds, one point per scrape interval
    load: np.ndarray  # images/s offered
    ready: np.ndarray  # ready pods
    replicas: np.ndarray  # pods the HPA asked for
    p99: np.ndarray  # p99 latency of the images answered in the interval (s)
    all_latency: np.ndarray
    all_weight: np.ndarray
    refused: float
    offered: float
    pod_seconds: float

    def p99_overall(self) -> float:
        return weighted_quantile(self.all_latency, self.all_weight, 0.99)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    if weights.sum() == 0:
        return float("nan")
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q * cum[-1])])


def service_time(queue_before: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An image's own batch time: a lone image runs at the idle latency; behind others, in a batch of
    up to MAX_BATCH on one of LANES lanes."""
    lane_per_image = LANES / POD_RATE
    batch = np.clip(np.ceil((queue_before + 1) / LANES), 1, MAX_BATCH)
    base = np.maximum(LONE_P50, batch * lane_per_image)
    return base * rng.lognormal(0.0, SIGMA, size=queue_before.shape)


def simulate(trace: np.ndarray, trace_dt: float, hpa_spec: HpaSpec, cfg: SimConfig = SimConfig()) -> Result:
    """`trace`: offered images/s, one value per `trace_dt` seconds."""
    rng = np.random.default_rng(cfg.seed)
    duration = len(trace) * trace_dt
    steps = int(duration / cfg.dt)
    hpa = Hpa(hpa_spec)
    max_pods = hpa_spec.max_replicas
    queue = np.zeros(max_pods)
    ready_at = np.full(max_pods, np.inf)  # time each pod slot becomes ready; inf: no pod
    replicas = cfg.initial_pods or math.ceil(trace[0] / (POD_RATE * (hpa_spec.busy_target or 1.4) / LANES))
    replicas = min(max(replicas, hpa_spec.min_replicas), hpa_spec.max_replicas)
    ready_at[:replicas] = 0.0
    scrape_every = round(cfg.scrape_s / cfg.dt)
    queue_samples: deque[np.ndarray] = deque(maxlen=round(cfg.queue_window_s / cfg.scrape_s))
    busy_accum = np.zeros(max_pods)  # inference-seconds since the last scrape
    busy_samples: deque[np.ndarray] = deque(maxlen=round(cfg.busy_window_s / cfg.scrape_s))
    lat_chunks: list[np.ndarray] = []
    w_chunks: list[np.ndarray] = []
    interval_lat: list[np.ndarray] = []
    interval_w: list[np.ndarray] = []
    rows: list[tuple[float, float, int, int, float]] = []
    refused = offered = pod_seconds = 0.0
    next_sync = hpa_spec.sync_s
    for k in range(steps):
        now = k * cfg.dt
        rate = trace[min(int(now / trace_dt), len(trace) - 1)]
        live = np.isfinite(ready_at)
        ready = ready_at <= now
        n_ready = int(ready.sum())
        pod_seconds += live.sum() * cfg.dt
        # Arrivals, spread evenly over the ready pods.
        arrivals = np.zeros(max_pods)
        if n_ready:
            arrivals[ready] = rng.poisson(rate * cfg.dt / n_ready, size=n_ready)
        offered += arrivals.sum()
        room = np.maximum(cfg.max_queue - queue, 0)
        refused += np.maximum(arrivals - room, 0).sum()
        accepted = np.minimum(arrivals, room)
        # Latency of this step's images: the queue ahead drained at the pod's rate, then their batch.
        has = accepted > 0
        if has.any():
            ahead = queue[has] + accepted[has] / 2
            lat = ahead / POD_RATE + service_time(queue[has], rng)
            interval_lat.append(lat)
            interval_w.append(accepted[has])
        queue += accepted
        # Service: each ready pod drains at its rate (spread per step: a handful of batches each).
        capacity = np.zeros(max_pods)
        batches = max(1.0, POD_RATE * cfg.dt / MAX_BATCH)
        capacity[ready] = POD_RATE * cfg.dt * rng.lognormal(0.0, SIGMA / math.sqrt(batches), size=n_ready)
        served = np.minimum(queue, capacity)
        queue -= served
        busy_accum += np.where(capacity > 0, served / np.maximum(capacity, 1e-9), 0.0) * LANES * cfg.dt
        # Prometheus scrapes; the HPA syncs on what the adapter makes of the last minute of scrapes.
        if (k + 1) % scrape_every == 0:
            queue_samples.append(np.where(ready, queue, np.nan))
            busy_samples.append(np.where(ready, busy_accum / cfg.scrape_s, np.nan))
            busy_accum[:] = 0.0
            lat = np.concatenate(interval_lat) if interval_lat else np.zeros(0)
            w = np.concatenate(interval_w) if interval_w else np.zeros(0)
            lat_chunks.append(lat)
            w_chunks.append(w)
            interval_lat, interval_w = [], []
            p99 = weighted_quantile(lat, w, 0.99) if len(w) else float("nan")
            rows.append((now, rate, n_ready, replicas, p99))
        if now >= next_sync and queue_samples:
            next_sync += hpa_spec.sync_s
            with warnings.catch_warnings():  # a pod with no scrape yet: NaN, left out below
                warnings.simplefilter("ignore", RuntimeWarning)
                per_pod_queue = np.nanmean(np.array(queue_samples), axis=0)
                per_pod_busy = np.nanmean(np.array(busy_samples), axis=0)
            seen = ready & np.isfinite(per_pod_queue)
            if seen.any():
                replicas_new = hpa.step(
                    now, replicas, float(per_pod_queue[seen].mean()), float(per_pod_busy[seen].mean())
                )
                if replicas_new > replicas:
                    free = np.flatnonzero(~np.isfinite(ready_at))[: replicas_new - replicas]
                    ready_at[free] = now + cfg.startup_s
                elif replicas_new < replicas:
                    # The newest pods go first (as a ReplicaSet prefers not-ready and younger pods);
                    # their queues are drained elsewhere, so they are handed to the survivors.
                    victims = np.argsort(-np.where(live, ready_at, -np.inf))[: replicas - replicas_new]
                    leftover = queue[victims].sum()
                    ready_at[victims] = np.inf
                    queue[victims] = 0.0
                    survivors = np.isfinite(ready_at) & (ready_at <= now)
                    if survivors.any():
                        queue[survivors] += leftover / survivors.sum()
                replicas = replicas_new
    t, load, n_ready, reps, p99 = (np.array(c) for c in zip(*rows, strict=True))
    return Result(
        t=t, load=load, ready=n_ready, replicas=reps, p99=p99,
        all_latency=np.concatenate(lat_chunks), all_weight=np.concatenate(w_chunks),
        refused=refused, offered=offered, pod_seconds=pod_seconds,
    )  # fmt: skip


# --- traces ----------------------------------------------------------------------------------------


def step_trace(low: float = 100, high: float = 400, before_s: float = 300, during_s: float = 900,
               after_s: float = 900) -> tuple[np.ndarray, float]:  # fmt: skip
    """images/s, one value per second: `low`, a jump to `high`, back to `low`."""
    parts = [np.full(int(before_s), low), np.full(int(during_s), high), np.full(int(after_s), low)]
    return np.concatenate(parts), 1.0


def diurnal_trace(
    trough: float = 60, peak: float = 600, hours: float = 24, seed: int = 1
) -> tuple[np.ndarray, float]:
    """images/s, one value per minute: a day's curve (trough at 04:00, peak at 16:00) with minute-to-minute
    noise of +-10 %."""
    rng = np.random.default_rng(seed)
    minutes = np.arange(int(hours * 60))
    phase = (minutes / 60 - 4) / 24 * 2 * math.pi
    curve = trough + (peak - trough) * (1 - np.cos(phase)) / 2
    return curve * rng.lognormal(0, 0.1, size=len(minutes)), 60.0


# --- report ----------------------------------------------------------------------------------------


def summary(name: str, r: Result, slo: float) -> str:
    over = np.nan_to_num(r.p99) > slo
    return (
        f"| {name} | {r.p99_overall() * 1000:.0f} | {np.nanmedian(r.p99) * 1000:.0f} | "
        f"{np.nanmax(r.p99) * 1000:.0f} | {over.sum() * (r.t[1] - r.t[0]) / 60:.1f} | "
        f"{int(r.ready.min())}-{int(r.replicas.max())} | {r.pod_seconds / 3600:.1f} | "
        f"{100 * r.refused / max(r.offered, 1):.2f} |"
    )


def plot(results: dict[str, Result], slo: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 6), sharex="col")
    for col, (name, r) in enumerate(results.items()):
        hours = r.t.max() > 7200
        x = r.t / 3600 if hours else r.t / 60
        top, bottom = axes[0][col], axes[1][col]
        top.plot(x, r.load, color="0.6", label="offered images/s")
        top.set_ylabel("images/s")
        twin = top.twinx()
        twin.step(x, r.ready, color="tab:blue", where="post", label="ready pods")
        twin.step(x, r.replicas, color="tab:orange", where="post", linestyle="--", label="HPA replicas")
        twin.set_ylabel("pods")
        top.set_title(name)
        lines = top.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        top.legend(lines, [str(h.get_label()) for h in lines], loc="upper left", fontsize=8)
        bottom.plot(x, r.p99 * 1000, color="tab:red", linewidth=0.8, label="p99 per 15 s")
        bottom.axhline(slo * 1000, color="k", linestyle=":", label=f"SLO {slo * 1000:.0f} ms")
        bottom.set_yscale("log")
        bottom.set_ylabel("p99 latency (ms)")
        bottom.set_xlabel("hours" if hours else "minutes")
        bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queue-targets", default="8", help="comma-separated queue-depth targets to compare")
    ap.add_argument("--busy-target", type=float, default=1.4, help="lane-busy target (of 2 lanes)")
    ap.add_argument("--no-busy", action="store_true", help="scale on queue depth alone")
    ap.add_argument("--slo-ms", type=float, default=500.0, help="p99 latency objective")
    ap.add_argument("--startup-s", type=float, default=45.0)
    ap.add_argument("--dt", type=float, default=0.1, help="step of the step trace (the diurnal one uses 5x)")
    docs = Path(__file__).resolve().parent.parent / "docs"
    ap.add_argument("--plot", type=Path, default=docs / "autoscale.png")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    slo = args.slo_ms / 1000
    print(f"pod: {POD_RATE} images/s, lone request p50 {LONE_P50 * 1000:.1f} ms (sigma {SIGMA:.2f}); "
          f"start-up {args.startup_s:.0f} s; SLO p99 {args.slo_ms:.0f} ms")  # fmt: skip
    print("| trace, queue target | p99 ms | median 15 s p99 ms | worst 15 s p99 ms | minutes over SLO "
          "| pods | pod-hours | % refused |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    results = {}
    for target in [float(x) for x in args.queue_targets.split(",")]:
        spec = HpaSpec(queue_target=target, busy_target=None if args.no_busy else args.busy_target)
        for name, (trace, tdt), dt in (
            ("step 100->400/s", step_trace(), args.dt),
            ("diurnal 60-600/s", diurnal_trace(), args.dt * 5),
        ):
            r = simulate(trace, tdt, spec, SimConfig(dt=dt, startup_s=args.startup_s))
            print(summary(f"{name}, {target:g}", r, slo), flush=True)
            results.setdefault(target, {})[name] = r
    if not args.no_plot:
        first = next(iter(results.values()))
        plot(first, slo, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
