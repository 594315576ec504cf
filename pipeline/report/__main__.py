"""`python -m pipeline.report [SUMMARY]` prints the summary table (results/summary.parquet);
`python -m pipeline.report tables FILE...` prints the Markdown tables of results and seeds files."""

import argparse
import sys

from pipeline.artifacts import read_table
from pipeline.report import print_summary, results_tables

if sys.argv[1:2] == ["tables"]:
    tables = argparse.ArgumentParser(prog="python -m pipeline.report tables",
                                     description="Print results and seeds files as Markdown tables.")
    tables.add_argument("files", nargs="+", metavar="FILE", help="results/{task}/{run}.json or .seeds.json")
    print(results_tables(tables.parse_args(sys.argv[2:]).files), end="")
else:
    summary = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__)
    summary.add_argument("summary", nargs="?", default="results/summary.parquet", metavar="SUMMARY")
    print_summary(read_table(summary.parse_args().summary))
