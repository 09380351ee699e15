import numpy as np

from distributed.results.metrics import confusion, per_class, uar, war


def test_war_uar_against_hand_computation():
    y = [0, 0, 0, 0, 1, 2]
    p = [0, 0, 0, 1, 1, 0]
    cm = confusion(y, p, 3)
    np.testing.assert_array_equal(cm, [[3, 1, 0], [0, 1, 0], [1, 0, 0]])
    assert war(cm) == 4 / 6
    assert abs(uar(cm) - (0.75 + 1.0 + 0.0) / 3) < 1e-12
    pc = per_class(cm)
    assert pc["support"] == [4, 1, 1]
    assert abs(pc["precision"][0] - 0.75) < 1e-12 and abs(pc["recall"][0] - 0.75) < 1e-12


def test_uar_ignores_absent_classes():
    cm = confusion([0, 1], [0, 0], 4)
    assert uar(cm) == 0.5
