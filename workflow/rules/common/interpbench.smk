# Input functions of the InterpBench and circuits rules (interpbench.smk, circuits.smk).
# InterpBench: the configured cases that build here, and the skipped ones with what they need. An unknown case id or
# a metadata entry that cannot be built is an error now, before any job runs.
# A relative metadata path not found in the working directory is the workflow's own copy.
INTERPBENCH_METADATA = SETTINGS.interpbench.metadata
if not Path(INTERPBENCH_METADATA).is_absolute() and not Path(INTERPBENCH_METADATA).exists():
    INTERPBENCH_METADATA = str(Path(workflow.basedir) / INTERPBENCH_METADATA)
INTERPBENCH_BUILD, INTERPBENCH_SKIPPED = interpbench.plan(INTERPBENCH_METADATA, list(SETTINGS.interpbench.cases))


def interpbench_case_metadata(wildcards):
    """The metadata a case is built from, once the case is known to be one this config builds: a listed case that
    cannot be built here, or one never listed, is refused before any job with what to do."""
    case = wildcards.case
    if case in INTERPBENCH_SKIPPED:
        raise ValueError(f"InterpBench case {case} is listed in interpbench.cases but is not built here: "
                         f"{INTERPBENCH_SKIPPED[case]}")
    if case not in INTERPBENCH_BUILD:
        raise ValueError(f"InterpBench case {case!r} is not in interpbench.cases ({INTERPBENCH_BUILD}); add it there "
                         f"if {INTERPBENCH_METADATA} defines it")
    return INTERPBENCH_METADATA


def circuit_cases(split):
    """The InterpBench case folders the circuits task reads for a split (train/test: circuits.train_cases;
    heldout_cases: circuits.heldout_cases); each must be a case this config builds."""
    section = SETTINGS.circuits
    cases = [str(c) for c in (section.heldout_cases if split == "heldout_cases" else section.train_cases)]
    unknown = [c for c in cases if c not in INTERPBENCH_BUILD]
    if unknown:
        raise ValueError(f"circuits: cases {unknown} are not InterpBench cases this config builds "
                         f"(interpbench.cases: {INTERPBENCH_BUILD})")
    return cases


def circuit_split_cases(wildcards):
    return circuit_cases(wildcards.split)


def circuit_label_inputs(wildcards):
    return {"cases": [f"resources/interpbench/{c}" for c in circuit_cases(wildcards.split)],
            "metadata": INTERPBENCH_METADATA}


def circuit_target_cases(wildcards):
    """Every case of the circuits task: its training cases, then its held-out ones."""
    return circuit_cases("train") + circuit_cases("heldout_cases")


def circuit_target_inputs(wildcards):
    return [f"resources/interpbench/{c}" for c in circuit_target_cases(wildcards)]


def interpbench_summary_inputs(wildcards):
    """Each built case's patching results and, when circuits.explainer is set, that explainer's circuits run."""
    paths = {"results": expand("results/interpbench/{case}.json", case=INTERPBENCH_BUILD)}
    explainer = SETTINGS.circuits.explainer
    if explainer:
        paths["explainer"] = f"results/circuits/{known_model(explainer)}_ib.json"
    return paths


def interpbench_case_dir(key):
    """The case folder a model key `ib{case}` names, for rules that take an InterpBench case as their target."""
    case = interpbench.case_key(key)
    if case not in INTERPBENCH_BUILD:
        raise ValueError(f"model key '{key}': not an InterpBench case this config builds ({INTERPBENCH_BUILD})")
    return f"resources/interpbench/{case}"
