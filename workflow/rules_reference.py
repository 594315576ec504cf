"""docs/rules.md: every rule of the workflow (those the rule files generate in loops included) with the file that
defines it and what it makes, read from the workflow as Snakemake loads it.

    python workflow/rules_reference.py > docs/rules.md      (tests/test_docs.py keeps it current)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def rules() -> list[tuple[str, str, list[str]]]:
    """(name, rule file, output patterns without their wildcard constraints) of every rule, in definition order."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DeploymentSettings, ResourceSettings, StorageSettings,
                                          WorkflowSettings)

    with SnakemakeApi() as api:
        loaded = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                              storage_settings=StorageSettings(), workflow_settings=WorkflowSettings(),
                              deployment_settings=DeploymentSettings(), snakefile=REPO / "Snakefile", workdir=REPO)
        return [(rule.name, str(Path(rule.snakefile).relative_to(REPO)),
                 [re.sub(r"\{(\w+),[^}]*\}", r"{\1}", str(out)) for out in rule.output])
                for rule in loaded._workflow.rules]


def reference() -> str:
    lines = ["# Rules", "",
             "Every rule of the workflow with the file that defines it and what it makes, generated from the workflow "
             "as Snakemake loads it (`python workflow/rules_reference.py > docs/rules.md`). The shared rules are made "
             "in loops, one per task and layout: `{task}_train`, `{task}_generate`, `{task}_score` for the run of "
             "training.seed; `_seeded` for the other seeds of training.seeds; `_budget` for the points of a training "
             "budget; `{task}_generate_{set}` per evaluation set.", "",
             "| rule | file | makes |", "| --- | --- | --- |"]
    for name, where, outputs in rules():
        made = "<br>".join(f"`{o}`" for o in outputs) or "(the default target)"
        lines.append(f"| `{name}` | [{where}](../{where}) | {made} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
