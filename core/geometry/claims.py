"""The papers' claims against this pair's measurements: one row per claim with the number the
paper reports, the number measured here with its interval or noise floor, and a verdict by a rule
fixed in advance (``RULES``), never by looking at the outcome.

Verdicts: ``holds``, ``does not hold``, ``not resolvable`` (the interval or floor cannot decide
at this scale), ``not measured`` (the analysis has no answer yet). The rules use the intervals the
analyses return (Fisher-z for r, percentile bootstrap for VISAGE and the structural difference,
the fitted exponent's interval for the drift) and the papers' own thresholds where they state one
(Table 1's r > 0.77); where a paper states none, the threshold is the analysis's documented
default (``core.geometry.curvature``'s condition thresholds).

Papers: [1] "Curvature-Aware Safety Restoration in LLMs Fine-Tuning" (Table 1, section 2.2,
Table 4); [3] "The Geometry of Alignment Collapse" (the alignment-instability conditions and the
quartic law).
"""

from __future__ import annotations

from typing import Any

HOLDS, FAILS, UNRESOLVED, MISSING = "holds", "does not hold", "not resolvable", "not measured"
HARMFUL_R_FLOOR = 0.77  # [1] Table 1: "strong response similarity (r > 0.77)" on harmful data

RULES = {
    "harmful_r": f"holds if the 95% interval of r lies above {HARMFUL_R_FLOOR}, fails if below it",
    "low_r": (
        f"fails if the set's interval lies above {HARMFUL_R_FLOOR} (as high as [1]'s harmful floor, so not low) or "
        "above the harmful interval; else holds if it lies below the harmful interval"
    ),
    "landscape": (
        "holds if the general set's difference exceeds its same-model noise floor and the harmful interval lies "
        "below the general one; fails if the harmful interval lies above the general one"
    ),
    "visage": "holds if the fine-tune's interval lies below the aligned model's; fails if above it",
    "condition": "the condition's own test on its 95% interval (see the curvature analysis)",
    "quartic": "the drift monitor's verdict on the fitted exponent's interval (see the curvature analysis)",
}


def _r(a: dict) -> str:
    null = f"random-drift null {a['null_r_mean']:.4f}"
    return f"r = {a['r']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}], n = {a['n']}; {null}"


def _row(claim: str, paper: str, measured: str, verdict: str, rule: str, command: str) -> dict[str, str]:
    return {
        "claim": claim,
        "paper": paper,
        "measured": measured,
        "verdict": verdict,
        "rule": RULES[rule],
        "command": command,
    }


def _between(lo: float, hi: float, above: float, below: float) -> str:
    """HOLDS if [lo, hi] lies above ``above``, FAILS if it lies below ``below``, else UNRESOLVED."""
    return HOLDS if lo > above else FAILS if hi < below else UNRESOLVED


def correlation_rows(answer: dict | None, command: str) -> list[dict[str, str]]:
    claims = [
        ("Harmful losses stay correlated after fine-tuning", "r 0.77-0.995 over six models", "harmful"),
        ("Task losses decorrelate, unlike harmful", "r 0.014-0.550", "task"),
        ("General losses decorrelate, unlike harmful", "r -0.055-0.510", "general"),
    ]
    if answer is None:
        return [
            _row(c, f"[1] Table 1: {p}", "-", MISSING, "harmful_r" if s == "harmful" else "low_r", command)
            for c, p, s in claims
        ]
    h = answer["harmful"]
    rows = [
        _row(
            claims[0][0],
            f"[1] Table 1: {claims[0][1]}",
            _r(h),
            _between(h["ci_low"], h["ci_high"], HARMFUL_R_FLOOR, HARMFUL_R_FLOOR),
            "harmful_r",
            command,
        )
    ]
    for claim, paper, name in claims[1:]:
        a = answer[name]
        if a["ci_low"] > HARMFUL_R_FLOOR or a["ci_low"] > h["ci_high"]:
            verdict = FAILS  # as high as [1]'s harmful r is not "low", even a hair below the harmful r
        elif a["ci_high"] < h["ci_low"]:
            verdict = HOLDS
        else:
            verdict = UNRESOLVED
        rows.append(_row(claim, f"[1] Table 1: {paper}", _r(a), verdict, "low_r", command))
    return rows


def landscape_rows(answer: dict | None, command: str) -> list[dict[str, str]]:
    claim = "Fine-tuning changes the general landscape's curvature, not the harmful one's (Laplacian difference)"
    paper = "[1] section 2.2: harmful 1.46%, general 20.37%"
    if answer is None or "benign" not in answer.get("structural_difference", {}):
        return [_row(claim, paper, "-", MISSING, "landscape", command)]
    sd, ci, floor = (
        answer[k] for k in ("structural_difference", "structural_difference_interval", "structural_difference_floor")
    )
    text = "; ".join(
        f"{label} {sd[s]:.1f}% [{ci[s][0]:.1f}, {ci[s][1]:.1f}] (floor {floor.get(s, float('nan')):.1f}%)"
        for s, label in (("harmful", "harmful"), ("benign", "general"))
    )
    if ci["harmful"][0] > ci["benign"][1]:
        verdict = FAILS
    elif ci["benign"][0] > floor.get("benign", 0.0) and ci["harmful"][1] < ci["benign"][0]:
        verdict = HOLDS
    else:
        verdict = UNRESOLVED
    return [_row(claim, paper, text, verdict, "landscape", command)]


def basin_rows(answer: dict | None, command: str) -> list[dict[str, str]]:
    claim = "A fine-tune's safety basin is narrower than a safe model's (VISAGE)"
    paper = "[1] Table 4: LoRA fine-tune 21.1 vs curvature-restored 56.1 (here: vs the aligned base)"
    if answer is None or not {"base", "finetuned"} <= answer.keys():
        return [_row(claim, paper, "-", MISSING, "visage", command)]
    b, f = answer["base"], answer["finetuned"]
    text = (
        f"aligned {b['visage']:.1f} [{b['visage_ci'][0]:.1f}, {b['visage_ci'][1]:.1f}], "
        f"fine-tune {f['visage']:.1f} [{f['visage_ci'][0]:.1f}, {f['visage_ci'][1]:.1f}]; "
        f"basin radius {b['basin_radius']:.3f} vs {f['basin_radius']:.3f}"
    )
    verdict = (
        HOLDS
        if f["visage_ci"][1] < b["visage_ci"][0]
        else FAILS
        if f["visage_ci"][0] > b["visage_ci"][1]
        else UNRESOLVED
    )
    return [_row(claim, paper, text, verdict, "visage", command)]


CONDITIONS = (
    ("low_dimensional", "A low-dimensional safety subspace"),
    ("sharp_curvature", "Sharp curvature along it"),
    ("coupling", "The task's curvature couples into it"),
)


def curvature_rows(answer: dict | None, command: str) -> list[dict[str, str]]:
    rows = []
    aligned = (answer or {}).get("aligned", {}).get("conditions", {})
    for key, claim in CONDITIONS:
        paper = "[3] alignment-instability condition, on the aligned model under the task gradient"
        c = aligned.get(key)
        if c is None:
            rows.append(_row(claim, paper, "-", MISSING, "condition", command))
            continue
        verdict = UNRESOLVED if not c["resolved"] else HOLDS if c["holds"] else FAILS
        text = f"{c['what']}: {c['value']:.3g} [{c['ci_low']:.3g}, {c['ci_high']:.3g}], threshold {c['threshold']:g}"
        rows.append(_row(claim, paper, text, verdict, "condition", command))
    drift = (answer or {}).get("drift")
    claim, paper = "Alignment loss grows as t^4 under fine-tuning", "[3] quartic law, R^2 > 0.96"
    if not drift:
        return [*rows, _row(claim, paper, "-", MISSING, "quartic", command)]
    fits = drift["fits"]
    free = fits["free"]
    text = (
        f"free exponent {free['exponent']:.2f} [{free['ci_low']:.2f}, {free['ci_high']:.2f}]; "
        f"R^2 t^2 {fits['t^2']['r2']:.3f}, t^4 {fits['t^4']['r2']:.3f}"
    )
    label = drift["verdict"]["label"]
    verdict = HOLDS if label == "t^4 supported" else UNRESOLVED if label == "not resolvable" else FAILS
    return [*rows, _row(claim, paper, text, verdict, "quartic", command)]


def claims_table(answers: dict[str, dict | None], world_argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Every claim row, from the analyses' answers (``None`` where an analysis has not run)."""
    tail = " ".join(["--json", *(world_argv or [])]).strip()
    cmd = {name: f"python -m core {name} {tail}".strip() for name in ("correlate", "landscape", "basin", "curvature")}
    return [
        *correlation_rows(answers.get("correlate"), cmd["correlate"]),
        *landscape_rows(answers.get("landscape"), cmd["landscape"]),
        *basin_rows(answers.get("basin"), cmd["basin"]),
        *curvature_rows(answers.get("curvature"), cmd["curvature"]),
    ]
