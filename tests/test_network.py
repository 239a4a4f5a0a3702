"""Links, drawn as network.py promises: jitter uniform over [0, jitter_us], and exactly two draws per event."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cosim.loading import load
from cosim.network import Delivery, Drop, Router
from cosim.seeds import link_seed

SEED = 20240611


def router(directory: Path, *, jitter_us: int, loss: float) -> Router:
    path = directory / "link.yaml"
    path.write_text(f"""\
name: link
seed: {SEED}
duration_us: 1000
quantum_us: 1000
nodes:
  - {{id: a, kind: sensor, period_us: 1000, links: [{{to: b, latency_us: 1000, jitter_us: {jitter_us}, loss: {loss}}}]}}
  - {{id: b, kind: sink}}
routes:
  - {{from: a, to: [b]}}
""", encoding="utf-8")
    return Router(load(path))


def test_jitter_is_uniform_over_zero_to_jitter_us(tmp_path: Path) -> None:
    """Pearson's chi-square goodness of fit against the uniform distribution on {0, ..., jitter_us}."""
    jitter_us, draws = 9, 50_000
    link = router(tmp_path, jitter_us=jitter_us, loss=0.0)
    counts = [0] * (jitter_us + 1)
    for _ in range(draws):
        outcome = link.transmit("a", "b", 0)
        assert isinstance(outcome, Delivery)
        counts[outcome.time_us - 1000] += 1
    expected = draws / (jitter_us + 1)
    chi_square = sum((count - expected) ** 2 / expected for count in counts)
    # 9 degrees of freedom: P(chi2 > 27.88) = 0.001 for a uniform source. The seed is fixed, so this is
    # deterministic; a bias such as never drawing jitter_us itself (int(draw * jitter_us)) gives chi2 > 5000.
    assert chi_square < 27.88, (chi_square, counts)
    assert min(counts) > 0


def test_loss_rate_matches_the_probability(tmp_path: Path) -> None:
    link = router(tmp_path, jitter_us=0, loss=0.3)
    lost = sum(isinstance(link.transmit("a", "b", 0), Drop) for _ in range(20_000))
    # Binomial(20000, 0.3): standard deviation 64.8; 5 sigma either side.
    assert abs(lost - 6000) < 5 * 64.8, lost


@pytest.mark.parametrize(("jitter_us", "loss"), [(0, 0.0), (500, 0.0), (0, 0.5), (500, 0.5), (1, 0.999999)])
def test_every_event_draws_exactly_two_numbers_whatever_the_settings(tmp_path: Path, jitter_us: int,
                                                                      loss: float) -> None:
    link = router(tmp_path, jitter_us=jitter_us, loss=loss)
    events = 1000
    for sent_us in range(events):
        link.transmit("a", "b", sent_us)
    reference = random.Random(link_seed(SEED, "a", "b"))
    for _ in range(2 * events):
        reference.random()
    assert link._rngs[("a", "b")].getstate() == reference.getstate()
