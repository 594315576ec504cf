"""Train language models to explain their own computations (Li et al., arXiv 2511.08579).

The Python package behind the Snakemake workflow: every stage's logic lives here and is
tested without Snakemake; `workflow/scripts/` only passes paths and settings in.
"""

__version__ = "0.1.0"
