"""The pruning benchmark's tables (`benchmarks/pruning.py`): the rows' names, the targets checked, the markdown.

Row names: "<attributor> · <rule>" for attribution rules (RULES one-shot, ITERATIVE round by round), the
baselines BASELINES and MISLABEL_ROW, and "random". Rows ending in COMBINED_SUFFIXES combine attribution
with a loss or mislabel signal and are reported apart from pure attribution.
"""

from __future__ import annotations

import numpy as np

from benchmarks.console import t_interval

BASELINES = ("own loss (EL2N-like)", "cleanlab label issues")
RULES = ("class_balanced", "harm", "harm_loss", "harm_mislabel")  # per attributor (PRUNING_RULES)
#: Iterative rules per attributor (TRAK's refit per round is too slow on 2 cores).
ITERATIVE = {
    "grad_dot": ("iterative_harm",),
    "influence/ekfac": ("iterative_harm", "iterative_harm_mislabel"),
}
MISLABEL_ROW = "mislabel score (oof margin + own loss + kNN)"
#: Rows that combine attribution with a mislabel signal (reported apart from pure attribution).
COMBINED_SUFFIXES = ("harm_loss", "harm_mislabel")
NOT_ATTRIBUTION = ("random", *BASELINES, MISLABEL_ROW)


def _fmt(t) -> str:
    mean, lo, hi = t
    return f"{mean:.4f}" if np.isnan(lo) else f"{mean:.4f} ±{(hi - lo) / 2:.4f}"


def paired(rows: dict[str, dict], name: str, others: tuple[str, ...], i: int) -> str:
    """ " (paired over the retraining seeds: <name> − <other> mean ±half a 95% t-interval, ...)" at fraction
    index `i`, for the rows that stored per-seed accuracies (`acc_seeds` `[K][R]`, the same seeds); "" when
    one lacks them. Same-seed retrainings share their noise, so the paired interval is the one that says
    whether a margin is more than retraining noise."""

    if "acc_seeds" not in rows[name] or any("acc_seeds" not in rows[o] for o in others):
        return ""
    parts = []
    for o in others:
        d = np.asarray(rows[name]["acc_seeds"][i]) - np.asarray(rows[o]["acc_seeds"][i])
        if len(d) < 2:
            return ""
        mean, low, _ = t_interval(d)
        half = mean - low
        parts.append(f"− {o} {d.mean():+.4f} ±{half:.4f}")
    return " (paired over the seeds: " + "; ".join(parts) + ")"


def targets(
    setting: dict, which: str = "best_attribution_rule", label: str = "best attribution rule"
) -> list[str]:
    """The issue's targets checked on one setting (met / missed, per fraction) for the rule `setting[which]`."""
    rows = {r["rule"]: r for r in setting["rows"]}
    best = rows[setting[which]]
    fr = setting["fractions"]
    mean = {k: [a[0] for a in r["acc"]] for k, r in rows.items()}
    b = mean[best["rule"]]
    full = b[0]
    out = []
    if setting["noise"]:
        for i, f in enumerate(fr):
            if f == 0:
                continue
            others = {k: mean[k][i] for k in ("random", *BASELINES)}
            ok = b[i] > full and all(b[i] > v for v in others.values())
            out.append(
                f"- {f:.0%} removed: {label} ({best['rule']}) {b[i]:.4f} vs full noisy "
                f"{full:.4f}, "
                + ", ".join(f"{k} {v:.4f}" for k, v in others.items())
                + f": {'met' if ok else 'MISSED'}"
                + paired(rows, best["rule"], BASELINES, i)
            )
    else:
        wins = [f"{f:.0%}" for i, f in enumerate(fr) if f > 0 and b[i] > mean["random"][i]]
        losses = [f"{f:.0%}" for i, f in enumerate(fr) if f > 0 and b[i] <= mean["random"][i]]
        out.append(
            f"- beats random at >= one fraction with the {label} ({best['rule']}): "
            f"{'met' if wins else 'MISSED'} (above random at {', '.join(wins) or 'none'}; "
            f"not above at {', '.join(losses) or 'none'})"
        )
    return out


def winners(setting: dict) -> list[str]:
    """The attribution rules above random, own loss and cleanlab at every removed fraction (and, with noise,
    above the full noisy set)."""
    rows = {r["rule"]: [a[0] for a in r["acc"]] for r in setting["rows"]}
    others = [rows[k] for k in ("random", *BASELINES)]
    keep = [i for i, f in enumerate(setting["fractions"]) if f > 0]
    return [
        name
        for name, acc in rows.items()
        if name not in NOT_ATTRIBUTION
        and all(acc[i] > o[i] for i in keep for o in others)
        and (not setting["noise"] or all(acc[i] > acc[0] for i in keep))
    ]


def rule_means(setting: dict) -> dict[str, float]:
    """`{rule: mean test accuracy over the attributors and the removed fractions}` for each rule of `RULES`
    and `ITERATIVE` (the iterative ones over fewer attributors: no TRAK) (how `DEFAULT_PRUNING_RULE` is chosen: the app picks the attributor separately, so a rule must do
    well whichever attributor feeds it)."""
    keep = [i for i, f in enumerate(setting["fractions"]) if f > 0]
    out = {}
    for rule in (*RULES, *dict.fromkeys(r for rs in ITERATIVE.values() for r in rs)):
        accs = [r["acc"][i][0] for r in setting["rows"] if r["rule"].endswith(f" · {rule}") for i in keep]
        if accs:
            out[rule] = float(np.mean(accs))
    return out


def markdown(result: dict) -> str:
    out = [
        "MNIST 5k, logistic regression and MLP (the package's default recipes); usefulness from validation-set scores, test "
        "accuracy after retraining on the kept set, mean over the run's seeds ± half a 95% t-interval. "
        "The best rule is picked on these same test curves (`best_pruning_rule`), so its margin is "
        "optimistic; every rule's row is shown. 'iterative_*' rules remove 2.5% of the training set per round, "
        "retraining on the kept set and re-scoring before each round; '* · harm_loss' / '* · harm_mislabel' "
        "combine attribution with the own loss / the combined mislabel score (reported apart from pure "
        "attribution). The 10%-flipped logistic-regression setting is repeated on flip seed 1 (Grad-Dot and "
        "EK-FAC only), where nothing was picked, to see whether a margin picked on seed 0 holds on other flips; "
        "'paired over the seeds' is the mean same-seed difference ± half its 95% t-interval.",
        f"Wall time {result['wall_seconds']:.0f} s (cached steps not re-run); 1-minute load at the end "
        f"{result['machine']['load_end'][0]:.1f} on {result['machine']['cpus']} CPUs (a shared machine).",
    ]
    for s in result["settings"]:
        head = "| rule | " + " | ".join(f"{f:.0%} removed" for f in s["fractions"]) + " |"
        title = (f"10% flipped labels (seed {s.get('flip_seed', 0)})" if s["noise"] else "clean labels") + (
            ", MLP" if s.get("model") == "mlp" else ", logistic regression"
        )
        out += [
            "",
            f"**{title}**, seeds {s['seeds']}; retraining every distinct kept set took {s['seconds']['retraining']:.0f} s; "
            f"best attribution rule: {s['best_attribution_rule']}; best combined with a loss or mislabel score: "
            f"{s.get('best_combined_rule', '-')}; best overall: {s['best_rule']}"
            + (
                f". Rows marked † were measured on {s['carried_over_from'][:16]} and not re-run"
                + (" (the random row reproduced exactly)" if s.get("model", "logreg") == "logreg" else "")
                if s.get("carried_over_from")
                else ""
            ),
            "",
            head,
            "|" + " --- |" * (len(s["fractions"]) + 1),
        ]
        for r in sorted(s["rows"], key=lambda r: -np.mean([a[0] for a in r["acc"][1:]])):
            cells = [_fmt(a) for a in r["acc"]]
            if r.get("flipped_share"):
                cells = [
                    c if f is None else f"{c} ({f:.0%} flips)"
                    for c, f in zip(cells, r["flipped_share"], strict=True)
                ]
            mark = (
                " †"
                if r.get("carried_over") or s.get("model") == "mlp" and s.get("carried_over_from")
                else ""
            )
            out.append(f"| {r['rule']}{mark} | " + " | ".join(cells) + " |")
        diag = s.get("diagnosis_grad_dot")
        if diag:
            out += [
                "",
                f"Why the summed rule (the earlier one) loses: Grad-Dot's lowest 10% under 'sum' takes "
                f"{diag['sum_removed_per_class']} examples per class (class-balanced: "
                f"{diag['class_balanced_removed_per_class']}); |usefulness| has Spearman "
                f"{diag['spearman_abs_usefulness_self_influence']:.2f} with the gradient norm (self-influence), "
                "so both tails are the large-gradient (hard) examples of a few classes.",
            ]
        out += ["", "Targets:", "", *targets(s)]
        combined = s.get("best_combined_rule")
        if combined and combined != s["best_attribution_rule"]:
            out += [
                "",
                "With attribution combined with the own loss or the mislabel score:",
                "",
                *targets(s, "best_combined_rule", "best combined rule"),
            ]
        means = rule_means(s)
        out += [
            "",
            f"Rules above random, own loss and cleanlab at every fraction: {', '.join(winners(s)) or 'none'}. "
            "Each rule's mean accuracy over the attributors and the removed fractions: "
            + ", ".join(f"{k} {v:.4f}" for k, v in sorted(means.items(), key=lambda kv: -kv[1]))
            + f" (random {np.mean([a[0] for a in s['rows'][0]['acc'][1:]]):.4f}).",
        ]
        rows = {r["rule"]: [a[0] for a in r["acc"]] for r in s["rows"]}
        if MISLABEL_ROW in rows:
            names = dict.fromkeys((s["best_attribution_rule"], s["best_combined_rule"]))
            out += [
                "",
                f"Against the {MISLABEL_ROW} alone (no attribution; not one of the issue's baselines): "
                + "; ".join(
                    f"{f:.0%}: "
                    + ", ".join(f"{n} {rows[n][i]:.4f}" for n in names)
                    + f" vs {rows[MISLABEL_ROW][i]:.4f}"
                    for i, f in enumerate(s["fractions"])
                    if f > 0
                )
                + ".",
            ]
    return "\n".join(out)
