"""Aggregation rules on inputs small enough to check on paper, plus planted outliers and the n conditions."""

import pytest
import torch

from dist_llm_train.ps.aggregation import (
    RULES,
    aggregate,
    bulyan,
    check_rule,
    closest_to_median_mean,
    iterated_krum,
    krum,
    krum_scores,
    mean,
    median,
    multi_krum,
    pairwise_sq_distances,
    sort_rows,
    trimmed_mean,
)
from dist_llm_train.worker.attacks import alie, alie_z_max

# Five points in 2-D; columns sorted: x = 0, 1, 2, 6, 100 and y = -100, 0, 1, 4, 8.
FIVE = torch.tensor([[0.0, 0.0], [1.0, 4.0], [2.0, 8.0], [6.0, 1.0], [100.0, -100.0]])

# Krum example, outlier first so indices are not trivially the smallest:
# e=(10,10), a=(0,0), b=(1,0), c=(0,2), d=(1,1.5). Squared distances:
# ab=1, ac=4, ad=3.25, bc=5, bd=2.25, cd=1.25, and e is >= 153.25 from all.
# With n=5, f=1 Krum sums the n-f-2 = 2 smallest: a 1+3.25, b 1+2.25, c 1.25+4, d 1.25+2.25.
KRUM_POINTS = torch.tensor([[10.0, 10.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.5]])


def test_mean_averages_every_row():
    result = mean(FIVE, 0)
    assert torch.allclose(result.value, torch.tensor([109 / 5, -87 / 5]))
    assert result.selected == (0, 1, 2, 3, 4)


def test_median_is_the_middle_value_per_coordinate():
    assert torch.equal(median(FIVE, 2).value, torch.tensor([2.0, 1.0]))


def test_median_of_an_even_window_averages_the_two_middle_values():
    assert torch.equal(median(torch.tensor([[10.0], [1.0], [4.0], [2.0]]), 1).value, torch.tensor([3.0]))


def test_trimmed_mean_drops_f_largest_and_f_smallest_per_coordinate():
    # x: drop 0 and 100 -> (1+2+6)/3 = 3;  y: drop -100 and 8 -> (0+1+4)/3 = 5/3
    assert torch.allclose(trimmed_mean(FIVE, 1).value, torch.tensor([3.0, 5 / 3]))
    assert torch.allclose(trimmed_mean(FIVE, 0).value, FIVE.mean(dim=0))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 11])
@pytest.mark.parametrize("block", [100, 32768])  # 257 columns in 3 blocks, or in one
def test_sort_rows_sorts_every_column(n, block):
    updates = torch.randn(n, 257, generator=torch.Generator().manual_seed(n))
    assert torch.equal(sort_rows(updates, block), updates.sort(dim=0).values)


def test_pairwise_distances_are_exact_beside_a_huge_outlier():
    # The Gram shortcut would lose the honest distances (about 2) against the 1e10 norm of row 0.
    updates = torch.tensor([[1e5, 1e5], [0.0, 0.0], [1.0, 1.0]])
    dist = pairwise_sq_distances(updates)
    assert dist[1, 2] == dist[2, 1] == pytest.approx(2.0, rel=1e-6)
    assert torch.equal(dist.diag(), torch.zeros(3, dtype=torch.float64))


def test_krum_scores_sum_the_nearest_neighbours():
    scores = krum_scores(pairwise_sq_distances(KRUM_POINTS), 2)
    assert scores[1:].tolist() == pytest.approx([4.25, 3.25, 5.25, 3.5], rel=1e-6)
    assert scores[0].item() == pytest.approx(153.25 + 164.0, rel=1e-6)  # e's two nearest: d and c


def test_krum_picks_the_most_central_point_and_ignores_the_outlier():
    result = krum(KRUM_POINTS, 1)
    assert result.selected == (2,)
    assert torch.equal(result.value, torch.tensor([1.0, 0.0]))


def test_multi_krum_averages_the_m_best_scores():
    default = multi_krum(KRUM_POINTS, 1)  # m = n - f = 4: b, d, a, c
    assert default.selected == (2, 4, 1, 3)
    assert torch.allclose(default.value, torch.tensor([0.5, 0.875]))
    two = multi_krum(KRUM_POINTS, 1, m=2)  # b and d
    assert two.selected == (2, 4)
    assert torch.allclose(two.value, torch.tensor([1.0, 0.75]))


def test_bulyan_on_a_line():
    # n=7, f=1: theta=5 by iterated Krum, then the beta=3 values closest to their median.
    # Rows: 2, 2.5, 3, 6, 9, 60, -70. Krum rounds (neighbours r-f-2, at least 1; ties go to the lower row):
    #   r=7, 4 nearest: 2->66.25, 2.5->55, 3->46.25, 6->46.25, 9->136.25: take 3 (row 2)
    #   r=6, 3 nearest: 2->65.25, 2.5->54.75, 6->37.25, 9->100.25: take 6 (row 3)
    #   r=5, 2 nearest: 2->49.25, 2.5->42.5, 9->91.25: take 2.5 (row 1)
    #   r=4, 1 nearest: 2->49, 9->49, 60->2601, -70->5184: take 2 (row 0)
    #   r=3, 1 nearest: 9->2601, 60->2601, -70->6241: take 9 (row 4)
    # Selected 2, 2.5, 3, 6, 9: median 3; the closest three are 2, 2.5, 3 -> 2.5 (trimming by rank: 3.83).
    updates = torch.tensor([[2.0], [2.5], [3.0], [6.0], [9.0], [60.0], [-70.0]])
    result = bulyan(updates, 1)
    assert result.selected == (2, 3, 1, 0, 4)
    assert torch.allclose(result.value, torch.tensor([2.5]))


def test_iterated_krum_scores_the_last_picks_by_their_nearest_neighbour():
    # Three rows left with f = 1: Krum's r - f - 2 = 0 neighbours would score all three 0 and take row 0, the
    # outlier; clamped to 1 neighbour, rows 1 and 2 (1 apart) beat row 0 (99 away).
    dist = pairwise_sq_distances(torch.tensor([[100.0], [0.0], [1.0]]))
    assert iterated_krum(dist, 1, 1) == [1]


def test_closest_to_median_is_not_the_middle_by_rank():
    # Column 0: 2, 2.5, 3, 6, 9: median 3, distances 1, 0.5, 0, 3, 6 -> 2, 2.5, 3 (mean 2.5), where trimming one
    # value off each end would give 2.5, 3, 6. Column 1: 0, 5, 6, 7, 8: median 6 -> 5, 6, 7. Column 2: 1..5 ->
    # 2, 3, 4.
    updates = torch.tensor([[2.0, 0.0, 1.0], [2.5, 5.0, 2.0], [3.0, 6.0, 3.0], [6.0, 7.0, 4.0], [9.0, 8.0, 5.0]])
    assert torch.allclose(closest_to_median_mean(updates, range(5), 3), torch.tensor([2.5, 6.0, 3.0]))


def test_a_repeated_value_counts_once_per_row_that_is_among_the_nearest():
    # Two colluding rows send -4. Sorted -5, -4, -4, 0, 3, 9, 9.5: median 0, distances 5, 4, 4, 0, 3, 9, 9.5.
    # The three nearest rows are 0, 3 and one of the -4s: mean -1/3. Both runs -4, -4, 0 and -4, 0, 3 reach 4
    # from the median; taking the first of them counted -4 twice (mean -8/3).
    updates = torch.tensor([[-4.0], [-4.0], [9.0], [-5.0], [0.0], [9.5], [3.0]])
    assert torch.allclose(closest_to_median_mean(updates, range(7), 3), torch.tensor([-1 / 3]))


def test_a_tie_in_distance_goes_to_the_lower_row_whatever_the_values():
    # Median 0; rows 0 and 1 are both 1 away: with beta = 2 the lower row joins the median's row.
    updates = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0], [10.0, 10.0], [-10.0, -10.0]])
    assert torch.equal(closest_to_median_mean(updates, range(5), 2), torch.tensor([0.5, -0.5]))
    # Only the rows given take part, and their order in `rows` does not matter (only their index does).
    assert torch.equal(closest_to_median_mean(updates, [4, 1, 2, 0, 3], 2), torch.tensor([0.5, -0.5]))
    assert torch.equal(closest_to_median_mean(updates, [3, 2, 1], 2), torch.tensor([-0.5, 0.5]))


def reference_closest_to_median_mean(updates: torch.Tensor, rows, beta: int) -> torch.Tensor:
    """Bulyan's coordinate-wise phase as the paper states it, one coordinate at a time: the median of the
    selected rows' values, the rows sorted by (|value - median|, row index), the mean of the first beta.
    Values and distances in float32 like the rule's, so a distance tie is the same tie here and there."""
    rows = sorted(rows)
    out = []
    for k in range(updates.shape[1]):
        column = updates[rows, k]
        ordered = column.sort().values
        median = (ordered[(len(rows) - 1) // 2] + ordered[len(rows) // 2]) / 2
        distance = {row: (column[i] - median).abs().item() for i, row in enumerate(rows)}
        nearest = sorted(rows, key=lambda row: (distance[row], row))[:beta]
        out.append(sum(updates[row, k].item() for row in nearest) / beta)
    return torch.tensor(out)


def alie_window(n: int, f: int, d: int, seed: int) -> torch.Tensor:
    """n - f honest rows and f identical rows mu - z sigma of them (ALIE with exact collusion, z = Baruch et
    al.'s z_max), shuffled so the colluders sit anywhere in the window."""
    generator = torch.Generator().manual_seed(seed)
    honest = torch.randn(n - f, d, generator=generator)
    colluding = alie(honest[0], honest, alie_z_max(n, f), generator).expand(f, d)
    return torch.cat([honest, colluding])[torch.randperm(n, generator=generator)]


@pytest.mark.parametrize(("n", "f"), [(7, 1), (11, 2), (15, 3)])
@pytest.mark.parametrize("seed", range(4))
def test_bulyan_matches_the_per_coordinate_reference_under_alie(n, f, seed):
    updates = alie_window(n, f, 300, seed)
    result = bulyan(updates, f)
    theta = n - 2 * f
    assert result.selected == tuple(iterated_krum(pairwise_sq_distances(updates), f, theta))  # phase 1 unchanged
    expected = reference_closest_to_median_mean(updates, result.selected, theta - 2 * f)
    assert torch.allclose(result.value, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("n", "f"), [(7, 1), (11, 2), (15, 3)])
def test_bulyan_matches_the_reference_when_most_values_repeat(n, f):
    # Integers in -3..3: every coordinate holds repeated values and ties in distance on both sides.
    updates = torch.randint(-3, 4, (n, 400), generator=torch.Generator().manual_seed(n)).float()
    result = bulyan(updates, f)
    expected = reference_closest_to_median_mean(updates, result.selected, n - 4 * f)
    assert torch.allclose(result.value, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("theta", "beta", "block"), [(5, 3, 7), (6, 2, 16), (130, 100, 64)])
def test_closest_to_median_mean_across_blocks_even_windows_and_long_ones(theta, beta, block):
    # Blocks that do not divide d, an even count (median between two values), and more rows than int8 ranks.
    updates = torch.randint(-5, 6, (theta + 3, 37), generator=torch.Generator().manual_seed(theta)).float()
    rows = list(range(3, theta + 3))
    expected = reference_closest_to_median_mean(updates, rows, beta)
    assert torch.allclose(closest_to_median_mean(updates, rows, beta, block), expected, atol=1e-5, rtol=0)


def test_bulyan_with_f_zero_is_the_mean():
    updates = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(bulyan(updates, 0).value, updates.mean(dim=0), atol=1e-6)


def planted(n: int, f: int, d: int = 1000) -> torch.Tensor:
    """n - f honest rows around 1.0, then f rows far away at -10 (a sign flip x10)."""
    generator = torch.Generator().manual_seed(n * 100 + f)
    honest = 1.0 + 0.1 * torch.randn(n - f, d, generator=generator)
    return torch.cat([honest, torch.full((f, d), -10.0)])


@pytest.mark.parametrize(
    ("name", "n", "f"),
    [("median", 7, 2), ("trimmed_mean", 7, 2), ("krum", 7, 2), ("multi_krum", 7, 2), ("bulyan", 11, 2)],
)
def test_robust_rules_ignore_planted_outliers(name, n, f):
    updates = planted(n, f)
    result = aggregate(name, updates, f)
    honest = updates[: n - f]
    assert (honest.min(dim=0).values <= result.value).all() and (result.value <= honest.max(dim=0).values).all()
    if name in ("krum", "multi_krum"):
        assert set(result.selected) <= set(range(n - f))
    if name == "bulyan":
        # Its last Krum picks score by one neighbour, and the two identical outliers are each other's nearest:
        # one can be selected; the coordinate-wise phase (checked above) is what keeps it out of the value.
        assert len(result.selected) == n - 2 * f and len(set(result.selected) & set(range(n - f))) >= n - 3 * f


def test_the_mean_is_dragged_by_the_same_outliers():
    assert aggregate("mean", planted(7, 2), 2).value.mean() < -1.0


@pytest.mark.parametrize(
    ("name", "n", "f"),
    [
        ("median", 4, 2),
        ("trimmed_mean", 2, 1),
        ("krum", 4, 1),
        ("multi_krum", 6, 2),
        ("bulyan", 6, 1),
        ("bulyan", 10, 2),
    ],
)
def test_check_rule_refuses_windows_below_the_condition(name, n, f):
    with pytest.raises(ValueError) as error:
        check_rule(name, n, f)
    message = str(error.value)
    assert RULES[name].condition in message and f"n={n}" in message and f"f={f}" in message


@pytest.mark.parametrize(
    ("name", "n", "f"),
    [("mean", 1, 3), ("median", 5, 2), ("trimmed_mean", 3, 1), ("krum", 5, 1), ("multi_krum", 7, 2), ("bulyan", 7, 1), ("bulyan", 11, 2)],
)
def test_check_rule_states_the_condition_that_holds(name, n, f):
    assert RULES[name].condition in check_rule(name, n, f)


@pytest.mark.parametrize("m", [0, 5])
def test_multi_krum_m_must_be_between_1_and_n_minus_f(m):
    with pytest.raises(ValueError, match="1 <= m <= n-f"):
        check_rule("multi_krum", 5, 1, m)


def test_aggregate_checks_every_window_and_its_shape():
    with pytest.raises(ValueError, match="krum needs n >= 2f\\+3"):
        aggregate("krum", torch.zeros(4, 3), 1)
    with pytest.raises(ValueError, match="float32 \\[n, d\\]"):
        aggregate("mean", torch.zeros(3), 0)
    with pytest.raises(ValueError, match="float32 \\[n, d\\]"):
        aggregate("mean", torch.zeros(2, 3, dtype=torch.float64), 0)


def test_check_rule_names_an_unknown_rule():
    with pytest.raises(ValueError, match="unknown aggregation rule 'geomed'; known: mean, median"):
        check_rule("geomed", 5, 1)


def test_multi_krum_m_reaches_the_rule_through_aggregate():
    assert aggregate("multi_krum", KRUM_POINTS, 1, m=2).selected == (2, 4)
