"""An analytic model of the SLO batcher: the largest arrival rate that keeps a latency
percentile within the SLO, under Poisson or bursty arrivals (after BATCH, SC'20).

Why: the planner used to count on `b / latency(b)` requests per second per replica, derated by a
fixed utilization margin (0.9). That margin is too tight for smooth traffic (a replica could take
more) and too loose for bursty traffic (its tail goes past the SLO). This model says, for one
replica of a (variant, pool) with batch cap B, how late the chosen percentile of requests is at a
given arrival rate and burstiness, so the planner can count on exactly what keeps the SLO.

What it models (`accordion.workers.batching.SloBatcher` with its defaults, lazy off): whenever
the device is free and requests wait, the batcher dispatches at once the earliest-deadline
prefix of the queue, up to B; requests of one service share a budget, so EDF is FIFO. Under
Poisson arrivals at rate lambda this is a bulk-service queue, solved exactly as an embedded
Markov chain on the queue length left at each batch's completion (`_Chain`): from n waiting, a
batch of min(max(n, 1), B) runs for its mean execution time, during which Poisson arrivals join.
A request's latency is then the rest of the batch running when it arrives, the full batches of
B ahead of it, and its own batch's execution, drawn from the profile's p50/p90/p99 (the tail of
execution latency is most of a lightly loaded p99). The size of its own batch is its place in
it plus the arrivals behind it until it starts (Poisson over its wait), at most B.

Burstiness: the router measures the index of dispersion D of its arrival counts in windows of
`window_s` (0.1 s). For a Poisson stream D = 1; a stream whose rate itself varies, slowly
compared to a batch, has D = 1 + lambda * window * cv2, where cv2 is the squared coefficient of
variation of its rate. The model takes cv2 from the measurement and treats arrivals as Poisson
at a rate that is gamma-distributed around lambda with that cv2 (a quasi-static MMPP: the queue
settles within each rate level, which holds when bursts last many batches). A percentile is
taken over requests, so each rate level weighs by its rate. Splitting a stream among replicas
keeps the modulation, so cv2 holds per replica as well (`Burstiness.rate_cv2`).

Work outside the profile (`RequestOverhead`): a worker reached over HTTP spends time the
execution profile does not see: parsing and answering each request on the event loop (CPU the
batch's execution shares: it stretches a batch of b by b times `per_request_s`), the round trip
itself (latency only: `fixed_s`), and a batch that starts on an idle device runs slower than
the profile's back-to-back repeats (`cold_batch_s`: a lone batch of one took 8.3 ms in the
worker against the profile's 6.7 ms; a CPU model streams its weights once per batch, and while
the device idles other work takes the caches; back to back, a saturated worker's batches ran
at the profile's speed plus the per-request work). Only a batch of one starts on an idle
device (an arrival that finds it idle), so the chain runs that batch longer; the batches that
follow a busy device do not. All are measured through the worker's HTTP path
(`accordion.workers.profiler.measure_overhead`); without them the model predicted 16-50% below a
real worker's p99 (bench/results/serverless.md).

Cost: the Poisson part, P(latency <= SLO) at a grid of rates, is computed once per (profile,
B, SLO, percentile) and cached (`_attainment_table`, a few ms per rate); the planner's question
for a given cv2 is then a bisection over table lookups, microseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from accordion.solver.problem import Burstiness, Percentile, ProfilePoint

QUANTILE: dict[Percentile, float] = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
"""The share of requests a percentile SLO asks to be within it."""
RATE_GRID = 16
"""Rates at which the Poisson attainment is tabulated, dense towards the device's throughput."""
PHASE_NODES = 200
"""Points of the gamma-distributed rate of a bursty stream (table lookups: cheap)."""
MAX_STATES = 160
"""Queue lengths the chain keeps (see `_latency_cdf`)."""
QUANTILE_PHASE_NODES = 48
"""... for `latency_quantile_s`, which solves the queue at each (validation only)."""
_U_NODES = 8
"""Points of arrival within a running batch (midpoints; latency is linear in them)."""
_TRANSIENT_SWEEPS = 20000
"""Most power-iteration sweeps of `_modulated_cdf` (it stops when the distribution settles)."""

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class RequestOverhead:
    """Per-request work outside the execution profile (module docstring), in seconds."""

    fixed_s: float = 0.0
    """Added to every request's latency, not to the device's work (the HTTP round trip)."""
    per_request_s: float = 0.0
    """Added to a batch's execution per request in it (parsing and answering it)."""
    cold_batch_s: float = 0.0
    """Added to the execution of a batch that starts on an idle device."""


@dataclass(frozen=True)
class Execution:
    """Execution latency of a batch of each size 1..B: its mean, and a four-point distribution
    from the profile's percentiles (p50, p90, p99; missing ones taken as the lower one)."""

    mean_s: Array
    """Index b - 1: mean execution time of a batch of b."""
    values_s: Array
    """Shape (B, 4): the distribution's points per batch size."""
    probs: Array
    """Shape (4,): their probabilities."""
    cold_s: float = 0.0
    """How much longer a batch runs when it starts on an idle device (`RequestOverhead`)."""

    @property
    def cap(self) -> int:
        return int(self.mean_s.shape[0])

    @staticmethod
    def of(
        points: tuple[tuple[int, float, float, float], ...],
        cap: int,
        per_request_s: float = 0.0,
        cold_batch_s: float = 0.0,
    ) -> Execution:
        """From profile points (batch size, p50, p90, p99 in seconds), interpolated linearly in
        the batch size (extrapolated with the last slope, never negative, as the worker does),
        each batch of b stretched by b * `per_request_s` (`RequestOverhead`); a batch that
        starts on an idle device runs `cold_batch_s` longer (`cold_s`).

        The curve is the device's as profiled, not made non-decreasing: a CPU model's kernels
        switch algorithms with the batch size (demo-xl on 2 cores: 15.0 ms at 2, 22.3 at 3,
        16.9 at 4), and a batch of 4 there runs in 16.9 ms whatever the batcher predicts (its
        predictions are non-decreasing, its executions are the device's). Made non-decreasing,
        the model ran every batch of 4-8 at 22.3 ms and was 10-45% above the replayed batcher
        on that profile (bench/results/serverless.md)."""
        sizes = np.array([p[0] for p in points], dtype=float)
        b = np.arange(1, cap + 1, dtype=float)

        def curve(col: int) -> Array:
            ys = np.array([p[col] for p in points], dtype=float)
            out = np.interp(b, sizes, ys)
            if len(sizes) >= 2 and cap > sizes[-1]:
                slope = max(0.0, (ys[-1] - ys[-2]) / (sizes[-1] - sizes[-2]))
                out = np.where(b > sizes[-1], ys[-1] + slope * (b - sizes[-1]), out)
            floored: Array = np.maximum(out, 1e-9)
            return floored

        p50, p90, p99 = curve(1), curve(2), curve(3)
        p90 = np.maximum(p90, p50)
        p99 = np.maximum(p99, p90)
        values = np.stack([p50, (p50 + p90) / 2, (p90 + p99) / 2, p99], axis=1)
        values = values + (b * per_request_s)[:, None]
        probs = np.array([0.5, 0.4, 0.09, 0.01])
        return Execution(mean_s=values @ probs, values_s=values, probs=probs, cold_s=cold_batch_s)


def profile_key(points: list[ProfilePoint]) -> tuple[tuple[int, float, float, float], ...]:
    """A profile as a hashable tuple (batch size, p50, p90, p99 in seconds)."""
    out = []
    for p in sorted(points, key=lambda q: q.batch_size):
        p90 = p.p90_s if p.p90_s is not None else p.p50_s
        p99 = p.p99_s if p.p99_s is not None else p90
        out.append((p.batch_size, p.p50_s, p90, p99))
    return tuple(out)


def _poisson_pmf(mean: float, size: int) -> Array:
    """P(k) for k = 0..size-1 of a Poisson variable; the tail beyond goes to the last entry."""
    k = np.arange(size, dtype=float)
    if mean <= 0:
        point: Array = np.zeros(size)
        point[0] = 1.0
        return point
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(k[1:]))])
    out: Array = np.exp(k * math.log(mean) - mean - log_factorial)
    out[-1] += max(0.0, 1.0 - float(out.sum()))
    return out


def _one_blas_thread() -> threadpool_limits:
    """The chain's solves are a few hundred states: BLAS threads only contend (many times
    slower on a busy machine), so they run on one."""
    return threadpool_limits(limits=1, user_api="blas")


class _Chain:
    """The queue length at batch completions of the SLO batcher under Poisson(rate) arrivals,
    with `states` - 1 as the largest length kept (more is lumped there: latencies that long are
    late anyway); see the module docstring. `pi` is the stationary distribution (a rate at or
    above the throughput has none that means anything: callers of `_transient_states` use the
    transition matrix `trans` alone)."""

    def __init__(self, ex: Execution, rate: float, states: int, stationary: bool = True) -> None:
        cap = ex.cap
        n = np.arange(states)
        self.batch = np.minimum(np.maximum(n, 1), cap)
        self.left = np.maximum(n - cap, 0)
        trans = np.zeros((states, states))
        pmfs = {b: _poisson_pmf(rate * float(ex.mean_s[b - 1]), states) for b in range(1, cap + 1)}
        # From an empty queue the next arrival starts a batch of one on an idle device.
        cold = _poisson_pmf(rate * (float(ex.mean_s[0]) + ex.cold_s), states)
        for i in range(states):
            pmf = cold if i == 0 else pmfs[int(self.batch[i])]
            q = int(self.left[i])
            trans[i, q:] = pmf[: states - q]
            trans[i, -1] += float(pmf[states - q :].sum())
        self.trans = trans
        # Expected time from a completion that leaves n waiting to the next completion: the
        # next batch's execution, after waiting for an arrival when none waits.
        step = ex.mean_s[self.batch - 1].astype(float)
        step[0] = float(ex.mean_s[0]) + ex.cold_s + (1.0 / rate if rate > 0 else math.inf)
        self.step_s = step
        self.pi = _stationary(trans) if stationary else np.zeros(states)


def _stationary(trans: Array) -> Array:
    """The stationary distribution of a transition matrix: pi (P - I) = 0, sum pi = 1, by one
    LU solve."""
    states = trans.shape[0]
    a = trans.T - np.eye(states)
    a[-1, :] = 1.0
    rhs = np.zeros(states)
    rhs[-1] = 1.0
    pi: Array = np.clip(np.linalg.solve(a, rhs), 0.0, None)  # callers: `_one_blas_thread`
    return pi / float(pi.sum())


def _states_for(ex: Execution, xs: Array) -> int:
    """Queue lengths the chain keeps to answer P(latency <= x) for every x of `xs`."""
    cap = ex.cap
    full_s = float(ex.mean_s[cap - 1])
    # Queue lengths beyond this many full batches ahead are later than every x asked about.
    ahead = math.ceil(float(np.max(xs)) / full_s) + 2
    # At most `MAX_STATES` (cost grows with their cube): a longer queue counts as late, which
    # is conservative only where the SLO is many full batches long, near the throughput.
    return min(cap * (ahead + 1) + 8, max(MAX_STATES, 3 * cap))


def _latency_cdf(ex: Execution, rate: float, xs: Array) -> Array:
    """P(latency <= x) for each x of `xs`, under Poisson(rate) arrivals (module docstring)."""
    cap = ex.cap
    if rate <= 0:
        return _exec_cdf(ex, np.array([1]), np.array([1.0]), np.full(1, ex.cold_s), xs)
    if rate * float(ex.mean_s[cap - 1]) >= cap:
        return np.zeros_like(xs)
    chain = _Chain(ex, rate, _states_for(ex, xs))
    cdf, total = _arrivals_cdf(ex, rate, xs, chain, chain.pi)
    return cdf / total


def _arrivals_cdf(
    ex: Execution, rate: float, xs: Array, chain: _Chain, pi: Array
) -> tuple[Array, float]:
    """(sum over arrivals of P(latency <= x), per x; the arrivals' total weight), when the
    batch completions leave `pi` (weights, any total) waiting: each completion is followed by
    the arrivals during the next batch (and the one that ends an idle spell)."""
    cap = ex.cap
    mean = ex.mean_s
    full_s = float(mean[cap - 1])
    states = len(pi)
    t_size = states + cap
    # Arrivals that find the device idle: a batch of one, at once, `cold_s` longer than the
    # profile's batch of one.
    weights = [np.array([pi[0]])]
    delays = [np.zeros(1)]
    ahead_counts = [np.zeros(1, dtype=int)]
    # Arrivals while a batch of b runs: spread over the batch at `_U_NODES` midpoints.
    u_frac = (np.arange(_U_NODES) + 0.5) / _U_NODES
    k = np.arange(t_size, dtype=float)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(k[1:]))])
    states_at = np.arange(states)
    # Per running batch: (its size, the completions it follows, its mean execution); the batch
    # of one that an arrival started on an idle device apart, it runs `cold_s` longer.
    running = [(1, states_at == 0, float(mean[0]) + ex.cold_s)]
    running += [
        (b, (chain.batch == b) & (states_at > 0), float(mean[b - 1])) for b in range(1, cap + 1)
    ]
    for b, mask, s in running:
        if not mask.any():
            continue
        # Requests ahead of a newcomer: what this batch left behind (nothing below a full
        # batch) plus the Poisson arrivals before it, at each point u of the batch.
        u = u_frac * s
        means = rate * u
        arrived = np.exp(
            k[None, :] * np.log(means)[:, None] - means[:, None] - log_factorial[None, :]
        )
        left_pmf = np.bincount(chain.left[mask], weights=pi[mask], minlength=t_size)[:t_size]
        if b < cap:
            t_pmf = arrived * float(left_pmf.sum())
        else:
            t_pmf = np.stack([np.convolve(left_pmf, row)[:t_size] for row in arrived])
        w = t_pmf * (rate * s / _U_NODES)
        rows, cols = np.nonzero(w > 1e-12)
        weights.append(w[rows, cols])
        delays.append(s - u[rows])
        ahead_counts.append(cols)
    w_all = np.concatenate(weights)
    rest = np.concatenate(delays)
    t = np.concatenate(ahead_counts)
    full_batches = t // cap
    place = t % cap + 1
    wait = rest + full_batches * full_s
    cold = np.zeros_like(wait)
    cold[0] = ex.cold_s  # the first: the arrival that found the device idle
    own, w_own, at = _own_batches(cap, place, rate * wait, w_all)
    return _exec_cdf(ex, own, w_own, (wait + cold)[at], xs), float(w_all.sum())


def _own_batches(
    cap: int, place: npt.NDArray[np.int_], behind: Array, weights: Array
) -> tuple[npt.NDArray[np.int_], Array, npt.NDArray[np.int_]]:
    """A request's own batch: its `place` in it plus the arrivals behind it until it starts,
    Poisson with mean `behind`, at most B: (sizes, weights, the request each is of), one entry
    per size it may have. Not the mean's size: a CPU model's curve has steps (demo-xl on one
    machine: 9.7-10.9 ms for 1-3, 19.6 for 4), and rounding the mean arrivals up put half of
    the requests that would ride in a batch of 3 into one of 4 (on that curve the model was
    +7.1% and +5.2% above the replayed batcher at 50 and 170 req/s, now -1.3% and +3.1%:
    tests/solver/test_queueing.py)."""
    k = np.arange(cap)
    pmf = np.empty((len(place), cap))
    pmf[:, 0] = np.exp(-behind)
    for j in range(1, cap):
        pmf[:, j] = pmf[:, j - 1] * behind / j
    # K >= B - 1 fills the batch whatever the place: the tail goes to the last column.
    pmf[:, -1] += np.clip(1.0 - pmf.sum(axis=1), 0.0, None)
    w = weights[:, None] * pmf
    rows, cols = np.nonzero(w > 1e-12)
    own = np.minimum(cap, place[rows] + k[cols])
    return own, w[rows, cols], rows


def _modulated_cdf(ex: Execution, rates: Array, shares: Array, phase_s: float, xs: Array) -> Array:
    """P(latency <= x) for each x of `xs`, over requests, when the arrival rate holds a level of
    `rates` (time shares `shares`) for an exponential phase of mean `phase_s`, then draws the
    next level: the queue a phase leaves is where the next starts (module docstring).

    The chain's state is (level, queue length at a batch completion); from there the next
    batch runs at the level's rate (`_Chain`) and the phase ends during it with probability
    1 - exp(-step / phase_s) (its expected duration, `_Chain.step_s`), the queue carried to a
    level drawn by `shares`. Its stationary distribution is found by power iteration from the
    quasi-static one (each stable level's own, an unstable level's empty queue)."""
    states = _states_for(ex, xs)
    chains = [_Chain(ex, float(r), states, stationary=False) for r in rates]
    trans = np.stack([c.trans for c in chains])
    cap = ex.cap
    full_s = float(ex.mean_s[cap - 1])
    start = np.zeros((len(rates), states))
    for i, (r, c) in enumerate(zip(rates, chains, strict=True)):
        if r * full_s < cap:
            start[i] = _stationary(c.trans)
        else:
            start[i, 0] = 1.0
    # Completions in each level: its time share over the mean time between them.
    steps = np.stack([c.step_s for c in chains])
    x = shares[:, None] * start / (start * steps).sum(axis=1)[:, None]
    x /= float(x.sum())
    stay = np.exp(-steps / phase_s)
    for sweep in range(_TRANSIENT_SWEEPS):
        kept = np.einsum("ls,lst->lt", x * stay, trans)
        moved = np.einsum("ls,lst->t", x * (1.0 - stay), trans)
        new = kept + shares[:, None] * moved[None, :]
        done = sweep % 16 == 15 and float(np.abs(new - x).sum()) < 1e-9
        x = new
        if done:
            break
    cdf = np.zeros_like(xs)
    total = 0.0
    for r, c, xi in zip(rates, chains, x, strict=True):
        part, weight = _arrivals_cdf(ex, float(r), xs, c, xi)
        cdf += part
        total += weight
    return cdf / total


def _exec_cdf(ex: Execution, own: npt.NDArray[np.int_], w: Array, wait: Array, xs: Array) -> Array:
    """Sum over requests of weight * P(wait + execution of a batch of `own` <= x), per x."""
    out = np.zeros(len(xs))
    for j, p in enumerate(ex.probs):
        total = wait + ex.values_s[own - 1, j]
        order = np.argsort(total)
        cum = np.concatenate([[0.0], np.cumsum(w[order])])
        idx = np.searchsorted(total[order], xs, side="right")
        out += p * cum[idx]
    return out


@lru_cache(maxsize=1024)
def _rate_phases(cv2: float, nodes: int = PHASE_NODES) -> tuple[Array, Array]:
    """Rate multipliers (mean 1) and their probabilities for a rate with squared coefficient
    of variation `cv2`: a gamma distribution (shape 1 / cv2), on `nodes` equal bins up to 12
    standard deviations above the mean. Gamma rather than lognormal: bursts are bounded, and
    a lognormal's tail at a large cv2 (an on/off stream) asks for capacity no burst needs."""
    if cv2 <= 1e-9:
        return np.ones(1), np.ones(1)
    shape = 1.0 / cv2
    edges = np.linspace(0.0, 1.0 + 12.0 * math.sqrt(cv2), nodes + 1)
    g = (edges[:-1] + edges[1:]) / 2
    log_density = (shape - 1.0) * np.log(g) - shape * g
    p = np.exp(log_density - float(log_density.max()))
    keep = p > 1e-12 * float(p.sum())
    g, p = g[keep], p[keep]
    return g / float((p * g).sum() / p.sum()), p / float(p.sum())


@lru_cache(maxsize=4096)
def _attainment_table(
    profile: tuple[tuple[int, float, float, float], ...], cap: int, slo_s: float
) -> tuple[Array, Array]:
    """(rates, P(latency <= slo_s) at each) for Poisson arrivals, from 0 to the throughput."""
    ex = Execution.of(profile, cap)
    top = cap / float(ex.mean_s[cap - 1])
    grid = 1.0 - (1.0 - np.linspace(0.0, 1.0, RATE_GRID)) ** 2
    rates = grid * top
    xs = np.array([slo_s])
    with _one_blas_thread():
        values = np.array([float(_latency_cdf(ex, float(r), xs)[0]) for r in rates])
    values[-1] = 0.0
    return rates, np.minimum.accumulate(values)


def attainment(
    profile: tuple[tuple[int, float, float, float], ...],
    cap: int,
    slo_s: float,
    rate_qps: float,
    cv2: float,
) -> float:
    """The share of requests answered within `slo_s` at `rate_qps` with rate variability cv2."""
    rates, values = _attainment_table(profile, cap, slo_s)
    g, p = _rate_phases(cv2)
    at = np.interp(rate_qps * g, rates, values, right=0.0)
    return float((p * g * at).sum() / (p * g).sum())


def max_rate_qps(
    points: list[ProfilePoint],
    cap: int,
    slo_s: float,
    percentile: Percentile,
    burstiness: Burstiness,
) -> float | None:
    """The largest arrival rate per replica at which `percentile` of the requests stay within
    `slo_s`, with batch cap `cap` and the measured `burstiness`; None when no rate does (not
    even a lone request: the planner's rule excludes such pairs first)."""
    return _max_rate(profile_key(points), cap, slo_s, QUANTILE[percentile], burstiness.rate_cv2)


@lru_cache(maxsize=65536)
def _max_rate(
    profile: tuple[tuple[int, float, float, float], ...],
    cap: int,
    slo_s: float,
    q: float,
    cv2: float,
) -> float | None:
    """`max_rate_qps`, memoized: the loop re-plans every few seconds with the same inputs (a
    burstiness is republished only when it moves, `control.burstiness`)."""
    rates, values = _attainment_table(profile, cap, slo_s)
    g, p = _rate_phases(cv2)
    weight = p * g
    total = float(weight.sum())

    def attained(rate: float) -> float:
        return float((weight * np.interp(rate * g, rates, values, right=0.0)).sum()) / total

    lo, hi = 0.0, float(rates[-1])
    if attained(lo) < q:
        return None
    while hi - lo > 1e-4 * hi:
        mid = (lo + hi) / 2
        if attained(mid) >= q:
            lo = mid
        else:
            hi = mid
    return lo if lo > 0 else None


def latency_quantile_s(
    points: list[ProfilePoint],
    cap: int,
    rate_qps: float,
    cv2: float,
    quantile: float,
    overhead: RequestOverhead | None = None,
    phase_s: float | None = None,
) -> float:
    """The model's `quantile` of request latency at `rate_qps` (validation and benchmarks;
    the planner asks `max_rate_qps`), with the per-request `overhead` of the path measured
    (none: the device's alone). Rate levels held for phases of mean `phase_s` carry their
    queue from one phase to the next (`_modulated_cdf`); None: quasi-static, each level's
    queue settled (the limit of long phases). Infinite when the device cannot keep up."""
    extra = overhead or RequestOverhead()
    ex = Execution.of(profile_key(points), cap, extra.per_request_s, extra.cold_batch_s)
    g, p = _rate_phases(cv2, QUANTILE_PHASE_NODES)
    top = float(ex.values_s[cap - 1, -1])
    xs = np.linspace(0.0, top * 12, 1200)
    cdf = np.zeros_like(xs)
    with _one_blas_thread():
        if phase_s is not None and len(g) > 1:
            cdf = _modulated_cdf(ex, rate_qps * g, p, phase_s, xs)
        else:
            for gi, pi in zip(g, p, strict=True):
                cdf += pi * gi * _latency_cdf(ex, rate_qps * float(gi), xs)
            cdf /= float((p * g).sum())
    idx = int(np.searchsorted(cdf, quantile, side="left"))
    return float(xs[idx]) + extra.fixed_s if idx < len(xs) else math.inf
