"""Generation pipelines: translate, flag, generate, judge, select, second turn, on distilabel + vLLM.

The house, by role:

- `stages/`: the stage logic. `registry` lists each stage once (config model, function, row view, step,
  whether it calls a model); one module per stage. A new stage is its module plus one `register` call.
- `config` (the pipeline YAML), `plan` (the run plan: the YAML resolved once per run), `run` (the runner:
  input scan, windows, the run folder's lock), `cache` (stage units), `workdir` (per-run work folders and
  unit locks), `shard`, `estimate`, `pipeline_row` (the row between stages).
- `executor/`: the only code that knows distilabel: a window of rows through one distilabel pipeline
  (`window`), its steps (`steps`), every patch of a framework's internals (`patches`, applied explicitly
  and checked), and distilabel's Ray execution (`on_ray`).
- `engines/`: one vLLM server per model per run, a local process (`servers`) or a Ray actor (`ray_actors`).
- `output/`: the run folder: finished rows become records (`sink`, `assemble`), the one writer of part
  files (`parts`) for `run` and `gather` (shards into one run folder).
- `telemetry/`: what a run cost (`run_report.json`).
"""

import warnings


# distilabel 1.5.3 puts `Field(default=None)` inside unions; current pydantic warns each time it builds them.
warnings.filterwarnings("ignore", message=r"The 'default' attribute with value None", module=r"pydantic\.")
