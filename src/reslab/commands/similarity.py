HELP = """Layer similarity: block-by-block linear CKA of a network's block outputs (Kornblith et al. 2019).

For each CHECKPOINT (a model file, run folder, or model name with trained weights; e.g.
resnet56 and plain56), the output of every block (residual block, or block of a plain net) on a
fixed class-balanced set of --images test images, flattened per image, and the linear CKA of
every pair of blocks: one heatmap per model. All images go through the model in one pass (CKA
needs every image's response at once): memory grows with --images. Kornblith et al.: deep plain
nets have a block of near-identical later layers that residual nets do not.

Writes similarity.json (+ similarity_run.json: command, hashes, image indices, seed) and
similarity.png into --out.
"""

import argparse

from reslab.commands.options import add_data_arguments, add_output_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="model files, run folders or model names with trained weights")
    add_data_arguments(parser)
    parser.set_defaults(images=1000)
    add_output_arguments(parser, "similarity")


def run(args: argparse.Namespace) -> int:
    import torch

    from reslab.analysis.plots import write_json
    from reslab.analysis.report import to_text
    from reslab.analysis.similarity import plot_similarity, similarity_study
    from reslab.analysis.sources import load_models_on_images, model_record, run_record, write_run_record
    from reslab.commands.options import names_of, output_folder, run_in_bf16
    from reslab.data.progress import progress_bar

    out = output_folder(args.out, "similarity", names_of(args.checkpoints), overwrite=args.overwrite)
    indices, loaded = load_models_on_images(args, args.checkpoints)
    bf16 = run_in_bf16(args)
    records = [model_record(source, model, card.model) for source, (model, card, _) in zip(args.checkpoints, loaded.values())]
    models = {label: (model, torch.cat([x for x, _ in batches])) for label, (model, _, batches) in loaded.items()}
    with progress_bar(len(models), "block outputs and CKA", unit="model") as bar:
        result = similarity_study(models, bf16=bf16, tick=lambda: bar.update(1))
    result["checkpoints"] = list(args.checkpoints)
    write_json(out / "similarity.json", result)
    write_run_record(out, run_record("similarity", seed=args.seed, models=records, data=args.data, split=args.split,
                                     image_indices=indices, precision="bf16" if bf16 else "fp32"))
    plot_similarity(result, out / "similarity.png")
    print(to_text({"models": [{k: e[k] for k in ("label", "mean_adjacent_cka", "mean_cka", "high_similarity_share")}
                              for e in result["models"]], "claims": result["claims"]}))
    print(f"wrote {out / 'similarity.json'} and {out / 'similarity.png'}")
    return 0
