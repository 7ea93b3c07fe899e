"""The degradation problem: deeper plain nets train worse, deeper ResNets better (He et al. 2015).

He et al. 2015, Fig. 1 and 6: trained with the same recipe on CIFAR-10, plain-56 ends with a
*higher training error* than plain-20 (so the cause is optimisation, not overfitting), while
ResNet-56 ends lower than ResNet-20. :func:`degradation_experiment` trains each model of the
list with one recipe and budget into ``DIR/<model>`` (reusing a finished run, resuming a
stopped one), plots training error (thin) and test error (bold) against iterations in two
panels, plain and residual, as Fig. 6, and judges the outcome (:func:`degradation_verdict`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from reslab.analysis.plots import figure, plot_error_curves, read_jsonl, read_run, save_figure, write_json
from reslab.models.layers import residual_blocks

DEFAULT_MODELS = ("plain20", "plain56", "resnet20", "resnet56")
# Fields that may differ between a run folder's config and the one asked for: how a run is
# shown and how fast it runs, not what it computes.
PRESENTATION_FIELDS = ("threads", "progress", "tensorboard", "log_interval", "out")


def train_or_reuse(config, callbacks: Sequence[Any] = ()) -> str:
    """Train ``config`` into ``config.out``, or reuse the run there: ``'reused'`` when it is
    finished (its result.json written; the checkpoint may have been deleted), ``'resumed'`` when it was stopped (continued from its checkpoint), ``'trained'``
    when the folder held no run. A folder whose run was configured otherwise is an error."""
    from reslab.train import train
    from reslab.train.state import CHECKPOINT_FILE, RESULT_FILE, read_config

    out = Path(config.out)
    if not (out / CHECKPOINT_FILE).exists() and not (out / RESULT_FILE).exists():  # a finished run may lack its checkpoint
        train(config, callbacks)
        return "trained"
    existing = read_config(out).to_dict()
    wanted = config.to_dict()
    differs = sorted(k for k in wanted if k not in PRESENTATION_FIELDS and existing.get(k) != wanted[k])
    if differs:
        shown = ", ".join(f"{k}: {existing.get(k)!r} there, {wanted[k]!r} asked" for k in differs[:4])
        raise ValueError(f"{out} holds a run configured otherwise ({shown}); choose another output folder "
                         "or delete that run to retrain it")
    if (out / RESULT_FILE).exists():
        return "reused"
    train(config, callbacks, resume=True)
    return "resumed"


def run_summary(run_dir: Union[str, Path]) -> dict:
    """Final training and test error (%) of a finished run, with its model's depth and type."""
    from reslab.registry import create_model
    from reslab.models.depth import weighted_depth
    from reslab.train.state import read_config

    config = read_config(run_dir)
    metrics = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r.get("test_error") is not None]
    if not metrics:
        raise ValueError(f"{run_dir} has no evaluated epoch in metrics.jsonl; is the run finished?")
    model = create_model(config.model, **config.model_overrides())
    last = metrics[-1]
    return {"model": config.model, "residual": bool(residual_blocks(model)), "depth": weighted_depth(model),
            "iterations": last["iteration"], "final_train_error_pct": 100.0 * last["train_error"],
            "final_test_error_pct": 100.0 * last["test_error"], "run": str(run_dir)}


def degradation_verdict(rows: Sequence[dict]) -> dict:
    """Compare the shallowest and deepest net of each kind by final training error.

    ``plain_deeper_trains_worse``: the deepest plain net ends with a higher training error than
    the shallowest one (the degradation problem); ``residual_deeper_trains_better``: the deepest
    residual net ends lower. ``reproduced`` is True when both hold (None when a kind has fewer
    than two depths).
    """
    verdict: dict[str, Any] = {}
    sentences = []
    for kind, residual, key, better in (("plain", False, "plain_deeper_trains_worse", ">"),
                                        ("residual", True, "residual_deeper_trains_better", "<")):
        group = sorted((r for r in rows if r["residual"] == residual), key=lambda r: r["depth"])
        if len(group) < 2 or group[0]["depth"] == group[-1]["depth"]:
            verdict[key] = None
            continue
        shallow, deep = group[0], group[-1]
        a, b = deep["final_train_error_pct"], shallow["final_train_error_pct"]
        verdict[key] = a > b if better == ">" else a < b
        relation = "higher" if a > b else "lower" if a < b else "the same"
        sentences.append(f"{deep['model']} ({deep['depth']} layers) ends with {relation} training error than "
                         f"{shallow['model']} ({shallow['depth']} layers): {a:.2f}% vs {b:.2f}%")
    known = [verdict["plain_deeper_trains_worse"], verdict["residual_deeper_trains_better"]]
    verdict["reproduced"] = None if None in known else all(known)
    outcome = {True: "reproduced", False: "not reproduced", None: "undecided (need two depths of each kind)"}
    verdict["text"] = "".join(s + "; " for s in sentences) + f"degradation (He et al. 2015, Fig. 6) {outcome[verdict['reproduced']]}"
    return verdict


def plot_degradation(runs: Sequence[dict], path: Union[str, Path], smooth: int = 5) -> None:
    """He et al. 2015, Fig. 6: plain nets (left) and residual nets (right), training error thin
    and test error bold against iterations, one colour per depth, on the same error scale."""
    fig, axes = figure(ncols=2, size=(12.0, 5.0), sharey=True)
    for ax, residual, title in ((axes[0], False, "plain networks"), (axes[1], True, "residual networks")):
        group = sorted((r for r in runs if r["residual"] == residual), key=lambda r: r["depth"])
        curves = [read_run(r["run"], name=f"{r['model']} ({r['depth']} layers)") for r in group]
        plot_error_curves(ax, curves, smooth=smooth)
        ax.set_title(title)
    top = max([max(r["final_test_error_pct"], r["final_train_error_pct"]) for r in runs] + [1.0])
    axes[0].set_ylim(0, min(100.0, 2.5 * top))
    save_figure(fig, path)


def degradation_experiment(data: str, out: Union[str, Path], models: Sequence[str] = DEFAULT_MODELS,
                           recipe: str = "paper", smooth: int = 5, **overrides: Any) -> dict:
    """Train (or reuse) each of ``models`` into ``out/<model>`` with ``recipe`` and
    ``overrides`` (TrainConfig fields: epochs, train_subset, ...), then write
    ``degradation.json`` and ``degradation.png`` into ``out``; returns the table."""
    from reslab.train import TrainConfig

    out = Path(out)
    models = [models] if isinstance(models, str) else list(models)  # one name, not its characters
    rows, status = [], {}
    for model in models:
        config = TrainConfig.from_recipe(recipe, model=model, data=str(data), out=str(out / model), **overrides)
        status[model] = train_or_reuse(config)
        rows.append({**run_summary(config.out), "status": status[model]})
    return _write_table(rows, out, smooth, recipe=recipe, overrides=dict(overrides))


def degradation_of_runs(run_dirs: Sequence[Union[str, Path]], out: Union[str, Path], smooth: int = 5) -> dict:
    """The same figure and table from finished run folders (e.g. the zoo's, which evaluate the
    test set every epoch), without training: each folder needs its config.json and metrics.jsonl."""
    rows = [{**run_summary(run), "status": "given"} for run in run_dirs]
    recipes = sorted({_recipe_of(run) for run in run_dirs})
    return _write_table(rows, Path(out), smooth, recipe=", ".join(recipes), overrides={})


def _recipe_of(run_dir: Union[str, Path]) -> str:
    from reslab.train.state import read_config

    return str(getattr(read_config(run_dir), "recipe", None) or "?")


def _write_table(rows: list[dict], out: Path, smooth: int, **about: Any) -> dict:
    verdict = degradation_verdict(rows)
    table = {"experiment": "degradation", "title": "Degradation: plain vs residual nets (He et al. 2015, Fig. 1 and 6)",
             **about, "verdict": verdict, "claims": degradation_claims(rows, verdict), "runs": rows}
    write_json(out / "degradation.json", table)
    plot_degradation(rows, out / "degradation.png", smooth=smooth)
    return table


def degradation_claims(rows: Sequence[dict], verdict: dict) -> list[dict]:
    """He et al. 2015, Fig. 6 as claim rows: the final training errors of the shallowest and
    deepest net of each kind."""
    claims = []
    for residual, key, claim, paper in (
            (False, "plain_deeper_trains_worse", "the deeper plain net ends with HIGHER training error",
             "plain-56 above plain-20 in training and test error (Fig. 6 left)"),
            (True, "residual_deeper_trains_better", "the deeper residual net ends with LOWER training error",
             "ResNet-56 below ResNet-20 (Fig. 6 middle); test error 6.97% vs 8.75% (Table 6)")):
        group = sorted((r for r in rows if r["residual"] == residual), key=lambda r: r["depth"])
        if len(group) < 2:
            continue
        measured = ", ".join(f"{r['model']} {r['final_train_error_pct']:.2f}% train / {r['final_test_error_pct']:.2f}% test"
                             for r in group)
        claims.append({"claim": claim, "paper": paper, "reslab": measured, "holds": verdict[key]})
    return claims
