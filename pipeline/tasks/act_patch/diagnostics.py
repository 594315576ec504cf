"""Why an explainer reads its vector or does not: figures for any explainer x target pair of the act_patch task.

On the test rows (the generation subset), for the fine-tuned explainer:
- own token: where the vector points among the explainer's input embeddings. The vector is the counterfactual
  prompt's state at a token; its own token is that token. Cosine with the own token's embedding and the own token's
  rank among all embeddings (0 = nearest), for the raw unit vector (`raw`, only where the widths match) and for what
  the explainer puts at the placeholder (`input`: after its projection), per layer window;
- shared part: within each token type x layer window, the squared norm of the mean unit vector (1: every vector of
  the group points the same way; what is specific to a row is the rest);
- answer log-probability of the reference answer, teacher-forced, with the right vector, another pair's (the
  shuffled-vector control) and none (zeros), with paired differences and cluster-bootstrap intervals, on all rows
  and on the changed rows whose new token is the counterfactual's answer;
- projection movement: |W - W0| / |W0| of each projection against where it started (identity or the fitted map).
"""

from __future__ import annotations

import numpy as np

from pipeline.artifacts import provenance, write_json
from pipeline.lazy import lazy_import

torch = lazy_import("torch")  # loaded on first use: parsing the workflow does not import torch


def own_token_ids(tokens_text: list[str], tokenizer) -> list[int]:
    """The explainer's id of each token text: its last token (the text is one token of the target's vocabulary)."""
    return [tokenizer(text, add_special_tokens=False)["input_ids"][-1] for text in tokens_text]


def rank_and_cosine(vectors: torch.Tensor, token_ids: list[int], table: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Each vector's cosine with its own token's row of `table` and that row's rank by cosine among all rows."""
    from pipeline.explainer.alignment import own_token_ranks, unit

    ids = torch.tensor(token_ids, dtype=torch.long)
    ranks = own_token_ranks(vectors.float(), ids, table.float())
    cosine = (unit(vectors.float()) * unit(table[ids].float())).sum(-1)
    return ranks.numpy(), cosine.numpy()


def shared_part(vectors: torch.Tensor, groups: list) -> dict[str, float]:
    """Per group: the squared norm of the mean of its unit vectors."""
    from pipeline.explainer.alignment import unit

    out = {}
    keys = sorted(set(groups), key=str)
    for key in keys:
        rows = [i for i, g in enumerate(groups) if g == key]
        if len(rows) > 1:
            out[str(key)] = float(unit(vectors[rows]).mean(dim=0).norm() ** 2)
    return out


@torch.no_grad()
def answer_logprobs(explainer, tokenizer, questions, answers, vectors, prompt_format, vector_layers,
                    batch_size: int = 16) -> np.ndarray:
    """Mean log-probability per answer token of each reference answer, teacher-forced."""
    from pipeline.explainer.model import collate, encode_example
    from pipeline.explainer.training import answer_loss_sum

    encoded = [encode_example(tokenizer, q, a, prompt_format, explainer.placeholder_id)
               for q, a in zip(questions, answers)]
    device = explainer.lm.get_input_embeddings().weight.device
    out = np.zeros(len(encoded))
    for start in range(0, len(encoded), batch_size):
        index = list(range(start, min(start + batch_size, len(encoded))))
        batch = collate([encoded[i] for i in index], vectors[index], tokenizer.pad_token_id, device,
                        [vector_layers[i] for i in index] if vector_layers is not None else None)
        labels = batch.pop("labels")
        logits = explainer(**batch).logits
        for row, i in enumerate(index):
            loss, count = answer_loss_sum(logits[row:row + 1], labels[row:row + 1])
            out[i] = -float(loss) / max(count, 1)
    return out


def projection_movement(explainer, alignment_path, target_width: int) -> dict[str, float]:
    """|W - W0| / |W0| per projection: W0 the identity (or a random start's norm) or the fitted map of its layer."""
    if explainer.layer_projections is not None:
        from pipeline.explainer.alignment import load_alignment

        width = explainer.lm.get_input_embeddings().weight.shape[1]
        start = load_alignment(alignment_path, target_width, width) if alignment_path else {}
        return {layer: float((linear.weight.detach().cpu() - start[int(layer)][0]).norm() / start[int(layer)][0].norm())
                for layer, linear in explainer.layer_projections.items() if int(layer) in start}
    if explainer.projection is None:
        return {}
    weight = explainer.projection.weight.detach().cpu()
    if weight.shape[0] == weight.shape[1]:
        eye = torch.eye(weight.shape[0])
        return {"all": float((weight - eye).norm() / eye.norm())}
    return {}


def summarize(values: np.ndarray) -> dict:
    return {"median": float(np.median(values)), "top10": float((values < 10).mean()), "mean": float(values.mean())}


def diagnose(task_name: str, label_paths: dict, explainer_dir, target_dir, trained_dir, generation_cfg, explainer_cfg,
             out_path, settings: dict, alignment=None, samples: int = 1000, seed: int = 0) -> dict:
    """The figures of the module docstring for one trained explainer, written to `out_path` (JSON)."""
    from pipeline.tasks.act_patch.task import shuffled_vectors
    from pipeline.explainer.explain import _explainer_width, vector_layers
    from pipeline.explainer.model import load_explainer
    from pipeline.sampling import seeded_subset
    from pipeline.explainer.metrics import paired_mean_difference
    from pipeline.models import load_tokenizer, read_manifest
    from pipeline.tasks import get_task

    spec = get_task(task_name)
    rows = spec.examples(label_paths, str(target_dir))
    rows = rows.subset(seeded_subset(len(rows.questions), generation_cfg.max_examples, generation_cfg.seed))
    width, _ = _explainer_width(rows, explainer_dir, target_dir)
    explainer, tokenizer = load_explainer(trained_dir, explainer_dir, width)
    layers = vector_layers(rows, explainer_cfg, explainer_dir, target_dir)
    windows = [int(w[0]) for w in rows.columns["layer"]]
    target_tokenizer = load_tokenizer(target_dir)
    from pipeline.tasks.act_patch.prompts import tokens_text

    own_text = [tokens_text(target_tokenizer, [p["counterfact_text_token"]]) for p in rows.frame["patch_position"]]
    own_ids = own_token_ids(own_text, tokenizer)
    table = explainer.lm.get_input_embeddings().weight.detach().float().cpu()
    with torch.no_grad():
        placed = explainer.project(rows.vectors, layers).detach().float().cpu() if explainer.projection is not None \
            or explainer.layer_projections is not None else rows.vectors
    own: dict = {}
    for name, vectors in (("raw", rows.vectors if rows.vectors.shape[1] == table.shape[1] else None), ("input", placed)):
        if vectors is None:
            continue
        ranks, cosine = rank_and_cosine(vectors, own_ids, table)
        own[name] = {"all": summarize(ranks) | {"cosine": float(cosine.mean())},
                     "by_layer": {str(w): summarize(ranks[np.array(windows) == w])
                                  | {"cosine": float(cosine[np.array(windows) == w].mean())}
                                  for w in sorted(set(windows))}}
    groups = list(zip(rows.columns["token_type"], windows))
    shares = shared_part(rows.vectors, groups)
    variants = {"right": rows.vectors, "shuffled": shuffled_vectors(rows.frame, rows.vectors, generation_cfg.seed),
                "none": torch.zeros_like(rows.vectors)}
    logprobs = {name: answer_logprobs(explainer, tokenizer, rows.questions, rows.answers, vectors,
                                      explainer_cfg.prompt_format, layers) for name, vectors in variants.items()}
    subsets = {"all": np.ones(len(rows.questions), dtype=bool),
               "counterfactual_answer": np.asarray(rows.columns.get("subset_counterfactual_answer",
                                                                   [False] * len(rows.questions)), dtype=bool)}
    answer = {}
    for subset, mask in subsets.items():
        if not mask.any():
            continue
        clusters = np.asarray(rows.clusters)[mask]
        answer[subset] = {"rows": int(mask.sum())} | {f"mean_{k}": float(v[mask].mean()) for k, v in logprobs.items()}
        for other in ("shuffled", "none"):
            answer[subset][f"right - {other}"] = paired_mean_difference(logprobs["right"][mask], logprobs[other][mask],
                                                                        clusters, samples, seed)
    result = {"task": task_name, "explainer": read_manifest(explainer_dir)["source"],
              "target": read_manifest(target_dir)["source"], "rows": len(rows.questions),
              "own_token": own, "shared_part": {"mean": float(np.mean(list(shares.values()))) if shares else None,
                                                "by_group": shares},
              "answer_logprob": answer, "projection_movement": projection_movement(explainer, alignment, width),
              "provenance": provenance(settings)}
    write_json(result, out_path)
    return result
