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
    from pipeline.hooked import HookedTransformer

    return HookedTransformer(CFG).init_weights(seed).eval()


def _inputs(count=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG["d_vocab"], (count, CFG["n_ctx"]), generator=generator)


def test_engine_patches_a_component_as_forward_hooks_do():
    """run_components (nnsight) replacing one head's output gives the output of plain torch hooks doing the same;
    the saved activations are the clean ones where nothing is patched."""
    from pipeline.patching import Patch, run_components, wrap

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
    from pipeline.patching import Patch, run_components, wrap

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
    from pipeline import circuits
    from pipeline.patching import wrap

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
    from pipeline import circuits
    from pipeline.interpbench import circuit_edges
    from pipeline.patching import wrap

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
    from pipeline.circuits import derangement

    for count in (2, 3, 17):
        order = derangement(count, 3)
        assert sorted(order.tolist()) == list(range(count)) and all(order[i] != i for i in range(count))


def test_discover_scores_a_built_case_and_refuses_foreign_edges(tmp_path):
    """discover on a case folder in the released layout: node and edge recovery, every component and path scored,
    written atomically; an edges.pkl with a path the residual stream does not have is refused naming the file."""
    import pickle
    import shutil

    from pipeline import circuits
    from pipeline.interpbench import circuit_edges, read_metadata

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
    settings = {"inputs": 80, "seed": 0, "atol": 0.05, "found_above": 0.01}
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
