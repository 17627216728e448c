"""Aggregation rules: a window of n updates, stacked as `updates: Tensor[n, d]` (float32), -> one update [d].

Each rule is a pure function `rule(updates, f) -> Aggregate` registered in `RULES` under its config name
(`ml.config.RuleName`). `f` is the number of Byzantine rows the rule must tolerate in the window. Each rule has
a requirement on n; the PS calls `check_rule` once at start (and `aggregate` checks again per window, because a
sync window shrinks when stragglers are dropped). An unmet requirement raises ValueError stating the condition
and the numbers; it is never replaced by the mean.

| rule         | requirement              | tolerates                    | work for n rows of d          | ms, d = 1 M, n = 8 / 11 |
|--------------|--------------------------|------------------------------|-------------------------------|-------------------------|
| mean         | n >= 1                   | no Byzantine row (f ignored) | one matrix-vector product     | 2 / 3                   |
| median       | n >= 2f+1                | f < n/2                      | coordinate-wise sort          | 30-40 / 110-125         |
| trimmed_mean | n >= 2f+1                | f < n/2                      | coordinate-wise sort          | 30-45 / 120-140         |
| krum         | n >= 2f+3                | f (Blanchard et al. 2017)    | n(n-1)/2 distances of d       | 6-15 / 20-40            |
| multi_krum   | n >= 2f+3, 1 <= m <= n-f | f                            | distances + mean of m rows    | 11-20 / 22-35           |
| bulyan       | n >= 4f+3                | f (El Mhamdi et al. 2018)    | distances + sort and pairwise | 80-120 / 100-180        |
|              |                          |                              | ranks of n-2f rows            |                         |

(Times: best of 9-11 runs, wall clock, f = 1 / 2, torch 2.13 on 2 cores shared with other jobs (load average
2-10); the spread is the load's. Re-measure on a quiet machine before quoting them.)

Bulyan's coordinate-wise phase ranks the selected rows per coordinate by (distance to the median, row index),
one comparison per pair of rows, so each row counts once and ties are decided by row. It replaced a shortcut
over runs of sorted values that counted a repeated value twice (ALIE's colluding rows) and missed the paper's
value in every ALIE window of n = 11 and 15 tried. Cost of the whole rule, n = 8 / 11, both versions in the
same processes, interleaved, best of 11: quiet machine (load 1), 1 thread (the PS's share when its workers
run on its host) 79 / 112 ms, the shortcut 64 / 106; 2 threads 78 / 110, the shortcut 56 / 79. Under load
3-5: 1 thread 82-86 / 155, the shortcut 80-114 / 143-188; 2 threads 102-115 / 151-179, the shortcut
249-258 / 331-421 (its temporaries of d floats suffer most). Quiet, the exact rule costs 1.05-1.4x the
shortcut; under load about the same or less.

Inputs must be finite (the PS refuses non-finite frames before they reach a window); with NaN or Inf the
result is undefined but no rule raises. Ties are broken towards the lower row index, so results are
deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, get_args

import torch
from torch import Tensor

from ..ml.config import RuleName


@dataclass(frozen=True)
class Aggregate:
    value: Tensor  # [d] float32: the update the server optimizer applies
    selected: tuple[int, ...]  # window rows that can enter `value`, in selection order (Krum: the chosen ones)


@dataclass(frozen=True)
class Rule:
    apply: Callable[[Tensor, int], Aggregate]
    min_n: Callable[[int], int]  # smallest window that tolerates f Byzantine rows
    condition: str  # min_n as the papers write it
    tolerates: str  # what the rule guarantees, for the PS's start-up log line


def sort_rows(updates: Tensor, block: int = 32768) -> Tensor:
    """Each column of `updates` [n, d] sorted ascending.

    An odd-even transposition network (`sort_network`) run on blocks of `block` columns, so the block's rows
    stay in cache between rounds. For the small n of a window this beats `torch.sort(dim=0)`, which sorts d
    strided columns of n one by one: CPU time on 2 loaded cores, 8 x 1 M: 43 ms against 197 ms; 11 x 1 M:
    87 ms against 288 ms (unblocked: 150 ms).
    """
    return torch.cat([torch.stack(sort_network(part.unbind(0))) for part in updates.split(block, dim=1)], dim=1)


def sort_network(rows: Sequence[Tensor]) -> list[Tensor]:
    """Equal-length rows sorted elementwise: n rounds of compare-exchange between neighbours sort any column
    (Knuth 5.3.4)."""
    rows = list(rows)
    for round_ in range(len(rows)):
        for i in range(round_ % 2, len(rows) - 1, 2):
            rows[i], rows[i + 1] = torch.minimum(rows[i], rows[i + 1]), torch.maximum(rows[i], rows[i + 1])
    return rows


def median_of_sorted(ordered: Tensor | Sequence[Tensor]) -> Tensor:
    """Coordinate-wise median of column-sorted rows; the mean of the two middle rows when n is even."""
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def pairwise_sq_distances(updates: Tensor) -> Tensor:
    """[n, n] float64 squared L2 distances between rows, diagonal 0.

    torch.pdist forms each difference directly: the Gram-matrix shortcut |a|^2 + |b|^2 - 2ab loses all
    digits of the honest-honest distances when one row is a huge outlier, which is exactly Krum's case.
    """
    n = updates.shape[0]
    dist = torch.zeros(n, n, dtype=torch.float64)
    i, j = torch.triu_indices(n, n, offset=1)
    sq = torch.pdist(updates).double() ** 2
    dist[i, j] = sq
    dist[j, i] = sq
    return dist


def krum_scores(dist: Tensor, neighbours: int) -> Tensor:
    """Krum score of each row of a distance matrix: the sum of its `neighbours` smallest distances to others."""
    others = dist + torch.diag(torch.full((dist.shape[0],), float("inf"), dtype=dist.dtype))
    return others.sort(dim=1).values[:, :neighbours].sum(dim=1)


def mean_of_rows(updates: Tensor, rows: Sequence[int]) -> Tensor:
    """The mean of the given rows of [n, d] as one matrix-vector product (weight 0 on the others): copies no
    row, and is 5x faster than mean(dim=0) on 11 x 1 M."""
    weights = torch.zeros(updates.shape[0])
    weights[list(rows)] = 1 / len(rows)
    return weights @ updates


def rank(scores: Tensor) -> list[int]:
    """Row indices by ascending score, ties towards the lower index."""
    return scores.sort(stable=True).indices.tolist()


def mean(updates: Tensor, f: int) -> Aggregate:
    n = updates.shape[0]
    return Aggregate(mean_of_rows(updates, range(n)), tuple(range(n)))


def median(updates: Tensor, f: int) -> Aggregate:
    return Aggregate(median_of_sorted(sort_rows(updates)), tuple(range(updates.shape[0])))


def trimmed_mean(updates: Tensor, f: int) -> Aggregate:
    """Per coordinate, drop the f largest and the f smallest values and average the n - 2f left."""
    n = updates.shape[0]
    return Aggregate(mean_of_rows(sort_rows(updates), range(f, n - f)), tuple(range(n)))


def krum(updates: Tensor, f: int) -> Aggregate:
    """The row whose n - f - 2 nearest other rows are closest (sum of squared distances)."""
    n = updates.shape[0]
    best = rank(krum_scores(pairwise_sq_distances(updates), n - f - 2))[0]
    return Aggregate(updates[best].clone(), (best,))


def multi_krum(updates: Tensor, f: int, m: int | None = None) -> Aggregate:
    """The mean of the m rows with the lowest Krum scores (scored once, on the whole window); m = n - f by default."""
    n = updates.shape[0]
    chosen = rank(krum_scores(pairwise_sq_distances(updates), n - f - 2))[: n - f if m is None else m]
    return Aggregate(mean_of_rows(updates, chosen), tuple(chosen))


def iterated_krum(dist: Tensor, f: int, count: int) -> list[int]:
    """Bulyan's selection: `count` times, take the Krum winner among the rows not yet taken.

    With r rows left Krum scores by the r - f - 2 nearest; the last picks of Bulyan have r < 2f + 3, where
    that count falls to 0 or below, so it is clamped to at least 1 (the nearest other row) while another
    row is left. A lone outlier still scores high there, but colluding identical rows are each other's
    nearest and one of them can be taken: as in the paper, the selection may hold up to f Byzantine rows,
    and the coordinate-wise phase that follows is what keeps them out of the value.
    """
    left = list(range(dist.shape[0]))
    chosen = []
    for _ in range(count):
        r = len(left)
        sub = dist[left][:, left]
        best = left[rank(krum_scores(sub, min(max(r - f - 2, 1), r - 1)))[0]]
        chosen.append(best)
        left.remove(best)
    return chosen


def closest_to_median_mean(updates: Tensor, rows: Sequence[int], beta: int, block: int = 32768) -> Tensor:
    """Per coordinate, the mean of the `beta` values of the window rows `rows` closest to their median: the
    first beta of those rows ordered by (|value - median|, row index). Each row counts at most once, so two
    rows sending the same value (colluding attackers) count twice only when both are among the beta nearest,
    and a tie in distance goes to the lower row index whatever the values.

    Elementwise over views of the rows, per block of `block` columns (`closest_in_block`): no copy of the
    selected rows, and no gather, which is 10x slower than elementwise work at these n.
    """
    rows = sorted(rows)
    return torch.cat([closest_in_block([part[i] for i in rows], beta) for part in updates.split(block, dim=1)])


def closest_in_block(rows: list[Tensor], beta: int) -> Tensor:
    """`closest_to_median_mean` of equal-length rows given in row-index order.

    Each row's place in the order (distance, row index) is counted from one comparison per pair: a row starts
    at its index (as if every lower row went first) and each pair (i < j) where row j is strictly nearer moves
    j one place forward and i one back. Rows ranked below beta are summed: exactly beta per coordinate.
    """
    med = median_of_sorted(sort_network(rows))
    dist = [(row - med).abs() for row in rows]
    place_dtype = torch.int8 if len(rows) <= 127 else torch.int32
    place = [torch.full_like(med, i, dtype=place_dtype) for i in range(len(rows))]
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            nearer = (dist[j] < dist[i]).view(torch.int8)  # the bool's bytes as 0 / 1, without a copy
            place[i] += nearer
            place[j] -= nearer
    total = torch.zeros_like(med)
    for row, p in zip(rows, place):
        total += torch.where(p < beta, row, 0.0)
    return total / beta


def bulyan(updates: Tensor, f: int) -> Aggregate:
    """El Mhamdi et al. 2018: theta = n - 2f rows by iterated Krum, then per coordinate the mean of the
    beta = theta - 2f selected values closest to their median."""
    n = updates.shape[0]
    theta = n - 2 * f
    chosen = iterated_krum(pairwise_sq_distances(updates), f, theta)
    return Aggregate(closest_to_median_mean(updates, chosen, theta - 2 * f), tuple(chosen))


RULES: dict[str, Rule] = {
    "mean": Rule(mean, lambda f: 1, "n >= 1", "no Byzantine update, whatever f"),
    "median": Rule(median, lambda f: 2 * f + 1, "n >= 2f+1", "f Byzantine updates (f < n/2)"),
    "trimmed_mean": Rule(trimmed_mean, lambda f: 2 * f + 1, "n >= 2f+1", "f Byzantine updates (f < n/2)"),
    "krum": Rule(krum, lambda f: 2 * f + 3, "n >= 2f+3", "f Byzantine updates"),
    "multi_krum": Rule(multi_krum, lambda f: 2 * f + 3, "n >= 2f+3", "f Byzantine updates when m <= n-f"),
    "bulyan": Rule(bulyan, lambda f: 4 * f + 3, "n >= 4f+3", "f Byzantine updates"),
}
if set(RULES) != set(get_args(RuleName)):
    raise ImportError(f"aggregation RULES {sorted(RULES)} do not match RuleName {sorted(get_args(RuleName))}")


def check_rule(name: RuleName, n: int, f: int, m: int | None = None) -> str:
    """One line for the PS log saying the rule's condition holds for window n and f; ValueError if not.

    `m` is multi_krum's number of averaged rows (None = n - f) and is ignored by the other rules.
    """
    rule = RULES.get(name)
    if rule is None:
        raise ValueError(f"unknown aggregation rule {name!r}; known: {', '.join(RULES)}")
    if f < 0 or n < rule.min_n(f):
        raise ValueError(f"{name} needs {rule.condition}: window n={n}, f={f} (needs n >= {rule.min_n(f)})")
    if name == "multi_krum" and m is not None and not 1 <= m <= n - f:
        raise ValueError(f"multi_krum needs 1 <= m <= n-f: m={m}, n={n}, f={f}")
    return f"{name}: {rule.condition} holds with n={n}, f={f}; tolerates {rule.tolerates}"


def aggregate(name: RuleName, updates: Tensor, f: int, m: int | None = None) -> Aggregate:
    """The PS's call per window: check the rule's condition for this window, then apply it.

    Raises ValueError when `updates` is not a non-empty [n, d] float32 tensor or the condition fails.
    """
    if updates.dim() != 2 or updates.shape[0] == 0 or updates.dtype != torch.float32:
        raise ValueError(f"a window must be a float32 [n, d] tensor with n >= 1, got {updates.dtype} {list(updates.shape)}")
    check_rule(name, updates.shape[0], f, m)
    if name == "multi_krum":
        return multi_krum(updates, f, m)
    return RULES[name].apply(updates, f)
