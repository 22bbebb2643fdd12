"""What a run leaves: the terminal table, the JSON and the plot of the flipping curves."""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from realtime_lrp.util.atomic import commit

if TYPE_CHECKING:
    from realtime_lrp.apps.evaluate.inputs import Inputs
    from realtime_lrp.apps.evaluate.runner import EvalConfig


def evaluate_progress(console: Any = None) -> Any:
    """A progress bar for the run: images done over all methods, elapsed time and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def results_table(rows: Sequence[Mapping[str, Any]], title: str = "rtlrp evaluate") -> Any:
    """A rich table of the rows: AOPC MoRF/LeRF and their difference, sensitivity r, Gini."""
    from rich.table import Table

    video = any(r["frame_r"] is not None for r in rows)
    low = any(r["r_vs_fp32"] is not None for r in rows)
    road = any(r["aopc_road_diff"] is not None for r in rows)
    classes = any(r["class_r"] is not None for r in rows)
    table = Table(title=title, caption="↑ higher is better, ↓ lower is better; r: Pearson correlation of maps")
    columns = (["method", "top-k", "dtype", "MoRF AOPC ↑", "LeRF AOPC ↓", "MoRF−LeRF ↑"]
               + (["ROAD MoRF−LeRF ↑"] if road else []) + ["noise r ↑", "noise r min", "Gini ↑"]
               + (["class r ↓"] if classes else []) + (["r vs fp32"] if low else [])
               + (["frame r"] if video else []) + ["ms/image"])
    for name in columns:
        table.add_column(name, justify="left" if name in ("method", "dtype") else "right")
    best = max(rows, key=lambda r: r["aopc_diff"] if r["aopc_diff"] is not None else -math.inf)
    for r in rows:
        cells = [_label(r), "—" if r["top_k"] is None else f"{r['top_k']:g}", r["dtype"],
                 _fmt(r["aopc_morf"]), _fmt(r["aopc_lerf"]), _fmt(r["aopc_diff"])]
        cells += [_fmt(r["aopc_road_diff"])] if road else []
        cells += [_fmt(r["sensitivity_r"]), _fmt(r["sensitivity_r_min"]), _fmt(r["gini"])]
        cells += [_fmt(r["class_r"])] if classes else []
        cells += [_fmt(r["r_vs_fp32"], 4)] if low else []
        cells += [_fmt(r["frame_r"])] if video else []
        cells += [_fmt(r["ms_per_image"], 2)]
        table.add_row(*cells, style="bold" if r is best else None)
    return table


def _label(row: Mapping[str, Any]) -> str:
    """The preset and its target mode unless plain, or the method's name."""
    if row["kind"] != "lrp":
        return row["method"]
    mode = row.get("target_mode") or "plain"
    return row["preset"] + ("" if mode == "plain" else f" {mode}")


def plot_curves(rows: Sequence[Mapping[str, Any]], fractions: Sequence[float], path: Path,
                title: str = "rtlrp evaluate", score: str = "probability") -> None:
    """MoRF and LeRF curves (then ROAD's, when run), one column per preset with the CAM methods and baselines in each.

    Colour marks the top-k, the line style the dtype, baselines are grey, CAM methods coloured; one legend below
    serves every panel (the AOPC values are in the table). Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    presets = list(dict.fromkeys(_label(r) for r in rows if r["kind"] == "lrp")) or ["baselines"]
    baselines = [r for r in rows if r["kind"] != "lrp"]
    top_ks = list(dict.fromkeys(r["top_k"] for r in rows if r["kind"] == "lrp"))
    colours = {k: plt.get_cmap("viridis")(i / max(1, len(top_ks) - 1) * 0.85) for i, k in enumerate(top_ks)}
    styles = {"fp32": "-", "bf16": "--", "fp16": ":"}
    base_styles = {"random": ("0.55", ":"), "gradient": ("0.35", "-."), "gradient-x-input": ("0.05", (0, (5, 2))),
                   "gradcam": ("tab:red", "-."), "gradcam++": ("tab:orange", (0, (3, 1, 1, 1))),
                   "layercam": ("tab:purple", (0, (1, 1)))}
    xs = [100 * f for f in fractions]
    panels = [("curve_morf", "MoRF: most relevant first (lower is better)"),
              ("curve_lerf", "LeRF: least relevant first (higher is better)")]
    if any(r.get("curve_road_morf") for r in rows):
        panels += [("curve_road_morf", "ROAD MoRF: imputed, most relevant first"),
                   ("curve_road_lerf", "ROAD LeRF: imputed, least relevant first")]
    fig, axes = plt.subplots(len(panels), len(presets), figsize=(4.4 * len(presets) + 0.6, 4.1 * len(panels)),
                             sharex=True, sharey=True, squeeze=False)
    legend: dict[str, Any] = {}
    for col, preset in enumerate(presets):
        for row_i, (key, label) in enumerate(panels):
            ax = axes[row_i][col]
            for r in rows:
                if r["kind"] == "lrp" and _label(r) == preset:
                    name = f"LRP top-k {r['top_k']:g}, {r['dtype']}"
                    legend[name], = ax.plot(xs, r[key], color=colours[r["top_k"]], linestyle=styles[r["dtype"]],
                                            linewidth=1.8)
            for r in baselines:
                colour, style = base_styles[r["kind"]]
                legend[r["kind"].replace("-x-", " × ")], = ax.plot(xs, r[key], color=colour, linestyle=style,
                                                                    linewidth=1.5)
            ax.set_title(f"{preset}\n{label}", fontsize=9.5)
            ax.set_ylim(0, 1.02 if score == "probability" else None)
            ax.grid(alpha=0.3)
            if row_i == len(panels) - 1:
                ax.set_xlabel("pixels flipped (%)")
            if col == 0:
                ax.set_ylabel(f"{score} of the explained class")
    fig.suptitle(title, fontsize=10.5)
    columns = [[n for n in legend if n.startswith(f"LRP top-k {k:g},")] for k in top_ks]
    columns.append([n for n in legend if not n.startswith("LRP ")])
    columns = [c for c in columns if c]
    depth = max(len(c) for c in columns)
    labels = [n for c in columns for n in c + [""] * (depth - len(c))]  # one column per top-k, then baselines
    blank = plt.Line2D([], [], alpha=0)
    fig.legend([legend.get(n, blank) for n in labels], labels, loc="lower center", ncol=len(columns),
               fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, (0.015 + 0.03 * depth) * 2 / len(panels), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    fig.savefig(partial, dpi=110, format="png")
    plt.close(fig)
    commit(partial, path)


def payload(rows: Sequence[Mapping[str, Any]], config: EvalConfig, inputs: Inputs, card: Mapping[str, Any],
            environment: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``--json`` document: environment, settings (protocol included) and one row per method."""
    settings = {k: v for k, v in asdict(config).items() if k != "flip"}
    settings.update(flip=asdict(config.flip), flip_fractions=config.flip.fractions(), source=inputs.source,
                    images=len(inputs.x), input_size=list(inputs.x.shape[-2:]),
                    model=card.get("arch"), dataset=card.get("dataset"), **(extra or {}))
    return {"environment": dict(environment), "settings": settings, "rows": [dict(r) for r in rows]}
