"""Benchmark output: tidy CSVs (with provenance columns), summaries, paired comparisons, line plots.

Re-exported by :mod:`common`, which the benchmark scripts import.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewshotcx.io import tables  # noqa: E402


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Tidy CSV (one row per measurement, columns in first-seen order), written atomically; a
    benchmark's output folder is its own, so an earlier CSV of the same name is replaced.

    Every row gets the provenance columns ``git_commit`` and ``checkpoint_sha256``
    (:func:`provenance`) unless it has them already."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from provenance import provenance

    if not rows:
        raise ValueError(f"no rows to write to {path}")
    stamp = provenance()
    columns = list(dict.fromkeys([*(k for row in rows for k in row), *stamp]))  # provenance last
    return tables.write_csv([{**stamp, **r} for r in rows], path, columns, overwrite=True)


def summarise(rows: Sequence[dict[str, Any]], group: Sequence[str], value: str = "dice") -> list[dict[str, Any]]:
    """Mean, sd and count of the finite ``value`` per combination of the ``group`` columns (first-seen order)."""
    buckets: dict[tuple, list[float]] = {}
    for row in rows:  # NaN = nothing to predict (e.g. no unlabelled slice shows the structure): left out
        values = buckets.setdefault(tuple(row[g] for g in group), [])
        if np.isfinite(float(row[value])):
            values.append(float(row[value]))
    return [{**dict(zip(group, key)), f"{value}_mean": round(float(np.mean(v)), 4) if v else float("nan"),
             f"{value}_sd": round(float(np.std(v)), 4) if v else float("nan"), "n": len(v)}
            for key, v in buckets.items()]


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    """Fixed-width table of dict rows (all with the same keys)."""
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys))


def write_and_show(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Write ``rows`` (:func:`write_csv`), then print ``# title — <machine>``, the rows as a table without
    their ``machine`` column, and where they went."""
    write_csv(rows, path)
    print(f"# {title} — {rows[0]['machine']}")
    print_table([{k: v for k, v in r.items() if k != "machine"} for r in rows])
    print(f"wrote {path}")


def write_with_summary(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]], out: Path, name: str,
                       titles: tuple[str, str]) -> None:
    """Write and show ``rows`` as ``out/<name>.csv`` and ``summary`` (given the rows' ``machine``) as
    ``out/<name>_summary.csv`` (:func:`write_and_show`, ``titles`` for the two)."""
    write_and_show(rows, out / f"{name}.csv", titles[0])
    write_and_show([s | {"machine": rows[0]["machine"]} for s in summary], out / f"{name}_summary.csv", titles[1])


def paired_difference(rows: Sequence[dict[str, Any]], column: str, a: Any, b: Any, match: Sequence[str],
                      value: str = "dice") -> dict[str, Any]:
    """Compare ``column == b`` against ``column == a`` on rows matched by the ``match`` columns.

    Returns:
        ``pairs``, ``mean_diff`` (mean of b - a), ``sd_diff``, ``b_higher`` / ``a_higher`` (counts
        of pairs where one is strictly higher), ``mean_a``, ``mean_b``.
    """
    def keyed(level: Any) -> dict[tuple, float]:
        return {tuple(r[m] for m in match): float(r[value]) for r in rows if r[column] == level}

    first, second = keyed(a), keyed(b)
    common = [k for k in first if k in second]
    if not common:
        return {"compare": f"{column}: {b} vs {a}", "pairs": 0}
    diff = np.array([second[k] - first[k] for k in common])
    return {"compare": f"{column}: {b} vs {a}", "pairs": len(common),
            "mean_a": round(float(np.mean([first[k] for k in common])), 4),
            "mean_b": round(float(np.mean([second[k] for k in common])), 4),
            "mean_diff": round(float(diff.mean()), 4), "sd_diff": round(float(diff.std()), 4),
            "b_higher": int((diff > 0).sum()), "a_higher": int((diff < 0).sum())}


def plot_lines(
    rows: Sequence[dict[str, Any]], x: str, y: str, line: str, path: Path, title: str = "",
    xlabel: Optional[str] = None, ylabel: Optional[str] = None, log2_x: bool = False, flat: Sequence[str] = (),
    panel: Optional[str] = None, mean_panel: bool = True,
) -> Path:
    """PNG of mean ± sd of ``y`` against ``x``, one line per value of the ``line`` column, and one
    subplot per value of the ``panel`` column (if given; with ``mean_panel`` a last subplot pools them).

    Lines named in ``flat`` do not depend on ``x`` (e.g. label fusion, which uses the whole support
    volume): they are drawn as a horizontal dashed line at their mean with a ± sd band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(r[panel] for r in rows)) if panel else []
    groups = [(p, [r for r in rows if r[panel] == p]) for p in panels]
    if not panels or (mean_panel and len(panels) > 1):
        groups.append(("mean over all" if panels else title, list(rows)))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups) + 1.5, 4.3), squeeze=False, sharey=True)
    names = list(dict.fromkeys(r[line] for r in rows))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    xs_all = sorted({float(r[x]) for r in rows if r[line] not in flat}) or [0.0, 1.0]
    for ax, (label, subset) in zip(axes[0], groups):
        for name in names:
            mine = [r for r in subset if r[line] == name]
            if not mine:
                continue
            if name in flat:
                values = np.array([float(r[y]) for r in mine])
                span = [xs_all[0], xs_all[-1]]
                ax.plot(span, [values.mean()] * 2, "--", color=colours[name], label=name)
                ax.fill_between(span, values.mean() - values.std(), values.mean() + values.std(), alpha=0.1,
                                color=colours[name])
                continue
            stats = sorted(summarise(mine, [x], y), key=lambda s: float(s[x]))
            ax.errorbar([float(s[x]) for s in stats], [s[f"{y}_mean"] for s in stats],
                        yerr=[s[f"{y}_sd"] for s in stats], marker="o", capsize=3, color=colours[name], label=name)
        if log2_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all, [f"{v:g}" for v in xs_all])
        ax.set_xlabel(xlabel or x)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel or f"{y} (mean ± sd)")
    axes[0][-1].legend(fontsize=7)
    if title and panels:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows written by :func:`write_csv`, with numbers and booleans converted back."""
    def convert(text: str) -> Any:
        if text in ("True", "False"):
            return text == "True"
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    return [{k: convert(v) for k, v in row.items()} for row in tables.read_csv(path)]
