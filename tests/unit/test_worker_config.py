"""A WAN preset's compute_speed factors fold into the run's per-worker speeds."""

from dist_llm_train.worker.config import WorkersConfig


def test_speed_factors_multiply_cyclically_over_both_lists():
    workers = WorkersConfig(count=8, speed=[1.0, 0.5])
    scaled = workers.with_speed_factors([0.25, 1.0, 1.0, 1.0])
    # lcm(2, 4) = 4 entries: worker i gets speed[i % 2] * factor[i % 4]
    assert scaled.speed == [0.25, 0.5, 1.0, 0.5]
    assert [scaled.entry(scaled.speed, i) for i in range(8)] == [0.25, 0.5, 1.0, 0.5] * 2


def test_unit_factors_leave_the_config_unchanged():
    workers = WorkersConfig(speed=[1.0, 0.5])
    assert workers.with_speed_factors([1.0, 1.0, 1.0]) is workers
