HELP = """Standard deviation of each block's response (He et al. 2015, Fig. 7), for several networks.

A residual block's response is its residual F(x) after the branch's last layer and before the
addition; a plain block's is the output of its last BN before the ReLU. The std is taken over
all elements of the responses to the test images, per block, and shown in network order and
sorted in descending order, one line per CHECKPOINT (e.g. plain-56, ResNet-56, pre-activation
ResNet-56). Writes responses.json and responses.png into --out.
"""

import argparse

from reslab.commands.options import add_data_arguments, add_output_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="model files or run folders")
    add_data_arguments(parser)
    add_output_arguments(parser, "responses")


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.plots import write_json
    from reslab.analysis.report import to_text
    from reslab.analysis.responses import plot_responses, responses_study
    from reslab.analysis.sources import load_models_on_images, model_record, run_record, write_run_record
    from reslab.commands.options import names_of, output_folder, run_in_bf16
    from reslab.data.progress import progress_bar

    out = output_folder(args.out, "responses", names_of(args.checkpoints), overwrite=args.overwrite)
    indices, loaded = load_models_on_images(args, args.checkpoints)
    records = [model_record(source, model, card.model) for source, (model, card, _) in zip(args.checkpoints, loaded.values())]
    models = {label: (model, batches) for label, (model, _, batches) in loaded.items()}
    bf16 = run_in_bf16(args)
    with progress_bar(len(models), "responses over the test images", unit="model") as bar:
        result = responses_study(models, bf16=bf16, tick=lambda: bar.update(1))
    result["checkpoints"] = list(args.checkpoints)
    write_json(out / "responses.json", result)
    write_run_record(out, run_record("responses", seed=args.seed, models=records, data=args.data, split=args.split,
                                     image_indices=indices, precision="bf16" if bf16 else "fp32"))
    plot_responses(result, out / "responses.png")
    print(to_text(result))
    print(f"wrote {out / 'responses.json'} and {out / 'responses.png'}")
    return 0
