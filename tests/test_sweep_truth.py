"""``sweep_truth.best_global_line``: the truth table's sentence on the best global action (the
single action with the highest true mean of the first objective), its runner-up, and whether the
frontier's estimates of the two on the evaluation log overlap."""

import numpy as np

from puts_jax.sweep_truth import best_global_line


def _doc(lo, hi, names=("session_success", "clicks")):
    """A frontier with 3 single actions; lo / hi: f[3] bounds of the first objective."""
    col = lambda x: [[v, 0.0] for v in x]  # noqa: E731
    return {"objectives": {"names": list(names)}, "primary_estimator": "snips",
            "confidence": 0.95, "baselines": {"actions": {"estimators": {"snips": {
                "value": col([0.2, 0.3, 0.25]), "lo": col(lo), "hi": col(hi)}}}}}


MEANS = np.array([0.20, 0.31, 0.30])  # action 1 best, action 2 runner-up
HEAD = ("best global action = the single action with the highest true mean session_success (the "
        "simulator's exact population mean): action 1 (population mean 0.3100); runner-up action "
        "2 (0.3000, -0.0100)")


def test_overlapping_and_disjoint_intervals_on_the_evaluation_log():
    over = best_global_line(MEANS, 1, "session_success", _doc([0.1, 0.25, 0.2], [0.3, 0.35, 0.3]))
    assert over == HEAD + ("; on the evaluation log their snips 95% intervals overlap: the log "
                           "cannot tell them apart")
    apart = best_global_line(MEANS, 1, "session_success", _doc([0.1, 0.28, 0.2], [0.3, 0.35, 0.27]))
    assert apart == HEAD + "; on the evaluation log their snips 95% intervals are disjoint"


def test_without_the_frontiers_estimates_it_says_not_tested():
    no_actions = {"objectives": {"names": ["session_success"]}, "primary_estimator": "snips",
                  "confidence": 0.95, "baselines": {}}
    assert best_global_line(MEANS, 1, "session_success", no_actions) == \
        HEAD + "; not tested against the runner-up on the evaluation log"
    null = best_global_line(MEANS, 1, "session_success", _doc([0.1, None, 0.2], [0.3, 0.35, 0.3]))
    assert null == HEAD + ("; not tested against the runner-up on the evaluation log (an interval "
                           "bound is not available)")
    assert best_global_line(np.array([0.4]), 0, "session_success", no_actions).endswith(
        "action 0 (population mean 0.4000); no runner-up (one action)")
