"""`distill report DIR`: one Markdown page with PNG plots for every distill model in a folder.

Models are found by content, not by file name (collect.py). Anything missing (no ONNX, no
bench.json, no pipeline.json, an older checkpoint without a newer metric) is said in the report,
never a crash. Modules, in the order a reader meets their output on the page:

- collect.py: discovery (records.py: the records it fills; bench_records.py: reading bench.json)
- headline.py: KD gain, budgets, data note; tables.py: the models table (text.py: number formats)
- tradeoff.py: accuracy vs params and vs latency
- classes.py, class_plots.py: per-class accuracy, confusion heatmaps, KD gain per class
- pruning.py: pruning line, trajectory plot and steps table
- latency.py: latency and throughput vs batch size per device, noisy numbers flagged
- curves.py: training curves; figures.py: pieces every plot shares
- provenance.py: data, stages, recipes, teachers, versions
- page.py: the page in order; output.py: the one atomic writer every file goes through
"""

from distill.report.collect import collect_models
from distill.report.headline import budgets
from distill.report.page import write_report

__all__ = ["budgets", "collect_models", "write_report"]
