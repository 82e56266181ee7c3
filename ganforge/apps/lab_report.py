"""The lab's report: mean ± std over seeds per setting (a table on screen and in table.md), results.json, and the
pictures — a plot of each score against each swept setting, and scatter plots for 2D mixtures."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from .. import registry

# How a result is shown: column title and scale (shares as percentages). Other keys show under their own name.
_SHOW = {"modes": ("modes", 1), "high_quality": ("high quality %", 100), "reverse_kl": ("reverse KL", 1),
         "classes_covered": ("classes covered", 1), "confident": ("confident %", 100),
         "class_fd": ("class FD", 1), "class_fd_floor": ("class FD floor", 1), "class_fd_ratio": ("FD / floor", 1)}
_MIXTURE_KEYS = ("modes", "high_quality", "reverse_kl")


def metric_blocks(spec) -> list:
    """``--metric``: a name, ``a,b``, or a YAML flow list of plugin blocks (``[{type: fid}, kid]``)."""
    from ..metrics_config import parse_compute

    return parse_compute(spec, "--metric")


def score_keys(results, scoring) -> list[str]:
    """The results a table shows: the mixture trio, else the metrics' declared keys (all float results if a
    metric does not declare them), in their declared order."""
    if scoring.kind == "mixture":
        return list(_MIXTURE_KEYS)
    keys: list[str] = []
    for b in scoring.metrics.compute:
        declared = getattr(registry.get("metric", b["type"]).obj, "keys", None)
        keys += list(declared) if declared is not None else sorted(results[0].metrics) if results else []
    return [k for k in dict.fromkeys(keys) if all(k in r.metrics for r in results)]


def brief(m: dict[str, float]) -> str:
    if "modes" in m:
        return f"{m['modes']:.0f} modes, {100 * m['high_quality']:.1f}% high quality, reverse KL {m['reverse_kl']:.3f}"
    shown = [k for k in _SHOW if k in m and k != "class_fd_floor"] or [k for k in m if "/" not in k][:3]

    def one(k):
        title, scale = _SHOW.get(k, (k, 1))
        return f"{title[:-2]} {100 * m[k]:.1f}%" if scale == 100 else f"{title} {m[k]:.4g}"

    return ", ".join(one(k) for k in shown)


def mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return math.inf, 0.0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list, axes: list, keys: list[str]) -> list[dict]:
    """One row per combination of settings: mean and sample std over seeds of each key."""
    groups: dict[tuple, list] = {}
    for r in sorted(results, key=lambda r: r.spec.index):
        groups.setdefault(tuple(r.spec.settings.values()), []).append(r)
    rows = []
    for combo, rs in groups.items():
        timed = [r.seconds for r in rs if math.isfinite(r.seconds)]
        row = {**dict(zip([a.label for a in axes], combo)), "seeds": len(rs),
               "seconds": statistics.fmean(timed) if timed else math.nan}
        for key in keys:
            row[key], row[key + "_std"] = mean_std([r.metrics[key] for r in rs])
        rows.append(row)
    return rows


def format_table(rows: list[dict], axes: list, keys: list[str], n_modes: int | None = None,
                 markdown: bool = False) -> str:
    labels = [a.label for a in axes]
    titles = [f"modes (of {n_modes})" if k == "modes" and n_modes else _SHOW.get(k, (k, 1))[0] for k in keys]
    head = labels + ["seeds"] + titles + ["s/run"]

    def cells(r):
        out = [r[a] for a in labels] + [str(r["seeds"])]
        for k in keys:
            scale = _SHOW.get(k, (k, 1))[1]
            out.append("inf" if math.isinf(r[k]) else f"{r[k] * scale:.4g} ± {r[k + '_std'] * scale:.2g}")
        return out + [f"{r['seconds']:.0f}" if math.isfinite(r["seconds"]) else "reused"]

    body = [cells(r) for r in rows]
    n = len(labels)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * n + ["---:"] * (len(head) - n)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cs: "  ".join(c.ljust(w) if i < n else c.rjust(w) for i, (c, w) in enumerate(zip(cs, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in body])


def strict_json(obj):
    """NaN/inf are not JSON: an unknown wall time becomes null, an infinite reverse KL the string "inf"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def write(results, axes, base, scoring, net, seeds, jobs, wall, out: Path, recipe_path, overrides, echo) -> list:
    from .lab_plots import settings_plot, write_scatter

    keys = score_keys(results, scoring)
    rows = summarize(results, axes, keys)
    source = registry.build("dataset", base.data.source, "data.source")
    n_modes = len(source.means) if scoring.kind == "mixture" else None
    what = ("high quality: within 3σ of a mode" if scoring.kind == "mixture"
            else ", ".join(b["type"] for b in scoring.metrics.compute))
    echo("")
    echo(f"{base.data.source['type']}: mean ± std over seeds {seeds}, {scoring.n} samples from "
         f"{'G_ema' if net == 'ema' else 'G'} per run ({what})")
    echo(format_table(rows, axes, keys, n_modes))
    (out / "table.md").write_text(format_table(rows, axes, keys, n_modes, markdown=True) + "\n")
    runs = [{"name": r.spec.name, **r.spec.settings, "seed": r.spec.seed, "steps": r.steps, "seconds": r.seconds,
             **r.metrics} for r in sorted(results, key=lambda r: r.spec.index)]
    (out / "results.json").write_text(json.dumps(strict_json({
        "recipe": str(recipe_path), "overrides": list(overrides), "dataset": base.data.source,
        "axes": {a.label: [v.label for v in a.variants] for a in axes}, "seeds": seeds, "samples": scoring.n,
        "scoring": scoring.kind if scoring.kind == "mixture" else scoring.metrics.compute, "net": net,
        "jobs": jobs, "wall_seconds": wall, "summary": rows, "runs": runs}), indent=1))
    pictures = []
    swept = [a for a in axes if len(a.variants) > 1]
    if swept:  # the floor is a reference for class_fd, not a score that settings move
        plotted = [k for k in keys if k != "class_fd_floor"]
        pictures.append(settings_plot(results, swept, plotted, out / "plot.png"))
    if scoring.kind == "mixture":
        pictures.append(write_scatter(results, source, out))
    echo(f"\n{len(results)} runs in {wall:.0f} s; table: {out / 'table.md'}"
         + "".join(f", {p.name}: {p}" for p in pictures))
    return rows


def per_setting(results, axis_label: str, key: str) -> tuple[list[str], list[np.ndarray]]:
    """Values of ``key`` of every run, grouped by the setting of one axis (in the axis's order)."""
    labels: list[str] = []
    for r in sorted(results, key=lambda r: r.spec.index):
        if r.spec.settings[axis_label] not in labels:
            labels.append(r.spec.settings[axis_label])
    vals = [np.array([r.metrics[key] for r in results if r.spec.settings[axis_label] == lab]) for lab in labels]
    return labels, vals
