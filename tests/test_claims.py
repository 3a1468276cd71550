"""The claims table's verdicts on planted answers: each rule's three outcomes and a missing answer."""

from __future__ import annotations

import pytest

from core.geometry.claims import FAILS, HOLDS, MISSING, UNRESOLVED, claims_table
from core.service.commands import parser


def _r(r: float, lo: float, hi: float) -> dict:
    return {"r": r, "ci_low": lo, "ci_high": hi, "n": 100, "null_r_mean": 0.9999}


def _verdicts(answers: dict) -> dict[str, str]:
    return {row["claim"]: row["verdict"] for row in claims_table(answers)}


def _one(answers: dict, word: str) -> str:
    (verdict,) = [v for claim, v in _verdicts(answers).items() if word in claim]
    return verdict


@pytest.mark.parametrize(
    ("harmful", "general", "want_harmful", "want_general"),
    [
        (_r(0.95, 0.93, 0.97), _r(0.10, -0.1, 0.3), HOLDS, HOLDS),  # the paper's picture
        (_r(0.99, 0.985, 0.995), _r(0.98, 0.97, 0.99), HOLDS, FAILS),  # general as high as harmful
        (_r(0.70, 0.60, 0.76), _r(0.50, 0.40, 0.65), FAILS, UNRESOLVED),  # below 0.77; overlapping
        (_r(0.80, 0.70, 0.88), _r(0.30, 0.10, 0.45), UNRESOLVED, HOLDS),  # interval holds 0.77
        (_r(0.992, 0.988, 0.995), _r(0.982, 0.974, 0.9879), HOLDS, FAILS),  # below harmful, yet not low
    ],
)
def test_correlation_verdicts(harmful, general, want_harmful, want_general):
    answers = {"correlate": {"harmful": harmful, "task": general, "general": general}}
    assert _one(answers, "Harmful losses") == want_harmful
    assert _one(answers, "General losses") == want_general
    assert _one(answers, "Task losses") == want_general


def _landscape(harmful: tuple, benign: tuple, floor: float) -> dict:
    return {
        "landscape": {
            "structural_difference": {"harmful": harmful[0], "benign": benign[0]},
            "structural_difference_interval": {"harmful": list(harmful[1:]), "benign": list(benign[1:])},
            "structural_difference_floor": {"harmful": floor, "benign": floor},
        }
    }


def test_landscape_verdicts():
    assert _one(_landscape((1.5, 0.5, 3.0), (20.0, 15.0, 25.0), 5.0), "landscape") == HOLDS
    assert _one(_landscape((1.5, 0.5, 3.0), (20.0, 15.0, 25.0), 16.0), "landscape") == UNRESOLVED  # under floor
    assert _one(_landscape((30.0, 26.0, 35.0), (20.0, 15.0, 25.0), 5.0), "landscape") == FAILS  # reversed
    assert _one(_landscape((13.5, 6.4, 26.5), (7.8, 3.6, 15.6), 16.3), "landscape") == UNRESOLVED


def _basin(base_ci: list, ft_ci: list) -> dict:
    def model(ci):
        return {"visage": sum(ci) / 2, "visage_ci": ci, "basin_radius": 0.1}

    return {"basin": {"base": model(base_ci), "finetuned": model(ft_ci)}}


def test_basin_verdicts():
    assert _one(_basin([60, 80], [10, 30]), "basin") == HOLDS
    assert _one(_basin([10, 30], [60, 80]), "basin") == FAILS
    assert _one(_basin([20, 60], [10, 30]), "basin") == UNRESOLVED


def test_curvature_verdicts_follow_each_condition_and_the_drift_label():
    def cond(holds, resolved):
        return {
            "holds": holds,
            "resolved": resolved,
            "value": 1.0,
            "ci_low": 0.5,
            "ci_high": 1.5,
            "threshold": 1.0,
            "what": "x",
        }

    fit = {"exponent": 2.0, "r2": 0.9, "ci_low": 1.8, "ci_high": 2.2}
    answer = {
        "aligned": {
            "conditions": {
                "low_dimensional": cond(True, True),
                "sharp_curvature": cond(False, True),
                "coupling": cond(True, False),
            }
        },
        "drift": {"fits": {"free": fit, "t^2": fit, "t^4": fit}, "verdict": {"label": "not supported"}},
    }
    got = _verdicts({"curvature": answer})
    assert got["A low-dimensional safety subspace"] == HOLDS
    assert got["Sharp curvature along it"] == FAILS
    assert got["The task's curvature couples into it"] == UNRESOLVED
    assert got["Alignment loss grows as t^4 under fine-tuning"] == FAILS
    answer["drift"]["verdict"]["label"] = "t^4 supported"
    assert _verdicts({"curvature": answer})["Alignment loss grows as t^4 under fine-tuning"] == HOLDS


def test_missing_answers_say_not_measured_and_name_the_command():
    rows = claims_table({}, ["--seed", "1"])
    assert {r["verdict"] for r in rows} == {MISSING}
    assert len(rows) == 9
    assert all(r["command"].endswith("--json --seed 1") for r in rows)


def test_claims_is_a_command_with_the_world_options():
    args = parser().parse_args(["claims", "--seed", "1", "--harmful-examples", "50"])
    assert (args.command, args.seed, args.harmful_examples) == ("claims", 1, 50)
