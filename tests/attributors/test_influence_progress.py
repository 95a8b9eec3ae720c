"""Influence's progress moves while EK-FAC factors are fitted (per batch of examples), not only once per
fitted member: the app's bar and Cancel depend on it for long fits."""

from __future__ import annotations

from tda_explorer.attributors import make_attributor


def test_ekfac_fit_reports_progress_within_each_member(tiny_run):
    run, train, _ = tiny_run
    calls: list[tuple[int, int, str]] = []
    attr = make_attributor("influence", solver="ekfac", damping_factor=0.1, batch_size=16, seeds="all")
    attr.progress = lambda done, total, msg: calls.append((done, total, msg))
    attr.fit(run, train)
    within = [c for c in calls if "curvature" in c[2]]
    # 2 seeds x (covariances + eigenvalue correction) x 3 batches of 16 examples
    assert len(within) == 2 * 2 * 3
    fractions = [done / total for done, total, _ in within]
    assert fractions == sorted(fractions) and 0 < fractions[0] < fractions[-1] == 1.0
    assert any("member 2/2" in m and "eigenvalue correction (48/48)" in m for _, _, m in within)
