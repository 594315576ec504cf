"""InterpBench rebuilt offline: tracr compilation in torch, the TransformerLens-style model, SIIT, the released layout."""

from __future__ import annotations

import json
import pickle
import random
import shutil

import pytest
import torch

from tests.conftest import REPO

METADATA = REPO / "pipeline" / "data" / "interpbench_metadata.json"
# Cases whose program reads the next token while the metadata gives them causal attention: their compiled model
# cannot compute the program, and the build reports the measured agreement.
NEXT_TOKEN_UNDER_CAUSAL = {"8", "38"}
BUILD_SECTION = {"inputs": 400, "test_fraction": 0.25, "min_train": 1200, "max_epochs": 30, "eval_every": 5,
                 "batch_size": 256, "compile_check": 50, "seed": 0}


def build_config():
    from pipeline.settings import InterpbenchBuild as InterpBenchBuildConfig

    return InterpBenchBuildConfig.from_dict(BUILD_SECTION)


@pytest.fixture(scope="module")
def metadata():
    from pipeline.interpbench.cases import read_metadata

    return read_metadata(METADATA)


def _compile(case, metadata):
    from pipeline.interpbench.programs import PROGRAMS
    from pipeline.interpbench.tracr_torch import compile_program

    entry = metadata[case]
    program = PROGRAMS[case]()
    causal = entry["transformer_cfg"]["attention_dir"] == "causal"
    return program, compile_program(program, entry["vocab"], entry["max_seq_len"] - 1, causal=causal)


@pytest.mark.parametrize("case", ["3", "4", "8", "11", "13", "18", "19", "20", "21", "24", "33", "34", "35", "36",
                                  "37", "38"])
def test_compiled_model_computes_the_rasp_program(case, metadata):
    from pipeline.interpbench.cases import _compile_agreement

    program, compiled = _compile(case, metadata)
    entry, rng = metadata[case], random.Random(int(case) if case.isdigit() else 0)
    sequences = [[rng.choice(entry["vocab"]) for _ in range(entry["max_seq_len"] - 1)] for _ in range(100)]
    agreement = _compile_agreement(compiled, program, sequences)
    # The compiled widths are the benchmark's: the vocabulary with BOS and PAD in, the output space out.
    assert compiled.model.cfg["d_vocab"] == entry["transformer_cfg"]["d_vocab"]
    assert compiled.model.cfg["d_vocab_out"] == entry["transformer_cfg"]["d_vocab_out"]
    if case in NEXT_TOKEN_UNDER_CAUSAL:
        assert agreement["compile_agreement"] < 1.0
    else:
        assert agreement == {"compile_agreement": 1.0, "compile_position_agreement": 1.0}
    # The known circuit's edges are paths of the residual stream: each writer comes before its reader, none
    # feeds itself (tracr's selector-width MLP writes the space it reads).
    from pipeline.interpbench.discovery import _inner, candidate_edges
    from pipeline.interpbench.cases import circuit_edges

    cfg = compiled.model.cfg
    edges = circuit_edges(compiled.nodes, compiled.sink, cfg["n_layers"] - 1)
    paths = set(candidate_edges(cfg))
    assert edges and all(edge in paths or _inner(edge) for edge in edges), edges


def test_weight_suffix_names_the_released_files(metadata):
    from pipeline.interpbench.cases import weight_suffix

    for case, entry in metadata.items():
        if entry.get("training_args"):
            assert f"ll_model_{weight_suffix(entry['training_args'])}.pth" in {f["file_name"] for f in entry["files"]}


def test_hooks_patch_one_head_and_read_every_node():
    from pipeline.engine.hooked import HookedTransformer

    cfg = {"n_layers": 2, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "d_vocab": 6, "d_vocab_out": 3,
           "n_ctx": 5, "act_fn": "gelu", "attention_dir": "causal", "initializer_range": 0.5}
    model = HookedTransformer(cfg).init_weights(0)
    x, y = torch.randint(6, (3, 5)), torch.randint(6, (3, 5))
    out_x, cache_x = model.run_with_cache(x)
    out_y, cache_y = model.run_with_cache(y)
    assert {"hook_embed", "blocks.1.attn.hook_result", "blocks.0.mlp.hook_post", "blocks.1.hook_resid_post"} <= set(cache_x)
    # The per-head results sum (plus b_O) to the attention output, and the last residual gives the output.
    assert torch.allclose(cache_x["blocks.0.attn.hook_result"].sum(2) + model.blocks[0].attn.b_O,
                          cache_x["blocks.0.hook_attn_out"], atol=1e-6)
    patched = model.run_with_hooks(x, [("blocks.1.hook_resid_post", lambda _: cache_y["blocks.1.hook_resid_post"])])
    assert torch.allclose(patched, out_y, atol=1e-6)

    def head_1_from_y(out):
        out = out.clone()
        out[:, :, 1] = cache_y["blocks.1.attn.hook_result"][:, :, 1]
        return out

    with model.hooks([("blocks.1.attn.hook_result", head_1_from_y)]):
        _, cache_p = model.run_with_cache(x, names=["blocks.1.attn.hook_result"])
    got = cache_p["blocks.1.attn.hook_result"]
    assert torch.equal(got[:, :, 0], cache_x["blocks.1.attn.hook_result"][:, :, 0])
    assert torch.equal(got[:, :, 1], cache_y["blocks.1.attn.hook_result"][:, :, 1])
    with pytest.raises(KeyError, match="no hook point 'blocks.2.mlp.hook_post'"):
        model.run_with_hooks(x, [("blocks.2.mlp.hook_post", lambda out: out)])


def test_causal_attention_ignores_later_tokens():
    from pipeline.engine.hooked import HookedTransformer

    cfg = {"n_layers": 2, "d_model": 8, "n_heads": 2, "d_head": 4, "d_mlp": 16, "d_vocab": 6, "d_vocab_out": 3,
           "n_ctx": 5, "act_fn": "relu", "attention_dir": "causal", "initializer_range": 0.5}
    model = HookedTransformer(cfg).init_weights(1)
    x = torch.randint(6, (4, 5))
    y = x.clone()
    y[:, 3:] = (y[:, 3:] + 1) % 6
    assert torch.allclose(model(x)[:, :3], model(y)[:, :3], atol=1e-6)
    bidirectional = HookedTransformer(cfg | {"attention_dir": "bidirectional"}).init_weights(1)
    assert not torch.allclose(bidirectional(x)[:, :3], bidirectional(y)[:, :3], atol=1e-4)


@pytest.fixture(scope="module")
def built_case(tmp_path_factory):
    """Case 24 (one head copies the current token) built at a small size."""
    from pipeline.interpbench.cases import build_case

    out = tmp_path_factory.mktemp("interpbench")
    stats = build_case("24", METADATA, build_config(), out / "24", out / "24.json", {"test": True})
    return out / "24", stats


@pytest.mark.slow
def test_siit_trains_the_case_and_writes_the_released_layout(built_case, metadata):
    from pipeline.interpbench.cases import load_case
    from pipeline.interpbench.siit import all_nodes, evaluate, node_name
    from pipeline.interpbench.tracr_torch import BOS

    folder, stats = built_case
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "edges.pkl", "ll_model_510.pth", "ll_model_cfg_510.pkl", "meta_510.json"]
    assert stats["compile_agreement"] == 1.0 and stats["circuit_nodes"] == ["blocks.0.attn.hook_result[0]"]
    assert stats["behavior_accuracy"] >= 0.95 and stats["iia_min"] >= 0.95, stats
    assert len(stats["strict_accuracy"]) == len(all_nodes(load_case(folder)["model"])) - 1
    case = load_case(folder)
    assert case["cfg"]["n_layers"] == metadata["24"]["transformer_cfg"]["n_layers"]
    assert ("blocks.0.attn.hook_result[0]", "blocks.1.hook_resid_post") in case["edges"]
    assert ("hook_embed", "blocks.0.hook_v_input[0]") in case["edges"]
    # The loaded model is the trained one: its accuracies on fresh inputs equal what the build measured there.
    _, compiled = _compile("24", metadata)
    rng = random.Random(5)
    x = compiled.encode([[BOS] + [rng.choice(metadata["24"]["vocab"]) for _ in range(9)] for _ in range(200)])
    again = evaluate(compiled.model, case["model"], [("blocks.0.attn.hook_result", 0)], x, True, 0.05)
    assert again["behavior_accuracy"] >= 0.95
    assert set(again["strict_accuracy"]) == set(stats["strict_accuracy"]) and node_name(
        ("blocks.0.attn.hook_result", 0)) in again["iia"]


def test_loader_reads_a_hand_made_transformerlens_folder(tmp_path):
    """The real InterpBench files: a state dict with TransformerLens's mask buffers, a config dict with its extra
    fields (a torch dtype among them), edges in ACDC naming."""
    from pipeline.engine.hooked import HookedTransformer
    from pipeline.interpbench.cases import load_case

    cfg = {"n_layers": 2, "d_model": 12, "n_ctx": 10, "d_head": 3, "n_heads": 4, "d_mlp": 48, "act_fn": "gelu",
           "d_vocab": 10, "d_vocab_out": 5, "attention_dir": "causal", "normalization_type": None,
           "use_attn_result": True, "dtype": torch.float32, "device": "cpu", "model_name": "custom"}
    model = HookedTransformer(cfg).init_weights(3)
    state = model.state_dict()
    for layer in range(2):
        state[f"blocks.{layer}.attn.mask"] = torch.ones(10, 10, dtype=torch.bool).tril()
        state[f"blocks.{layer}.attn.IGNORE"] = torch.tensor(-1e5)
    torch.save(state, tmp_path / "ll_model_510.pth")
    (tmp_path / "ll_model_cfg_510.pkl").write_bytes(pickle.dumps(cfg))
    (tmp_path / "meta_510.json").write_text(json.dumps({"lr": 0.01}))
    edges = [("hook_embed", "blocks.0.hook_mlp_in"), ("blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out"),
             ("blocks.0.hook_mlp_out", "blocks.1.hook_q_input[2]"), ("blocks.1.attn.hook_result[2]",
                                                                     "blocks.1.hook_resid_post")]
    (tmp_path / "edges.pkl").write_bytes(pickle.dumps(edges))
    case = load_case(tmp_path)
    x = torch.randint(10, (2, 10))
    assert torch.equal(case["model"](x), model(x)) and case["edges"] == edges and case["suffix"] == "510"

    (tmp_path / "edges.pkl").write_bytes(pickle.dumps(edges + [("blocks.1.attn.hook_result[4]", "blocks.1.hook_resid_post")]))
    with pytest.raises(ValueError, match=r"edges.pkl: names nodes .*'blocks.1.attn.hook_result\[4\]'"):
        load_case(tmp_path)
    (tmp_path / "edges.pkl").write_bytes(pickle.dumps(edges))
    (tmp_path / "ll_model_cfg_510.pkl").write_bytes(pickle.dumps(cfg | {"d_model": 16}))
    with pytest.raises(ValueError, match=r"ll_model_510.pth: the state dict does not match its config"):
        load_case(tmp_path)


def test_bad_cases_fail_before_building_and_leave_no_folder(tmp_path, metadata):
    from pipeline.interpbench.cases import CaseError, build_case, plan

    build, skipped = plan(METADATA, ["24", 3, "ioi"])
    assert build == ["24", "3"] and "GPT-2" in skipped["ioi"]
    with pytest.raises(CaseError, match=r"interpbench.cases: unknown case '99'"):
        plan(METADATA, ["24", "99"])
    broken = json.loads(METADATA.read_text())
    for entry in broken["cases"]:
        if entry["case_id"] == "19":
            del entry["transformer_cfg"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(broken))
    with pytest.raises(CaseError, match=r"metadata.json: case 19 has no 'transformer_cfg'"):
        plan(bad, ["19"])
    # A build that fails part-way (the program's output space does not match the metadata's) writes nothing.
    for entry in broken["cases"]:
        if entry["case_id"] == "24":
            entry["transformer_cfg"]["d_vocab_out"] = 7
    bad.write_text(json.dumps(broken))
    with pytest.raises(CaseError, match=r"case 24 has d_vocab_out 7, but the compiled program has 3"):
        build_case("24", bad, build_config(), tmp_path / "24", tmp_path / "24.json", {})
    assert not (tmp_path / "24").exists() and not (tmp_path / "24.json").exists()


@pytest.mark.slow
def test_summary_has_a_row_per_case_and_says_what_skipped_ones_need(built_case, tmp_path):
    from pipeline.artifacts import read_table
    from pipeline.interpbench.cases import summarize

    folder, stats = built_case
    stats_path = folder.parent / "24.json"
    shutil.copy(stats_path, tmp_path / "24.json")
    summarize([tmp_path / "24.json"], {"ioi": "GPT-2's config"}, tmp_path / "cases.parquet", {"test": True})
    frame = read_table(tmp_path / "cases.parquet").set_index("case")
    assert frame.loc["24", "status"] == "built" and frame.loc["24", "behavior_accuracy"] == stats["behavior_accuracy"]
    assert frame.loc["ioi", "status"] == "skipped" and "GPT-2" in frame.loc["ioi", "skip_reason"]


def test_workflow_plans_every_case_from_another_directory_and_refuses_an_unknown_one(tmp_path):
    """The metadata is found from any working directory; an unknown case stops Snakemake before any job."""
    from workflow_runs import override, planned_jobs, snakemake

    plan = planned_jobs(snakemake(tmp_path, "-n", "results/interpbench/cases.parquet"))
    assert plan == {"interpbench_case": 16, "interpbench_cases": 1}
    bad = override(tmp_path, "bad.yaml", {"interpbench": {"cases": ["24", "99"]}})
    run = snakemake(tmp_path, "-n", "results/interpbench/cases.parquet", configfiles=[bad])
    assert run.returncode != 0 and "interpbench.cases: unknown case '99'" in run.stdout + run.stderr
    assert not (tmp_path / "resources").exists()
