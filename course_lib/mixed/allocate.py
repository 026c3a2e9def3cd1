"""One setting per layer under a bits-per-weight budget: exactly (dynamic programming), greedily, and by EXL2's
simulated annealing.

    m = measure(model, calibration)                  # sensitivity.py: error of every layer x setting
    a = allocate(m, 4.65)                            # dynamic programming: the exact optimum
    a.bpw <= 4.65, a.choice["model.layers.0.mlp.down_proj"]

The problem (a multiple-choice knapsack): pick one setting j_i for each layer i to minimise

    sum_i err(i, j_i) ** norm      subject to      sum_i bits(i, j_i) <= target_bpw * sum_i weights_i,

bits counting every code, scale, zero point and group index the format stores (Setting.layer_bits). EXL2 scores the
options the same way and minimises the same kind of sum, with the exponent `norm` tuned between 1.5 and 3.5 (larger:
more weight on the worst layer); its solver is a simulated annealing over the per-module choices
(exllamav2 ``conversion/optimize.py``). The default here, norm = 2, adds up the layers' relative squared output
errors; for a measurement scored end to end (Measurement.end_to_end(): KL divergences, which add) it is 1. The
solvers do not care what the errors mean.

* ``allocate_dp``: exact. Costs are whole multiples of the greatest common divisor of all options' bit counts, so
  the budget has finitely many states and the best error for each is built layer by layer (the knapsack recursion).
  Where that would need too many states, costs are rounded *up* to a coarser grid: never over budget.
* ``allocate_greedy``: from the cheapest option everywhere, repeatedly take the upgrade with the largest error drop
  per added bit that still fits (the classic heuristic; it can stop short of the optimum).
* ``allocate_annealing``: from the cheapest allocation, random single-layer moves, downhill always, uphill with
  probability exp(-delta / T), T cooling geometrically; moves over the budget are refused. Seeded, so reproducible.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .sensitivity import Measurement, Setting


@dataclass
class Allocation:
    """choice: layer name -> Setting; bits: the total bits stored; bpw = bits / weights; objective: sum err ** norm."""

    method: str
    target_bpw: float
    choice: dict[str, Setting]
    bits: int
    n_weights: int
    objective: float
    max_error: float

    @property
    def bpw(self) -> float:
        return self.bits / self.n_weights

    def counts(self) -> dict[str, int]:
        """How many layers got each setting (sorted by setting)."""
        out: dict[str, int] = {}
        for s in sorted(self.choice.values()):
            out[s.label] = out.get(s.label, 0) + 1
        return out

    def summary(self) -> dict:
        return {"method": self.method, "target bpw": self.target_bpw, "bpw": self.bpw, "objective": self.objective,
                "max error": self.max_error}


def _arrays(m: Measurement, norm: float | None) -> tuple[np.ndarray, np.ndarray]:
    norm = m.meta.get("norm", 2.0) if norm is None else norm
    cost = np.array([[m.bits(i, j) for j in range(len(m.settings))] for i in range(len(m.layers))], dtype=np.int64)
    err = np.asarray(m.error, dtype=np.float64) ** norm
    return cost, err


def feasible_range(m: Measurement) -> tuple[float, float]:
    """(smallest, largest) bits per weight any allocation of these settings can realise."""
    cost, _ = _arrays(m, 1.0)
    return cost.min(axis=1).sum() / m.n_weights, cost.max(axis=1).sum() / m.n_weights


def check_budget(m: Measurement, target_bpw: float) -> int:
    """The budget in bits for `target_bpw`, or a ValueError that gives the feasible range."""
    if not isinstance(m, Measurement):
        raise TypeError("Pass the Measurement returned by course_lib.mixed.measure(model, calibration).")
    if isinstance(target_bpw, bool) or not isinstance(target_bpw, (int, float)) or not math.isfinite(target_bpw):
        raise TypeError(f"target_bpw must be a number of bits per weight, got {target_bpw!r}.")
    low, high = feasible_range(m)
    if target_bpw < low:
        raise ValueError(f"A budget of {target_bpw:g} bits per weight is below the smallest these settings can reach "
                         f"({low:.4f}, every layer at its cheapest setting); the feasible range is "
                         f"{low:.4f} to {high:.4f} bpw. Raise the budget or add cheaper settings.")
    if target_bpw > high:
        raise ValueError(f"A budget of {target_bpw:g} bits per weight is above the largest these settings use "
                         f"({high:.4f}, every layer at its most expensive setting); the feasible range is "
                         f"{low:.4f} to {high:.4f} bpw. Use the largest setting everywhere, or add wider settings.")
    return int(math.floor(target_bpw * m.n_weights + 1e-6))


def _result(m: Measurement, method: str, target: float, idx, norm: float | None) -> Allocation:
    norm = m.meta.get("norm", 2.0) if norm is None else norm
    idx = [int(j) for j in idx]
    bits = sum(m.bits(i, j) for i, j in enumerate(idx))
    errs = [m.error[i][j] for i, j in enumerate(idx)]
    return Allocation(method, float(target), {name: m.settings[j] for name, j in zip(m.layers, idx)}, bits,
                      m.n_weights, float(sum(e ** norm for e in errs)), float(max(errs)))


def allocate_dp(m: Measurement, target_bpw: float, *, norm: float | None = None,
                max_states: int = 500_000) -> Allocation:
    """Least sum err ** norm over the allocations that fit, by dynamic programming over the budget.

    Costs are counted in units of the greatest common divisor of all options' bit counts, which makes the
    search exact; when that needs more than `max_states` budget states, the budget is cut into `max_states`
    steps and every cost rounded *up* to whole steps (never over budget; result.method says "approximate")."""
    budget = check_budget(m, target_bpw)
    cost, err = _arrays(m, norm)
    unit = int(np.gcd.reduce(cost.ravel()))
    exact = budget // unit <= max_states
    if exact:
        units, states = cost // unit, int(budget // unit)
    else:
        step = budget / max_states
        units, states = np.ceil(cost / step - 1e-9).astype(np.int64), max_states
    n_layers, n_opts = units.shape
    best = np.full(states + 1, np.inf)                  # best[u]: least error of the layers so far using u units
    best[0] = 0.0
    picks = np.zeros((n_layers, states + 1), dtype=np.int8)
    for i in range(n_layers):
        new = np.full(states + 1, np.inf)
        for j in range(n_opts):
            u = int(units[i, j])
            if u > states:
                continue
            cand = np.full(states + 1, np.inf)
            cand[u:] = best[: states + 1 - u] + err[i, j]
            better = cand < new
            new[better] = cand[better]
            picks[i, better] = j
        best = new
    if not np.isfinite(best).any():
        raise ValueError(f"No allocation fits {target_bpw:g} bpw with costs rounded up to {states} steps; "
                         f"raise `max_states` or the budget.")
    u = int(np.argmin(best))
    idx = [0] * n_layers
    for i in range(n_layers - 1, -1, -1):               # walk the choices back from the best end state
        idx[i] = int(picks[i, u])
        u -= int(units[i, idx[i]])
    return _result(m, "dynamic programming" + ("" if exact else " (approximate)"), target_bpw, idx, norm)


def _fill(idx: list[int], cost: np.ndarray, err: np.ndarray, budget: int) -> list[int]:
    """Upgrade, one layer at a time, the option with the largest error drop per added bit that still fits."""
    idx = list(idx)
    used = int(sum(cost[i, j] for i, j in enumerate(idx)))
    while True:
        best, move = 0.0, None
        for i, j in enumerate(idx):
            extra = cost[i] - cost[i, j]
            gain = err[i, j] - err[i]
            ok = (extra > 0) & (gain > 0) & (used + extra <= budget)
            if ok.any():
                ratio = np.where(ok, gain / np.maximum(extra, 1), -1.0)
                k = int(np.argmax(ratio))
                if ratio[k] > best:
                    best, move = float(ratio[k]), (i, k)
        if move is None:
            return idx
        i, k = move
        used += int(cost[i, k] - cost[i, idx[i]])
        idx[i] = k


def allocate_greedy(m: Measurement, target_bpw: float, *, norm: float | None = None) -> Allocation:
    """Cheapest setting everywhere, then the best error drop per added bit, while it fits."""
    budget = check_budget(m, target_bpw)
    cost, err = _arrays(m, norm)
    idx = [int(np.argmin(cost[i] + err[i] * 1e-12)) for i in range(len(m.layers))]   # cheapest (ties: lower error)
    return _result(m, "greedy", target_bpw, _fill(idx, cost, err, budget), norm)


def allocate_annealing(m: Measurement, target_bpw: float, *, norm: float | None = None, seed: int = 0,
                       steps: int = 20000, t_start: float | None = None, t_end: float | None = None,
                       start: Allocation | None = None) -> Allocation:
    """Simulated annealing from `start` (default: every layer at its cheapest setting), keeping the best allocation
    seen, then spending what budget is left greedily. A move takes one layer one option up or down in cost order,
    or (half the time) one layer up and another down, so that a full budget can still be re-spent. T falls geometrically from t_start to t_end (default: a
    tenth of the mean error step between neighbouring options, down to 1e-4 of that)."""
    budget = check_budget(m, target_bpw)
    cost, err = _arrays(m, norm)
    rng = random.Random(seed)
    order = np.argsort(cost, axis=1, kind="stable")            # each layer's options, cheapest first
    rank = np.argsort(order, axis=1)
    if start is None:
        idx = [int(order[i, 0]) for i in range(len(m.layers))]
    else:
        idx = [m.settings.index(start.choice[name]) for name in m.layers]
    used = int(sum(cost[i, j] for i, j in enumerate(idx)))
    total = float(sum(err[i, j] for i, j in enumerate(idx)))
    step_err = float(np.abs(np.diff(np.take_along_axis(err, order, axis=1), axis=1)).mean()) or 1.0
    t0 = 0.1 * step_err if t_start is None else t_start
    t1 = 1e-4 * t0 if t_end is None else t_end
    best_total, best_idx = total, list(idx)
    n_layers, n_opts = cost.shape

    def neighbour(i: int, direction: int) -> int | None:
        r = int(rank[i, idx[i]]) + direction
        return int(order[i, r]) if 0 <= r < n_opts else None

    for step in range(steps):
        temp = t0 * (t1 / t0) ** (step / max(steps - 1, 1))
        moves = [(rng.randrange(n_layers), rng.choice((-1, 1)))]
        if rng.random() < 0.5:
            moves = [(rng.randrange(n_layers), 1), (rng.randrange(n_layers), -1)]
        if len({i for i, _ in moves}) < len(moves):
            continue
        new = [(i, neighbour(i, d)) for i, d in moves]
        if any(k is None for _, k in new):
            continue
        d_cost = sum(int(cost[i, k] - cost[i, idx[i]]) for i, k in new)
        if used + d_cost > budget:
            continue
        delta = sum(float(err[i, k] - err[i, idx[i]]) for i, k in new)
        if delta <= 0 or rng.random() < math.exp(-delta / temp):
            for i, k in new:
                idx[i] = k
            used, total = used + d_cost, total + delta
            if total < best_total - 1e-15:
                best_total, best_idx = total, list(idx)
    # the budget the walk left unspent, spent greedily (EXL2's solver also ends by filling the budget)
    return _result(m, "simulated annealing", target_bpw, _fill(best_idx, cost, err, budget), norm)


def allocate(m: Measurement, target_bpw: float, *, method: str = "dp", **kw) -> Allocation:
    """allocate_dp, allocate_greedy or allocate_annealing by name ("dp", "greedy", "annealing")."""
    fns = {"dp": allocate_dp, "greedy": allocate_greedy, "annealing": allocate_annealing}
    if method not in fns:
        raise ValueError(f"Unknown method {method!r}; choose one of {sorted(fns)}.")
    return fns[method](m, target_bpw, **kw)


def uniform(m: Measurement, setting: Setting, *, norm: float | None = None) -> Allocation:
    """Every layer at one setting (the baseline an allocation is compared with)."""
    if setting not in m.settings:
        raise ValueError(f"{setting.label} was not measured; measured: {[s.label for s in m.settings]}.")
    j = m.settings.index(setting)
    a = _result(m, f"uniform {setting.label}", 0.0, [j] * len(m.layers), norm)
    a.target_bpw = a.bpw
    return a


def brute_force(m: Measurement, target_bpw: float, *, norm: float | None = None) -> Allocation:
    """Every combination (tiny problems only: for checking the solvers)."""
    import itertools

    budget = check_budget(m, target_bpw)
    cost, err = _arrays(m, norm)
    n_layers, n_opts = cost.shape
    if n_opts ** n_layers > 2_000_000:
        raise ValueError(f"{n_opts}^{n_layers} combinations are too many to enumerate; use allocate_dp.")
    best, best_idx = math.inf, None
    for idx in itertools.product(range(n_opts), repeat=n_layers):
        c = sum(cost[i, j] for i, j in enumerate(idx))
        if c <= budget:
            e = sum(err[i, j] for i, j in enumerate(idx))
            if e < best:
                best, best_idx = e, idx
    return _result(m, "brute force", target_bpw, best_idx, norm)
