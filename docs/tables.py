"""Regenerate the tables of README.md and docs/ that are read from the code, so they cannot drift.

    python docs/tables.py            # rewrite every generated section in place
    python docs/tables.py --check    # exit 1, naming the sections, if a committed one is out of date

A generated section sits between two markers in a Markdown file:

    <!-- BEGIN GENERATED: recipes (python docs/tables.py) -->
    ...
    <!-- END GENERATED: recipes -->

Sections: ``families`` (the zoo, one row per family, from the registry), ``zoo`` (every model
with its parameters and MACs, computed on PyTorch's meta device: about 15 s), ``recipes`` (the
training recipes, from ``reslab.train.config.RECIPES``), ``reproduction`` (the shipped weights'
test errors beside the papers', from the weights' manifest). ``tests/test_docs_tables.py`` checks the
README's sections; CI runs ``--check`` over every file.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKERS = re.compile(r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+)[^>]*-->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)",
                     re.DOTALL)

# Where each recipe comes from: a citation, not a value (the values are read from RECIPES).
RECIPE_SOURCES = {
    "paper": "He et al. 2015, sec. 4.2",
    "preact": "He et al. 2016, appendix",
    "wrn": "Zagoruyko & Komodakis 2016, sec. 4",
    "resnext": "Xie et al. 2017, sec. 5.3",
    "stochastic-depth": "Huang et al. 2016, sec. 4",
    "fast": "ours: [experiments/fast-recipe](experiments/fast-recipe/README.md)",
    "zoo": "ours: `fast`, twice as long, for the shipped weights",
    "finetune": "ours, after Kornblith et al. 2019 (docs/finetune.md)",
    "imagenet": "He et al. 2015, sec. 3.4; torchvision's reference; Goyal et al. 2017",
}


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config's values by field name, whether the config is flat or grouped (data, model, ...)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def _number(value: Any) -> str:
    """0.15 as 0.15, 0.0005 as 5e-4."""
    if isinstance(value, float) and 0 < abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _length(v: dict[str, Any]) -> str:
    if v.get("iterations"):
        return f"{v['iterations']:,} iterations"
    return f"{_number(v.get('epochs'))} epochs"


def _optimiser(v: dict[str, Any]) -> str:
    name = str(v.get("optimizer", v.get("optimiser", "sgd"))).lower()
    if name != "sgd":
        return name
    return f"SGD{', Nesterov' if v.get('nesterov') else ''} {_number(v.get('momentum', 0.9))}"


def _schedule(v: dict[str, Any]) -> str:
    text = f"{_number(v['lr'])}, {v.get('schedule')}"
    milestones = v.get("milestones") or ()
    if v.get("schedule") == "step" and milestones:
        text += f" x{_number(v.get('gamma'))} at {', '.join(_number(round(m, 3)) for m in milestones)} of the run"
    if v.get("warmup"):
        text += f", {_number(100 * v['warmup'])}% warm-up"
    if v.get("low_lr"):
        text += f"; {_number(v['low_lr'])} first for {v.get('low_lr_min_depth')}+ layers"
    return text


def _weight_decay(v: dict[str, Any]) -> str:
    where = "all weights" if v.get("decay_norm_and_bias", True) else "conv/linear weights"
    return f"{_number(v['weight_decay'])} on {where}"


def _extras(v: dict[str, Any]) -> str:
    extras = []
    if v.get("label_smoothing"):
        extras.append(f"label smoothing {_number(v['label_smoothing'])}")
    if v.get("alternating_flip"):
        extras.append("alternating flips")
    if v.get("small_crop") and v.get("small_crop_part"):
        extras.append(f"{v['small_crop']}x{v['small_crop']} crops for {_number(100 * v['small_crop_part'])}% of the epochs")
    if v.get("padding_mode", "zeros") != "zeros":
        extras.append(f"{v['padding_mode']} padding")
    if v.get("dropout"):
        extras.append(f"dropout {_number(v['dropout'])}")
    if v.get("stochastic_depth"):
        extras.append(f"stochastic depth p_L = {_number(v['stochastic_depth'])}")
    if v.get("compile"):
        extras.append("`torch.compile`" + (" with moment BN" if v.get("moment_bn") else ""))
    views = ["flips"] if v.get("tta_flip") else []
    if v.get("tta_translate"):
        views.append(f"{v['tta_translate']}-pixel shifts")
    if views:
        extras.append("test-time views: " + " + ".join(views))
    return "; ".join(extras) or "none"


def recipes_table() -> str:
    """The recipes, one row each, read from the recipe definitions."""
    from reslab.train.config import RECIPES, TrainConfig

    lines = ["| recipe | source | length | batch | optimiser | lr, schedule | weight decay | extras |",
             "|---|---|---|---:|---|---|---|---|"]
    for name in RECIPES:
        v = _flatten(TrainConfig.from_recipe(name).to_dict())
        lines.append(f"| `{name}` | {RECIPE_SOURCES.get(name, '-')} | {_length(v)} | {v['batch_size']} | {_optimiser(v)} "
                     f"| {_schedule(v)} | {_weight_decay(v)} | {_extras(v)} |")
    return "\n".join(lines)


def families_table() -> str:
    """The zoo, one row per family: its paper, input size and registered names (no model is built)."""
    from reslab.registry import list_models, model_info

    families: dict[str, list] = {}
    for name in list_models():
        families.setdefault(model_info(name).family, []).append(model_info(name))
    lines = ["| family | paper | input | registry names |", "|---|---|---|---|"]
    for family, infos in families.items():
        names = ", ".join(f"`{info.name}`" for info in infos)
        lines.append(f"| {family} | {infos[0].paper} | {infos[0].input_size}x{infos[0].input_size} | {names} |")
    return "\n".join(lines)


def reproduction_table() -> str:
    """The shipped weights' errors beside the papers' (``python benchmarks/train_zoo.py table``)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_zoo

    from reslab.pretrained import manifest

    return train_zoo.table(manifest())


def zoo_table() -> str:
    """Every registered model with its parameters and MACs (``reslab models --format markdown``)."""
    from reslab.zoo_table import format_rows, zoo_rows

    return format_rows(zoo_rows(), markdown=True)


GENERATORS: dict[str, Callable[[], str]] = {"families": families_table, "zoo": zoo_table, "recipes": recipes_table,
                                             "reproduction": reproduction_table}


def sections(text: str) -> list[str]:
    """The names of the generated sections in ``text``, in order."""
    return [m.group("name") for m in MARKERS.finditer(text)]


def regenerate(text: str, cache: dict[str, str] | None = None) -> str:
    """``text`` with every generated section rewritten from the code."""
    cache = {} if cache is None else cache

    def fill(match: re.Match) -> str:
        name = match.group("name")
        if name not in GENERATORS:
            raise SystemExit(f"docs/tables.py: error: unknown generated section {name!r}; known: {', '.join(GENERATORS)}")
        if name not in cache:
            cache[name] = GENERATORS[name]()
        return f"{match.group(1)}{cache[name]}\n{match.group(4)}"

    return MARKERS.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a section is out of date")
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/*.md)")
    args = parser.parse_args(argv)
    stale, cache = [], {}
    for path in args.files or FILES:
        text = path.read_text()
        new = regenerate(text, cache)
        if new != text:
            stale.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({', '.join(sections(text))})")
            if not args.check:
                path.write_text(new)
    if stale:
        verb = "out of date" if args.check else "rewritten"
        print(f"{verb}: {'; '.join(stale)}" + ("; run python docs/tables.py" if args.check else ""))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
