"""The results tables are rendered from the results files: every figure as the file holds it, with its commit."""

import json

from pipeline.artifacts import provenance, write_json
from pipeline.report import results_tables
from pipeline.report.seeds import aggregate


def result_file(path, seed, value):
    figure = lambda v: {"value": v, "ci": [v - 0.1, v + 0.1], "se": 0.05}  # noqa: E731
    write_json({"task": "act_patch", "explainer": "a", "target": "b",
                "metrics": {"finetuned": {"overall": {"n": 10, "clusters": 4, "is_changed_f1": figure(value),
                                                      "exact_match": figure(value / 2)},
                                          "is_different=True": {"n": 5, "exact_match": figure(value / 4)}},
                            "shuffled_vector": {"overall": {"n": 10, "clusters": 4, "is_changed_f1": figure(0.5),
                                                            "exact_match": figure(0.2)}}},
                "comparisons": {"finetuned - shuffled_vector": {"overall": {"is_changed_f1": {
                    "difference": value - 0.5, "ci": [value - 0.6, value - 0.4], "se": 0.05}}}},
                "verdict_vs_prior": {"finetuned": {"rows": 10, "agreement": 0.9, "disagreements": 1, "variant_right": 0,
                                                   "prior_right": 1, "variant_missed_changes": 2,
                                                   "variant_false_changes": 0, "prior_missed_changes": 1,
                                                   "prior_false_changes": 1, "by_cell": {
                    "last_token L0-1": {"rows": 4, "changed_share": 0.5, "disagreements": 1, "variant_missed_changes": 2,
                                        "variant_false_changes": 0, "prior_missed_changes": 1, "prior_false_changes": 1},
                    "last_token L2-3": {"rows": 6, "changed_share": 0.0, "disagreements": 0, "variant_missed_changes": 0,
                                        "variant_false_changes": 0, "prior_missed_changes": 0,
                                        "prior_false_changes": 0}}}},
                "training": {"seed": seed, "steps": 7, "examples": 56}, "provenance": provenance({})}, path)
    return str(path)


def test_tables_show_each_runs_figures_commit_and_seeds(tmp_path):
    paths = [result_file(tmp_path / f"seed{s}.json", s, v) for s, v in ((0, 0.8), (1, 0.7))]
    aggregate(dict(enumerate(paths)), tmp_path / "seeds.json")
    text = results_tables([paths[0], str(tmp_path / "seeds.json")])
    commit = json.loads(open(paths[0]).read())["provenance"]["code_version"]
    assert f"commit {commit}" in text and "seed 0, 7 steps on 56 rows" in text
    one, seeds = text.split("seeds 0, 1")  # one run's tables, then the tables across seeds
    rows = {line.split("|")[1].strip(): line for line in one.splitlines() if line.startswith("| ")}
    # the headline (changed rows' exact match) first, then the overall figures, each with its interval
    assert rows["finetuned"].split("|")[2:5] == [" 0.200 [0.100, 0.300] ", " 0.800 [0.700, 0.900] ",
                                                 " 0.400 [0.300, 0.500] "]
    assert "+0.300 [+0.200, +0.400]" in rows["finetuned - shuffled_vector"]
    assert ("finetuned agrees on 90.0% of 10 rows, differs on 1 (right on 0, the prior on 1), misses 2 changes and "
            "calls 0 that did not happen (the prior 1 and 1)") in one
    assert "by the prior's cell" in one and "last_token L0-1 (4 rows, 50% changed): 2 / 0 [1 / 1]" in one
    assert "last_token L2-3" not in one  # a cell without errors is left out
    # across seeds: the mean with its interval, then each seed's own figure; * where every seed's interval excludes 0
    assert "0.750 [" in seeds and "(0.800, 0.700)" in seeds and "(+0.300, +0.200) *" in seeds


def test_features_tables_say_how_many_descriptions_differ(tmp_path):
    """Whether the descriptions change with the vector is read from the table: distinct descriptions per variant and
    the share differing from the fine-tuned explainer's."""
    figure = {"value": 0.3, "ci": [0.2, 0.4], "se": 0.05}
    overall = lambda distinct, **more: {"n": 300, "clusters": 3, "embedding_similarity": figure,  # noqa: E731
                                        "distinct_descriptions": distinct, "distinct_share": distinct / 300} | more
    write_json({"task": "features", "explainer": "a", "target": "a",
                       "metrics": {"finetuned": {"overall": overall(12)},
                                   "no_vector": {"overall": overall(1, differs_from_finetuned=0.057)}},
                       "comparisons": {}, "provenance": provenance({})}, tmp_path / "features.json")
    text = results_tables([str(tmp_path / "features.json")])
    assert "finetuned 12 of 300; no_vector 1 of 300 (6% differ)." in text
