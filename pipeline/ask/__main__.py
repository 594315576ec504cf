"""`python -m pipeline.ask` (or `pipeline-ask`): put your own question to a trained explainer from the terminal.

    python -m pipeline.ask act_patch gemma_gemma --prompt "The capital of Japan is the city of" \
        --subject Japan --counterfactual-subject Italy
    python -m pipeline.ask act_patch gemma_gemma --questions asks/example.csv --json
    python -m pipeline.ask input_ablation smollm_smollm --question "What is the capital of Peru?" \
        --choice Lima --choice Quito --choice Cusco --hint B
    python -m pipeline.ask features tiny_tiny --layer 1 --feature 7
    python -m pipeline.ask features tiny_tiny --layer 1 --vector direction.safetensors
    python -m pipeline.ask serve gemma_gemma          # a page on http://127.0.0.1:7860
    python -m pipeline.ask serve tiny_tiny --task features

act_patch: one row per token type x layer window (or those asked), the explainer's answer beside the target's clean
and patched next tokens; input_ablation: the explainer's answer beside the target's letters with and without the
hint; and whether they agree; features: the explainer's description of an SAE latent beside the run's reference
description, the latent's top exemplars with the firing token in [[ ]] and the simulator's scores of both. `--json`
prints the rows as JSON lines, `--show-questions` the questions."""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="python -m pipeline.ask", description=__doc__.split("\n\n")[0])
    tasks = parse.add_subparsers(dest="task", required=True)
    act = tasks.add_parser("act_patch", help="what changes when a state of a counterfactual prompt is patched in")
    act.add_argument("run", help="a run name ({explainer}_{target}, e.g. gemma_gemma) or its trained explainer's "
                                 "folder")
    act.add_argument("--workdir", default=".", help="the workflow's folder (where work/ and resources/ are)")
    act.add_argument("--prompt", help="the prompt the target reads")
    act.add_argument("--subject", help="the subject in --prompt whose state is replaced")
    act.add_argument("--counterfactual-subject", help="the subject of the counterfactual prompt")
    act.add_argument("--counterfactual", help="the counterfactual prompt (default: --prompt with the subject replaced)")
    act.add_argument("--token-type", action="append", dest="token_types",
                     help="a token type of the run (last_subject_token, relation_suffix, last_token); repeatable; "
                          "default: every one")
    act.add_argument("--token-index", type=int,
                     help="one token of --prompt by index instead of token types (negative: from the end; not inside "
                          "the subject but its last token)")
    act.add_argument("--layers", action="append",
                     help="a window of the run as comma-separated layers (e.g. 0,1,2,3,4,5); repeatable; default: all")
    act.add_argument("--questions", help="a CSV or Parquet file of asks (columns prompt, subject, "
                                         "counterfactual_subject or counterfactual; optional token_type or "
                                         "token_index, layer)")
    act.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    act.add_argument("--show-questions", action="store_true", help="print each question as the explainer reads it")
    ablation = tasks.add_parser("input_ablation", help="whether removing a hint changes the target's answer")
    ablation.add_argument("run", help="a run name ({explainer}_{target}, e.g. smollm_smollm) or its trained "
                                      "explainer's folder")
    ablation.add_argument("--workdir", default=".", help="the workflow's folder (where work/ and resources/ are)")
    ablation.add_argument("--question", help="the multiple-choice question")
    ablation.add_argument("--choice", action="append", dest="choices", help="a choice, in order (repeat: A, B, ...)")
    ablation.add_argument("--hint", help="the letter the hint names")
    ablation.add_argument("--subject", default="world_geography", help="the question's subject, as MMLU names them")
    ablation.add_argument("--questions", help="a CSV or Parquet file of asks (columns question, choices separated "
                                              "by |, hint; optional subject)")
    ablation.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    ablation.add_argument("--show-questions", action="store_true", help="print each question as the explainer reads it")
    features = tasks.add_parser("features", help="what an SAE latent of the target encodes")
    features.add_argument("run", help="a run name ({explainer}_{target}) or its trained explainer's folder")
    features.add_argument("--workdir", default=".", help="the workflow's folder (where work/ and resources/ are)")
    features.add_argument("--layer", type=int, help="the latent's layer (one with an SAE in the run)")
    features.add_argument("--feature", type=int, help="the latent's index in that layer's SAE")
    features.add_argument("--vector", help="a direction of one's own instead of a latent: .safetensors (one tensor), "
                                           ".npy or .pt of the target's width, read at --layer")
    features.add_argument("--exemplars", type=int, default=5, help="how many top exemplars to show")
    features.add_argument("--no-simulator", action="store_true", help="do not score the descriptions")
    features.add_argument("--questions", help="a CSV or Parquet file of asks (columns layer, feature)")
    features.add_argument("--json", action="store_true", help="JSON (lines) instead of text")
    page = tasks.add_parser("serve", help="a local page to ask from (Gradio: the page extra)")
    page.add_argument("run", help="a run name or its trained explainer's folder")
    page.add_argument("--task", dest="page_task", default="act_patch", choices=["act_patch", "features"],
                      help="the run's task: act_patch's grid or a features latent's exemplars")
    page.add_argument("--workdir", default=".", help="the workflow's folder (where work/ and resources/ are)")
    page.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    page.add_argument("--port", type=int, default=7860)
    return parse


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from pipeline.ask import Asker, read_questions

    args = parser().parse_args(argv)
    if args.task == "serve":
        from pipeline.ask.page import serve

        serve(Asker.load(args.page_task, args.run, args.workdir), args.host, args.port)
        return 0
    asker = Asker.load(args.task, args.run, args.workdir)
    if args.task == "features" and not args.questions:
        if args.layer is None or (args.feature is None) == (args.vector is None):
            parser().error("features needs --layer and one of --feature or --vector, or --questions FILE")
        show_feature(asker.features(args.layer, args.feature, args.exemplars, not args.no_simulator, args.vector),
                     args.json)
        return 0
    if args.questions:
        table = asker.table(read_questions(args.questions))
    elif args.task == "input_ablation":
        if not (args.question and args.choices and args.hint):
            parser().error("input_ablation needs --question, --choice (two or more) and --hint, or --questions FILE")
        table = asker.input_ablation(args.question, args.choices, args.hint, args.subject)
    else:
        if not (args.prompt and args.subject and (args.counterfactual_subject or args.counterfactual)):
            parser().error("act_patch needs --prompt, --subject and --counterfactual-subject (or --counterfactual), "
                           "or --questions FILE")
        layers = None if not args.layers or args.layers == ["all"] else [
            [int(x) for x in w.split(",")] for w in args.layers]
        table = asker.act_patch(args.prompt, args.subject, args.counterfactual_subject, args.counterfactual,
                                args.token_types, layers, token_index=args.token_index)
    if args.json:
        sys.stdout.write(table.to_json(orient="records", lines=True, force_ascii=False))
        return 0
    if args.task == "features":
        with pd.option_context("display.max_colwidth", 60, "display.width", 200):
            print(table[["ask", "feature_id", "description", "reference", "simulator_top",
                         "reference_simulator_top"]].to_string(index=False))
        return 0
    if args.task == "act_patch":
        shown = table.assign(layer=[f"{w[0]}-{w[-1]}" for w in table["layer"]],
                             truth=[f"{c!r} -> {p!r}" for c, p in zip(table["clean_token"], table["patched_token"])])
        columns = ["ask", "token_type", "layer", "answer", "truth", "changed", "agrees"]
        truth = "the target's patched next token"
    else:
        shown = table.assign(truth=[f"{a} -> {b}" for a, b in zip(table["answer_with_hint"],
                                                                   table["answer_without_hint"])])
        columns = ["ask", "answer", "truth", "changed", "agrees"]
        truth = "the target's answers with and without the hint"
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        print(shown[[c for c in columns if c in shown]].to_string(index=False))
    if args.show_questions:
        for question in table["question"].drop_duplicates():
            print(f"\n{question}")
    agree = sum(1 for a in table["agrees"] if a is not None and not pd.isna(a) and bool(a))
    print(f"\n{agree} of {len(table)} answers agree with {truth} "
          f"(explainer {asker.run}, settings as recorded by its run in {asker.workdir})")
    return 0


def show_feature(asked: dict, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(asked, ensure_ascii=False))
        return
    print(f"{asked['feature_id']}  asked: {asked['question']}")
    print(f"  explainer: {asked['description']}")
    where = f" (its {asked['split']} split)" if asked["split"] else ""
    none = "none: the run did not describe this latent" if asked["feature"] is not None else "none: a vector of one's own"
    print(f"  reference: {asked['reference'] if asked['reference'] else none}"
          f"{where}")
    simulator = asked.get("simulator", {})
    if simulator.get("enabled"):
        for name in ("description", "reference"):
            if name in simulator:
                print(f"  simulator |r| of the {name}: {simulator[name]['top']:.3f}")
    elif simulator:
        print(f"  simulator: not scored ({simulator['why']})")
    for row in asked["exemplars"]:
        print(f"  top {row['rank']}: {row['text']!r}  ({row['firing_token']!r} at {row['activation']:.2f})")


if __name__ == "__main__":
    sys.exit(main())
