"""Patching as circuit discovery: the nnsight engine on TransformerLens-style models, checked against known circuits."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import REPO

METADATA = REPO / "pipeline" / "data" / "interpbench_metadata.json"
CFG = {"n_layers": 2, "d_model": 16, "n_heads": 2, "d_head": 4, "d_mlp": 16, "d_vocab": 7, "d_vocab_out": 5,
       "n_ctx": 6, "act_fn": "gelu", "attention_dir": "causal", "initializer_range": 0.3}


def _model(seed=0):
    from pipeline.engine.hooked import HookedTransformer

    return HookedTransformer(CFG).init_weights(seed).eval()


def _inputs(count=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG["d_vocab"], (count, CFG["n_ctx"]), generator=generator)


def test_engine_patches_a_component_as_forward_hooks_do():
    """run_components (nnsight) replacing one head's output gives the output of plain torch hooks doing the same;
    the saved activations are the clean ones where nothing is patched."""
    from pipeline.engine.patching import Patch, run_components, wrap

    model, x = _model(), _inputs()
    source = x.roll(1, 0)
    _, cache = model.run_with_cache(source)
    value = cache["blocks.0.attn.hook_result"][:, :, 1]

    def hook(out):
        out = out.clone()
        out[:, :, 1] = value
        return out

    expected = model.run_with_hooks(x, [("blocks.0.attn.hook_result", hook)])
    out, saved = run_components(wrap(model), x, [Patch("blocks.0.attn.hook_result", 1, value)],
                                save=["hook_embed", "blocks.1.hook_mlp_out"])
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, model(x), atol=1e-4)
    _, clean_cache = model.run_with_cache(x)
    assert torch.allclose(saved["hook_embed"], clean_cache["hook_embed"])


def test_an_edge_patch_changes_only_its_path():
    """Adding a vector to the last residual stream moves the output by exactly that vector through the unembedding
    (the path is linear), and adding to one head's q input leaves the other heads' inputs and the residual alone."""
    from pipeline.engine.patching import Patch, run_components, wrap

    model, x = _model(), _inputs()
    delta = torch.randn(x.shape[0], CFG["n_ctx"], CFG["d_model"], generator=torch.Generator().manual_seed(1))
    out, _ = run_components(wrap(model), x, [Patch("blocks.1.hook_resid_post", None, delta, add=True)])
    assert torch.allclose(out - model(x), delta @ model.unembed.W_U, atol=1e-5)
    _, saved = run_components(wrap(model), x, [Patch("blocks.0.hook_q_input", 0, delta, add=True)],
                              save=["blocks.0.hook_q_input", "blocks.0.hook_k_input", "blocks.0.hook_resid_mid"])
    _, clean = model.run_with_cache(x)
    assert torch.allclose(saved["blocks.0.hook_q_input"][:, :, 0], clean["blocks.0.hook_q_input"][:, :, 0] + delta,
                          atol=1e-6)
    assert torch.allclose(saved["blocks.0.hook_q_input"][:, :, 1], clean["blocks.0.hook_q_input"][:, :, 1])
    assert torch.allclose(saved["blocks.0.hook_k_input"], clean["blocks.0.hook_k_input"])


def test_patching_finds_a_planted_circuit():
    """A model where only head 1 of layer 0 and the layer-1 MLP write to the output: patching ranks exactly those
    components first (node AUROC 1.0, precision and recall 1.0), and the paths that carry them above all others."""
    from pipeline.interpbench import discovery as circuits
    from pipeline.engine.patching import wrap

    model, x = _model(), _inputs(60)
    with torch.no_grad():
        for layer in range(2):
            for head in range(2):
                if (layer, head) != (0, 1):
                    model.blocks[layer].attn.W_O[head] = 0
        model.blocks[0].mlp.W_out.zero_()
        model.blocks[1].mlp.W_out.mul_(3)
    source = x[circuits.derangement(len(x), 0)]
    names = circuits.components(CFG)
    scores = circuits.node_scores(wrap(model), x, source, names, categorical=True, atol=0.05)
    truth = {"blocks.0.attn.hook_result[1]", "blocks.1.hook_mlp_out"}
    result = circuits.recovery(scores, truth, found_above=0.01)
    assert result["auroc"] == 1.0 and result["precision"] == 1.0 and result["recall"] == 1.0, scores
    assert all(scores[n][0] < 1e-9 for n in names if n not in truth)
    edges = circuits.candidate_edges(CFG)
    assert len(edges) == len(set(edges))
    assert ("blocks.0.attn.hook_result[1]", "blocks.1.hook_mlp_in") in edges
    assert ("blocks.1.attn.hook_result[0]", "blocks.1.hook_q_input[0]") not in edges   # same layer: not a path
    edge = circuits.edge_scores(wrap(model), x, source, edges, categorical=True, atol=0.05)
    dead = [e for e in edges if e[0] in {n for n in names if n not in truth}]
    assert dead and all(edge[e][0] < 1e-9 for e in dead)
    assert edge[("blocks.0.attn.hook_result[1]", "blocks.1.hook_resid_post")][0] > 1e-3
    assert edge[("hook_pos_embed", "blocks.1.hook_resid_post")][0] == 0.0   # positions never change


def test_a_compiled_case_is_recovered_exactly_by_node_patching():
    """The compiled tracr model of case 11 is its circuit and nothing else: node patching finds exactly the
    nodes tracr placed (AUROC 1.0) on the high-level model itself. The case folder below is that model too."""
    from pipeline.interpbench import discovery as circuits
    from pipeline.interpbench.cases import circuit_edges
    from pipeline.engine.patching import wrap

    x, categorical, compiled = circuits.case_inputs("11", METADATA, 120, 0)
    hl = compiled.model
    edges = circuit_edges(compiled.nodes, compiled.sink, hl.cfg["n_layers"] - 1)
    truth = circuits.circuit_components(edges)
    assert len(truth) == len(compiled.nodes) and truth <= set(circuits.components(hl.cfg))
    source = x[circuits.derangement(len(x), 0)]
    scores = circuits.node_scores(wrap(hl), x, source, circuits.components(hl.cfg), categorical, 0.05)
    result = circuits.recovery(scores, truth, 0.01)
    assert result["auroc"] == 1.0 and result["recall"] == 1.0, scores


def test_derangement_has_no_fixed_point():
    from pipeline.interpbench.discovery import derangement

    for count in (2, 3, 17):
        order = derangement(count, 3)
        assert sorted(order.tolist()) == list(range(count)) and all(order[i] != i for i in range(count))


def test_discover_scores_a_built_case_and_refuses_foreign_edges(tmp_path):
    """discover on a case folder in the released layout: node and edge recovery, every component and path scored,
    written atomically; an edges.pkl with a path the residual stream does not have is refused naming the file."""
    import pickle
    import shutil

    from pipeline.interpbench import discovery as circuits
    from pipeline.interpbench.cases import circuit_edges, read_metadata

    entry = read_metadata(METADATA)["11"]
    _, _, compiled = circuits.case_inputs("11", METADATA, 10, 0)
    cfg = dict(compiled.model.cfg)
    folder = tmp_path / "11"
    folder.mkdir()
    torch.save(compiled.model.state_dict(), folder / "ll_model_510.pth")
    with (folder / "ll_model_cfg_510.pkl").open("wb") as fh:
        pickle.dump(cfg, fh)
    (folder / "meta_510.json").write_text(json.dumps(entry["training_args"]))
    edges = circuit_edges(compiled.nodes, compiled.sink, cfg["n_layers"] - 1)
    with (folder / "edges.pkl").open("wb") as fh:
        pickle.dump(edges, fh)
    from pipeline.settings import InterpbenchPatching

    settings = InterpbenchPatching(inputs=80, seed=0, atol=0.05, found_above=0.01)
    result = circuits.discover("11", folder, METADATA, settings, tmp_path / "11.json", {"test": True})
    assert json.loads((tmp_path / "11.json").read_text())["nodes"] == result["nodes"]
    assert result["nodes"]["auroc"] == 1.0
    assert len(result["node_scores"]) == cfg["n_layers"] * (cfg["n_heads"] + 1)
    assert len(result["edge_scores"]) == len(circuits.candidate_edges(cfg))
    assert result["edges"]["in_circuit"] == sum(1 for e in edges if not circuits._inner(e))

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    with (bad / "edges.pkl").open("wb") as fh:
        pickle.dump(edges + [("blocks.1.hook_mlp_out", "blocks.0.hook_mlp_in")], fh)
    with pytest.raises(ValueError, match="edges.pkl"):
        circuits.discover("11", bad, METADATA, settings, tmp_path / "bad.json", {})
    assert not (tmp_path / "bad.json").exists()


@pytest.fixture(scope="module")
def compiled_case(tmp_path_factory):
    """Case 11's compiled tracr model written in the released layout: a model that is exactly its circuit."""
    import pickle

    from pipeline.interpbench import discovery as circuits
    from pipeline.interpbench.cases import circuit_edges, read_metadata

    entry = read_metadata(METADATA)["11"]
    _, _, compiled = circuits.case_inputs("11", METADATA, 10, 0)
    folder = tmp_path_factory.mktemp("cases") / "11"
    folder.mkdir()
    torch.save(compiled.model.state_dict(), folder / "ll_model_510.pth")
    with (folder / "ll_model_cfg_510.pkl").open("wb") as fh:
        pickle.dump(dict(compiled.model.cfg), fh)
    (folder / "meta_510.json").write_text(json.dumps(entry["training_args"]))
    with (folder / "edges.pkl").open("wb") as fh:
        pickle.dump(circuit_edges(compiled.nodes, compiled.sink, compiled.model.cfg["n_layers"] - 1), fh)
    return folder


def test_circuit_labels_ask_every_component_and_only_the_circuit_changes_the_output(compiled_case, tmp_path):
    """Each pair asks about every head and MLP once; on a model that is exactly its circuit no other component
    changes the output; answers carry the verdict; vectors are padded to the width; test inputs are not train's."""
    from pipeline.tasks.circuits import CircuitsConfig, build_labels, examples, training_rows
    from pipeline.explainer.prompts import VECTOR, parse_answer

    settings = CircuitsConfig.from_dict({"pairs_per_case": {"train": 12, "test": 4, "heldout_cases": 4}, "width": 32,
                                         "seed": 0})
    paths = {}
    for split in ("train", "test"):
        paths[split] = {"labels": tmp_path / f"{split}.parquet", "vectors": tmp_path / f"{split}.vectors.safetensors"}
        build_labels(split, ["11"], [str(compiled_case)], METADATA, settings, paths[split]["labels"],
                     paths[split]["vectors"], {"test": True})
    from pipeline.interpbench.discovery import components as all_components
    from pipeline.interpbench.cases import load_case

    train = examples(paths["train"], None)
    cfg = load_case(compiled_case)["cfg"]
    components = len(all_components(cfg))
    assert len(train.questions) == 12 * components and train.vectors.shape == (12 * components, 32)
    frame = train.frame
    assert (frame.groupby("pair_id")["component"].nunique() == components).all()
    assert not frame.loc[~frame["in_circuit"], "is_different"].any()
    assert frame.loc[frame["in_circuit"], "is_different"].any()
    assert (frame["output_position"] >= frame["position"]).all()    # causal: only later outputs can move
    assert all(q.count(VECTOR) == 1 for q in train.questions)
    assert [parse_answer(a).changed for a in train.answers] == frame["is_different"].tolist()
    assert cfg["d_model"] < 32 and float(train.vectors[:, cfg["d_model"]:].abs().max()) == 0.0   # zero-padded
    test = examples(paths["test"], None)
    assert not set(test.frame["input_tokens"]) & set(frame["input_tokens"])
    balanced = training_rows(train, CircuitsConfig.from_dict({"balance": 1.0}), 0)
    changed = int(frame["is_different"].sum())
    assert int(balanced.labels.sum()) == changed and len(balanced.labels) == 2 * changed


def test_circuit_scores_recover_the_circuit_from_verdicts(compiled_case, tmp_path):
    """score_frames on answers that repeat the truth: change F1 1.0 per case, and ranking components by how often
    they are said to change recovers the known circuit exactly (AUROC 1.0), as the true labels do; a no-vector
    control that always says "unchanged" recovers nothing (AUROC 0.5)."""
    from pipeline.tasks.circuits import CircuitsConfig, baseline_frames, build_labels, examples, score_frames
    from pipeline.explainer.explain import prediction_frame
    from pipeline.explainer.prompts import change_answer

    settings = CircuitsConfig.from_dict({"pairs_per_case": {"train": 12, "test": 12, "heldout_cases": 4}, "width": 32,
                                         "seed": 0})
    paths = {split: {"labels": tmp_path / f"{split}.parquet", "vectors": tmp_path / f"{split}.vectors.safetensors"}
             for split in ("train", "test")}
    for split, p in paths.items():
        build_labels(split, ["11"], [str(compiled_case)], METADATA, settings, p["labels"], p["vectors"], {})
    test = examples(paths["test"], None)
    right = prediction_frame(test, test.questions, test.answers, "finetuned")
    silent = prediction_frame(test, test.questions, [change_answer(False, "x")] * len(test.answers), "no_vector")
    baselines, described = baseline_frames(right, paths["train"], paths["test"], None)
    from pipeline.artifacts import write_table

    from pipeline.tasks import ScoreInputs

    held = {}
    for variant, frame in (("finetuned", right), ("no_vector", silent)):   # the same rows, as a held-out set
        held[variant] = str(tmp_path / f"held_{variant}.parquet")
        write_table(frame, held[variant], {})
    named = ScoreInputs(train={k: str(v) for k, v in paths["train"].items()}, evals={"heldout_cases": held}).named()
    scores = score_frames({"finetuned": right, "no_vector": silent} | baselines, 50, 0,
                          inputs=ScoreInputs.of(named))  # the rule's flat names, read back as the stage does
    assert set(scores["heldout_cases"]["metrics"]) == {"finetuned", "no_vector", "structure_prior", "majority_class"}
    assert scores["heldout_cases"]["metrics"]["structure_prior"] == scores["metrics"]["structure_prior"]
    assert scores["per_case_f1"]["test"]["finetuned"] == {"11": 1.0}
    recovery = scores["circuit_recovery"]["test"]
    assert recovery["finetuned"] == {"11": 1.0} and recovery["labels"] == {"11": 1.0}
    assert recovery["no_vector"] == {"11": 0.5}
    rates = scores["component_rates"]["11"]
    assert all(r["said_changed"] == r["changed"] for r in rates.values())   # the answers are the truth
    in_circuit = set(test.frame.loc[test.frame["in_circuit"], "component"])
    assert all(rates[c]["changed"] == 0.0 for c in rates if c not in in_circuit)
    assert set(baselines) == {"structure_prior", "majority_class"} and described["majority_class"]


@pytest.mark.slow
def test_workflow_builds_patches_and_explains_small_cases(tmp_path, prepared_models):
    """`snakemake results/interpbench/summary.parquet` at a tiny size: cases built, patched and scored against their
    circuits, the circuits task trained on two cases and tested on a third, one summary row per case holding
    patching's and the explainer's figures; a target other than `ib` is refused before any job."""
    import pandas as pd

    from workflow_runs import override, planned_jobs, snakemake

    prepared_models.into(tmp_path, "tiny")

    small = override(tmp_path, "small.yaml", {
        "interpbench": {"cases": ["3", "11", "24"],
                        "build": {"inputs": 80, "test_fraction": 0.25, "min_train": 80, "max_epochs": 2,
                                  "eval_every": 1, "batch_size": 64, "compile_check": 10, "seed": 0},
                        "patching": {"inputs": 16, "found_above": 0.01, "atol": 0.05, "seed": 0}},
        "circuits": {"train_cases": ["11", "24"], "heldout_cases": ["3"],
                     "pairs_per_case": {"train": 6, "test": 2, "heldout_cases": 2}, "balance": 1.0, "width": 32,
                     "seed": 0, "explainer": "tiny", "generation": {"max_examples": 12, "max_new_tokens": 8},
                     "training": {"max_length": 160}}})
    plan = planned_jobs(snakemake(tmp_path, "-n", "results/interpbench/summary.parquet", configfiles=[small]))
    assert plan["interpbench_case"] == 3 and plan["interpbench_patching"] == 3 and plan["circuits_labels"] == 3
    assert plan["circuits_generate"] == 3 and plan["circuits_generate_heldout_cases"] == 3
    run = snakemake(tmp_path, "results/interpbench/summary.parquet", configfiles=[small], timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = pd.read_parquet(tmp_path / "results" / "interpbench" / "summary.parquet")
    assert sorted(summary["case"]) == ["11", "24", "3"]
    assert summary["node_auroc"].notna().all() and summary["edge_candidates"].gt(0).all()
    assert set(summary.loc[summary["case"] == "3", "explainer_set"]) == {"heldout_cases"}
    assert set(summary.loc[summary["case"] != "3", "explainer_set"]) == {"test"}
    result = json.loads((tmp_path / "results" / "circuits" / "tiny_ib.json").read_text())
    assert {"structure_prior", "majority_class", "finetuned", "no_vector", "untrained"} <= set(result["metrics"])
    assert set(result["heldout_cases"]["metrics"]) == {"finetuned", "untrained", "no_vector", "structure_prior",
                                                       "majority_class"}
    assert (tmp_path / "report" / "interpbench" / "circuits.png").stat().st_size > 0
    refused = snakemake(tmp_path, "-n", "results/circuits/tiny_tiny.json", configfiles=[small])
    assert refused.returncode != 0 and "the target is 'ib'" in refused.stdout + refused.stderr
