"""`python -m pipeline.report [results/summary.parquet]` prints the summary table;
`python -m pipeline.report tables FILE...` prints the Markdown tables of results and seeds files."""
import sys

from pipeline.artifacts import read_table
from pipeline.report import print_summary, results_tables

if sys.argv[1:2] == ["tables"]:
    print(results_tables(sys.argv[2:]), end="")
else:
    print_summary(read_table(sys.argv[1] if len(sys.argv) > 1 else "results/summary.parquet"))
