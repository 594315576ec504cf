"""act_patch's (original, counterfactual) pairs of a split: the facts the target answers, rendered as prompts, clean
checked, the first `pairs[split]` of a seeded order; and how many label chunks they are patched in."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from pipeline.artifacts import ArtifactError, provenance, read_table, write_table
from pipeline.runtime import torch_dtype, warn
from pipeline.tasks.act_patch.settings import ActPatchConfig
from pipeline.tasks.facts import draw_options, make_pairs, render_prompt


FACTS_COLUMNS = ["fact_id", "relation", "subject", "template", "target_true", "split", "kept", "few_shot"]


PAIR_COLUMNS = ["pair_id", "relation", "subject", "target_true", "counterfactual_subject", "counterfactual_target",
                "text", "subject_span", "sentence_end", "counterfactual_text", "counterfactual_subject_span",
                "counterfactual_sentence_end", "add_special_tokens"]


def choose_pairs(cfg: ActPatchConfig, facts_path: str | Path, model_dir: str | Path, split: str, out: str | Path,
                 settings: dict, keep_only_correct: bool = True) -> pd.DataFrame:
    """The split's (original, counterfactual) pairs, rendered, whose original prompt the target answers
    correctly (with keep_only_correct), the first `pairs[split]` of a seeded order. A shortfall is logged and
    kept in the provenance; below `pairs.min_fraction` of what was asked it is an error."""
    from pipeline.tasks.facts import answer_matches
    from pipeline.models import load_model, read_manifest
    from pipeline.engine.patching import greedy_next_tokens

    facts = read_table(facts_path, required=FACTS_COLUMNS)
    facts = facts[facts["kept"] & (facts["split"] == split)].reset_index(drop=True)
    if facts.empty:
        raise ArtifactError(f"{facts_path}: no kept facts in split '{split}'")
    model, tokenizer = load_model(model_dir, dtype=torch_dtype(cfg.precision))
    candidates = make_pairs(facts, cfg.pairs.seed, tokenizer)
    rng = random.Random(cfg.pairs.seed)
    rendered = []
    for original, counter in candidates:
        options = draw_options(facts, original["relation"], [original["target_true"], counter["target_true"]],
                               cfg.prompt.n_options, rng) if cfg.prompt.format == "constrained" else None
        examples = json.loads(original["few_shot"])
        rendered.append(tuple(render_prompt(f["template"], f["subject"], options, cfg.prompt, tokenizer, examples)
                              for f in (original, counter)))
    # "Kept = answered correctly" is decided on the prompt that is patched (its options included).
    clean = greedy_next_tokens(model, tokenizer, [r[0] for r in rendered], cfg.batch_size, desc="clean check")
    passed = [i for i, ((original, _), answer) in enumerate(zip(candidates, clean))
              if not keep_only_correct or answer_matches(answer, original["target_true"])]
    failed, asked = len(candidates) - len(passed), getattr(cfg.pairs, split)
    chosen = passed[:asked]
    counts = {"facts": len(facts), "candidate_pairs": len(candidates), "clean_check_failed": failed, "asked": asked,
              "pairs": len(chosen), "shortfall": asked - len(chosen)}
    where = (f"{facts_path}, split '{split}': {len(facts)} kept facts give {len(candidates)} candidate pairs (one per "
             f"original fact), {failed} of them fail the clean check of {model_dir}")
    if len(chosen) < cfg.pairs.min_fraction * asked or not chosen:
        raise ArtifactError(f"{where}, leaving {len(chosen)} pairs of the {asked} act_patch.pairs.{split} asks "
                            f"(below pairs.min_fraction {cfg.pairs.min_fraction}); use more facts (facts.source: counterfact "
                            f"with its path, more relations) or ask for fewer pairs")
    if len(chosen) < asked:
        warn(f"{where}: {len(chosen)} pairs instead of the {asked} asked")
    print(f"pairs ({split}): {counts}")
    frame = pd.DataFrame([{
        "pair_id": pair_id, "relation": original["relation"], "subject": original["subject"],
        "target_true": original["target_true"], "counterfactual_subject": counter["subject"],
        "counterfactual_target": counter["target_true"], "text": orig.text, "subject_span": list(orig.subject_span),
        "sentence_end": orig.sentence_end, "counterfactual_text": cf.text,
        "counterfactual_subject_span": list(cf.subject_span), "counterfactual_sentence_end": cf.sentence_end,
        "add_special_tokens": orig.add_special_tokens,
    } for pair_id, ((original, counter), (orig, cf)) in enumerate(
        (candidates[i], rendered[i]) for i in chosen)])
    prov = provenance(settings | {"split": split}, {"target": read_manifest(model_dir)["source"]})
    prov["counts"] = counts
    write_table(frame, out, prov)
    return frame


def chunk_count(cfg: ActPatchConfig, split: str) -> int:
    """How many label chunks a split's pairs are patched in (the last ones may be empty after a shortfall)."""
    return max(1, -(-getattr(cfg.pairs, split) // cfg.chunk_pairs))
