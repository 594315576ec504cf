"""Reading the vector: the fitted alignment, per-layer projections, the training rows that need the vector, answer
loss weights, the across-seed table and the diagnostic."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.explainer.alignment import (AlignmentWidthError, fit_ridge, load_alignment, matched_positions, own_token_ranks,
                                unit)
from pipeline.artifacts import write_tensors
from pipeline.explainer.model import (ContinuousTokenExplainer, answer_weights, collate, encode_example, load_explainer,
                                placeholder_token_id, save_explainer)


def test_ridge_recovers_a_planted_linear_map():
    generator = torch.Generator().manual_seed(0)
    planted = torch.randn(24, 16, generator=generator)
    states = torch.randn(2000, 16, generator=generator)
    fitted = fit_ridge(states, states @ planted.T, ridge=1e-6)
    assert torch.allclose(fitted, planted, atol=1e-3)
    # A strong ridge shrinks the map: the setting is used.
    assert fit_ridge(states, states @ planted.T, ridge=10.0).norm() < 0.5 * planted.norm()


def test_fitted_alignment_recovers_a_planted_map_on_a_tiny_model(tiny):
    """States that are a planted linear image of the explainer's own embeddings are mapped back onto them: every
    own token ranks first after the fit."""
    model, _ = tiny
    table = model.get_input_embeddings().weight.detach().float()
    ids = torch.randint(0, table.shape[0], (3000,), generator=torch.Generator().manual_seed(1))
    planted = torch.linalg.qr(torch.randn(table.shape[1], table.shape[1], generator=torch.Generator().manual_seed(2)))[0]
    states = unit(table[ids]) @ planted.T * 7.0  # another basis and another scale, as a deep layer's states
    weight = fit_ridge(unit(states), table[ids], ridge=1e-6)
    ranks = own_token_ranks(unit(states[:200]) @ weight.T, ids[:200], table)
    assert int(ranks.max()) == 0
    before = own_token_ranks(states[:200], ids[:200], table)
    assert float(before.float().median()) > 0  # the planted rotation hides the tokens before the map


def test_alignment_refuses_maps_of_other_widths_naming_the_layer(tmp_path):
    path = tmp_path / "maps.safetensors"
    write_tensors({"layers.0.weight": torch.zeros(8, 4), "layers.0.mean": torch.zeros(4),
                   "layers.3.weight": torch.zeros(8, 5), "layers.3.mean": torch.zeros(5)}, path, {"settings": {}})
    with pytest.raises(AlignmentWidthError, match="layer 3"):
        load_alignment(path, target_width=4, explainer_width=8)


def test_tokens_are_matched_where_both_tokenizers_end():
    target = [(0, 0), (0, 3), (3, 7), (7, 8), (8, 12)]
    explainer = [(0, 0), (0, 7), (7, 12)]
    assert matched_positions(target, explainer) == [(2, 1), (4, 2)]


def _maps(target_width, width, layers=(0, 2)):
    generator = torch.Generator().manual_seed(3)
    return {layer: (torch.randn(width, target_width, generator=generator),
                    torch.randn(target_width, generator=generator)) for layer in layers}


def test_per_layer_projections_land_at_each_rows_own_layer_and_survive_save_and_load(tiny_dir, tmp_path):
    from pipeline.models import load_model

    model, tokenizer = load_model(tiny_dir)
    placeholder = placeholder_token_id(tokenizer, model)
    width = model.get_input_embeddings().weight.shape[1]
    maps = _maps(12, width)
    explainer = ContinuousTokenExplainer(model, 12, placeholder, alignment=maps)
    example = encode_example(tokenizer, "x <vector> y", None, "plain", placeholder)
    vectors = torch.randn(2, 12, generator=torch.Generator().manual_seed(4))
    batch = collate([example, example], vectors, tokenizer.pad_token_id, "cpu", [2, 0])
    embeds = explainer.embed(batch["input_ids"], batch["vectors"], batch["vector_layers"])
    position = example.input_ids.index(placeholder)
    for row, layer in enumerate([2, 0]):
        weight, mean = maps[layer]
        expected = unit(vectors[row:row + 1], mean) @ weight.T * explainer.embed_norm
        assert torch.allclose(embeds[row, position], expected[0], atol=1e-5)
    with pytest.raises(ValueError, match=r"layer\(s\) \[1\]"):
        explainer.embed(batch["input_ids"], batch["vectors"], [1, 0])

    folder = tmp_path / "explainer"
    folder.mkdir()
    with torch.no_grad():
        explainer.layer_projections["2"].weight.add_(0.5)  # as training moves it
    save_explainer(explainer, folder, {"method": "full", "target_width": 12, "projection": "none"})  # as training wrote it
    loaded, _ = load_explainer(folder, tiny_dir, 12)
    again = loaded.embed(batch["input_ids"], batch["vectors"], batch["vector_layers"])
    assert torch.allclose(again[:, position], explainer.embed(batch["input_ids"], batch["vectors"], [2, 0])[:, position],
                          atol=1e-5)
    assert json.loads((folder / "explainer.json").read_text())["alignment"] == "fitted"


def test_untrained_explainer_starts_from_the_alignment_artifact_and_can_freeze_it(tiny_dir, tmp_path):
    from pipeline.models import load_model

    model, tokenizer = load_model(tiny_dir)
    width = model.get_input_embeddings().weight.shape[1]
    maps = _maps(12, width, layers=(1,))
    path = tmp_path / "maps.safetensors"
    write_tensors({"layers.1.weight": maps[1][0], "layers.1.mean": maps[1][1]}, path, {"settings": {}})
    explainer, _ = load_explainer(None, tiny_dir, 12, alignment=path)
    assert torch.equal(explainer.layer_projections["1"].weight.detach(), maps[1][0])
    frozen = ContinuousTokenExplainer(model, 12, placeholder_token_id(tokenizer, model), alignment=maps,
                                      train_projection=False)
    assert not any(p.requires_grad for p in frozen.projection_parameters())
    # Directions, not states (SAE decoder directions): center false maps the unit direction itself.
    uncentred, _ = load_explainer(None, tiny_dir, 12, alignment=path, center=False)
    direction = torch.randn(2, 12)
    unit = direction / direction.norm(dim=-1, keepdim=True)
    expected = unit @ maps[1][0].T * uncentred.embed_norm
    assert torch.allclose(uncentred.project(direction, [1, 1]), expected, atol=1e-5)
    assert not torch.allclose(explainer.project(direction, [1, 1]), expected, atol=1e-3)  # the mean is subtracted


def test_answer_weights_favour_the_content_and_the_verdict(tiny):
    _, tokenizer = tiny
    text = " The most likely output would change to <<<Paris>>>."
    weights = answer_weights(tokenizer, text, content=3.0, verdict=2.0)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    by_token = {tokenizer.decode([i]).strip(): w for i, w in zip(ids, weights)}
    assert by_token["Paris"] == 3.0 and by_token["most"] == 2.0 and by_token["change"] == 2.0
    assert by_token["likely"] == 1.0 and by_token["would"] == 1.0
    plain = encode_example(tokenizer, "q", "The output would remain unchanged from <<<Rome>>>.", "plain")
    assert plain.weights is None  # weights of 1 change nothing and cost nothing


def test_weighted_loss_counts_each_answer_token_by_its_weight():
    from pipeline.explainer.training import answer_loss_sum

    logits = torch.randn(1, 5, 11, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([[-100, -100, 3, 4, 5]])
    weights = torch.tensor([[0.0, 0.0, 1.0, 3.0, 1.0]])
    each = torch.nn.functional.cross_entropy(logits[0, 1:4], labels[0, 2:], reduction="none")
    loss, count = answer_loss_sum(logits, labels, weights=weights)
    assert count == 3 and torch.isclose(loss, each[0] + 3 * each[1] + each[2])


def _rows():
    from pipeline.tasks import Examples

    frame = pd.DataFrame({
        "token_type": ["last_subject_token", "relation_suffix", "last_token", "last_token"],
        "layer": [[0, 1], [0, 1], [2, 3], [2, 3]],
        "counterfactual_continuation": [["ĠParis"], ["ĠRome"], ["ĠOslo"], ["ĠLima"]],
        "patch_position": [{"counterfact_text_token": t} for t in ("ĠFrance", "Ġis", "Ġof", "Ġof")],
        "is_different": [True, False, True, False]})
    return Examples(frame, [f"q{i} <vector>" for i in range(4)], [f"a{i}" for i in range(4)],
                    torch.arange(4, dtype=torch.float32)[:, None].repeat(1, 8), [str(i) for i in range(4)],
                    ["p0", "p0", "p1", "p1"], np.array([True, False, True, False]),
                    {"token_type": frame["token_type"].tolist(), "layer": frame["layer"].tolist(),
                     "subset_counterfactual_answer": [True, False, False, False]})


def test_act_patch_training_rows_oversample_and_add_reading_rows(tiny_dir):
    from pipeline.tasks.act_patch.settings import ActPatchConfig
    from pipeline.tasks.act_patch.task import training_rows as rows_of

    def training_rows(rows, settings, seed, target_dir):  # the section typed, as the training stage passes it
        return rows_of(rows, ActPatchConfig.from_dict(settings), seed, target_dir)

    rows = _rows()
    as_they_are = {"training_rows": {"oversample_counterfactual": 1, "reading": {"fraction": 0}}}
    assert training_rows(rows, as_they_are, 0, str(tiny_dir)) is rows
    more = training_rows(rows, {"training_rows": {"oversample_counterfactual": 3, "reading": {"fraction": 0}}}, 0,
                         str(tiny_dir))
    assert len(more.questions) == 6 and more.questions.count("q0 <vector>") == 3
    assert len(set(more.row_keys)) == 6
    read = training_rows(rows, {"training_rows": {"oversample_counterfactual": 1, "reading": {"fraction": 0.5}}}, 0, str(tiny_dir))
    extra = [(q, a, int(v[0])) for q, a, v in zip(read.questions[4:], read.answers[4:], read.vectors[4:])]
    assert len(extra) == 2  # half of the rows, drawn from the last-subject-token and last-token rows
    for question, answer, source in extra:
        assert question == f"At layer {rows.columns['layer'][source][0]}, <vector> ="
        assert answer == ["Paris", "Rome", "Oslo", "Lima"][source] and source != 1
    tokens = training_rows(rows, {"training_rows": {"oversample_counterfactual": 1, "reading": {"fraction": 0.5, "target": "token",
                                                                 "token_types": ["last_subject_token"]}}}, 0, str(tiny_dir))
    assert tokens.answers[4:] == ["France"]


def test_counterfactual_answer_rows_are_scored_as_their_own_split():
    from pipeline.explainer.metrics import change_metrics, paired_differences

    answers = ["The most likely output would change to <<<Paris>>>.", "The output would remain unchanged from <<<x>>>."]
    frame = pd.DataFrame({"row_key": ["0", "1", "2", "3"], "cluster": ["a", "a", "b", "b"],
                          "prediction": [answers[0], answers[1], answers[1], answers[1]],
                          "reference": [answers[0], answers[1], answers[0], answers[1]],
                          "is_different": [True, False, True, False],
                          "subset_counterfactual_answer": [True, False, False, False]})
    scores = change_metrics(frame, samples=20)
    assert scores["counterfactual_answer"]["n"] == 1
    assert scores["counterfactual_answer"]["exact_match"]["value"] == 1.0
    assert scores["is_different=True"]["exact_match"]["value"] == 0.5
    worse = frame.assign(prediction=[answers[1]] * 4)
    assert paired_differences(frame, worse, samples=20)["counterfactual_answer"]["exact_match"]["difference"] == 1.0


def _result(path, values: dict, ses: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "task": "act_patch", "explainer": "e", "target": "t", "training": {"seed": 0},
        "metrics": {"finetuned": {"overall": {"exact_match": {"value": values["em"], "ci": [0, 1], "se": ses["em"]}}}},
        "comparisons": {"finetuned - shuffled_vector": {"overall": {"exact_match": {
            "difference": values["diff"], "ci": [values["diff"] - 0.01, values["diff"] + 0.01], "se": ses["diff"]}}}}}))
    return path


def test_across_seed_table_equals_the_per_seed_results_recomputed(tmp_path):
    from scipy.stats import t

    from pipeline.report.seeds import aggregate

    values = [{"em": 0.2, "diff": 0.05}, {"em": 0.3, "diff": 0.02}, {"em": 0.4, "diff": 0.08}]
    ses = [{"em": 0.03, "diff": 0.01}, {"em": 0.05, "diff": 0.02}, {"em": 0.04, "diff": 0.03}]
    paths = {seed: _result(tmp_path / f"{seed}.json", v, s) for seed, (v, s) in enumerate(zip(values, ses))}
    out = aggregate(paths, tmp_path / "seeds.json")
    em = out["metrics"]["finetuned"]["overall"]["exact_match"]
    assert em["values"] == [0.2, 0.3, 0.4] and em["mean"] == pytest.approx(0.3)
    assert em["sd"] == pytest.approx(np.std([0.2, 0.3, 0.4], ddof=1))
    half = np.hypot(t.ppf(0.975, 2) * em["sd"] / np.sqrt(3), 1.96 * 0.04)
    assert em["ci"] == pytest.approx([0.3 - half, 0.3 + half])
    diff = out["comparisons"]["finetuned - shuffled_vector"]["overall"]["exact_match"]
    assert diff["every_seed_excludes_zero"] is True and diff["mean"] == pytest.approx(0.05)
    assert json.loads((tmp_path / "seeds.json").read_text())["seeds"] == [0, 1, 2]


def test_diagnostic_ranks_states_that_equal_the_embeddings_first(tiny):
    from pipeline.tasks.act_patch.diagnostics import rank_and_cosine, shared_part

    model, _ = tiny
    table = model.get_input_embeddings().weight.detach().float()
    ids = list(range(100, 140))
    ranks, cosine = rank_and_cosine(table[ids] * 3.0, ids, table)
    assert ranks.max() == 0 and np.allclose(cosine, 1.0, atol=1e-5)
    same = torch.ones(4, 8)
    opposite = torch.tensor([[1.0] * 8, [-1.0] * 8])
    assert shared_part(torch.cat([same, opposite]), ["a"] * 4 + ["b"] * 2) == pytest.approx({"a": 1.0, "b": 0.0})


def test_raw_scale_puts_the_vector_itself_at_the_placeholder(tiny_dir):
    """The paper's injection when widths match: no projection, no normalisation."""
    from pipeline.models import load_model

    model, tokenizer = load_model(tiny_dir)  # its own copy: the placeholder is added to this tokenizer and model
    placeholder = placeholder_token_id(tokenizer, model)
    width = model.get_input_embeddings().weight.shape[1]
    explainer = ContinuousTokenExplainer(model, width, placeholder, projection="none", scale="raw")
    example = encode_example(tokenizer, "x <vector> y", None, "plain", placeholder)
    vectors = 40.0 * torch.randn(1, width, generator=torch.Generator().manual_seed(6))
    batch = collate([example], vectors, tokenizer.pad_token_id, "cpu")
    embeds = explainer.embed(batch["input_ids"], batch["vectors"])
    assert torch.equal(embeds[0, example.input_ids.index(placeholder)], vectors[0])
    # Per-layer maps of the raw vector are the paper's embed_projs (a released cross-width explainer), but a fitted
    # alignment is fitted on unit vectors, so the settings refuse that pair before any job.
    maps = _maps(width, width, (0,))
    raw_maps = ContinuousTokenExplainer(model, width, placeholder, scale="raw", alignment=maps)
    assert torch.allclose(raw_maps.project(vectors, [0]), vectors @ maps[0][0].T, atol=1e-3)
    import copy
    from pathlib import Path

    import yaml

    from pipeline.config import ConfigError, validate_config

    config = copy.deepcopy(yaml.safe_load((Path(__file__).resolve().parent.parent / "config.yaml").read_text()))
    config["act_patch"]["explainer"] = {"alignment": "fitted", "scale": "raw"}
    with pytest.raises(ConfigError, match="act_patch.explainer: alignment 'fitted' .* scale 'embedding_norm'"):
        validate_config(config)
