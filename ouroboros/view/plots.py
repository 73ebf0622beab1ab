"""Learning curves of a run, drawn with matplotlib: the viewer's images and `ouroboros plot`'s files
are the same PNGs.

Each curve reads one key of summary.json's rounds; where the round reported a 95% interval
(`<key>` with `_mean`/`_rate` replaced by `_ci95`) it is drawn as a band, and the sample count
(`heldout_samples` / `train_samples`) is written beside each point.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Curve:
    name: str  # the file and URL name
    title: str
    keys: tuple[str, ...]  # the first present in a round is drawn


CURVES = (
    Curve("heldout-reward", "held-out reward", ("heldout_reward_mean",)),
    Curve("heldout-valid", "held-out valid rate", ("heldout_valid_rate",)),
    Curve("heldout-pass", "held-out pass rate", ("heldout_pass_rate",)),
    Curve("train-reward", "train reward", ("train_reward_mean",)),
    Curve("loss", "learner loss", ("loss", "dpo_loss")),
    Curve("kl", "KL to the reference", ("kl_ref",)),
    Curve("staleness", "staleness (versions)", ("staleness_mean",)),
    Curve("broadcast", "weight broadcast (s)", ("broadcast.wall_s",)),
)
BY_NAME = {c.name: c for c in CURVES}


def _get(row: dict, key: str):
    value = row
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def points(rounds: list[dict], curve: Curve) -> list[dict]:
    """The curve's points: round, value, its 95% interval and sample count where reported."""
    out = []
    for row in rounds:
        key = next((k for k in curve.keys if _get(row, k) is not None), None)
        if key is None or not isinstance(row.get("round"), int):
            continue
        ci_key = key.replace("_mean", "_ci95").replace("_rate", "_ci95")
        ci = row.get(ci_key) if ci_key != key else None
        ci = ci if isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci) else None
        n = row.get(f"{key.split('_')[0]}_samples") if key.startswith(("heldout_", "train_")) else None
        out.append({"round": row["round"], "value": float(_get(row, key)), "ci": ci,
                    "n": n if isinstance(n, int) else None, "key": key})
    return out


def available(rounds: list[dict]) -> list[Curve]:
    return [c for c in CURVES if points(rounds, c)]


def png(rounds: list[dict], curve: Curve, width: float = 5.0, height: float = 3.0) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    pts = points(rounds, curve)
    fig = Figure(figsize=(width, height), dpi=100)  # not pyplot: no global state across requests
    ax = fig.add_subplot()
    if pts:
        xs, ys = [p["round"] for p in pts], [p["value"] for p in pts]
        banded = [p for p in pts if p["ci"]]
        if banded:
            ax.fill_between([p["round"] for p in banded], [p["ci"][0] for p in banded], [p["ci"][1] for p in banded],
                            alpha=0.2, label="95% interval")
        ax.plot(xs, ys, marker="o", label=pts[0]["key"])
        for p in pts:
            if p["n"]:
                ax.annotate(f"n={p['n']}", (p["round"], p["value"]), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7)
        ax.legend(fontsize=7, loc="best")
        ax.set_xticks(xs)
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(curve.title, fontsize=10)
    ax.set_xlabel("round", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_all(rounds: list[dict], out_dir: str | Path) -> list[Path]:
    """Every curve the rounds have, as `<name>.png` in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for curve in available(rounds):
        path = out / f"{curve.name}.png"
        path.write_bytes(png(rounds, curve))
        written.append(path)
    return written
