"""Run telemetry: what a run cost, per step, written as `run_report.json` beside the records.

The report exists so that a user can price the full run from a small sample (`lmsynth estimate`): per step
it keeps the request, token, failure, retry and re-ask counts and the time spent in batches; for the run it keeps
the wall time, the time before the first batch finished (engine start, which does not grow with the input),
the number of instructions covered and the GPU-hours (visible GPUs × wall time; 0 on the CPU).

The runner feeds a `Telemetry` collector once per LLM batch. distilabel runs steps in other processes (or
Ray actors), so steps can instead append `BatchEvent` lines to an events folder (`append_event`) that the
collector in the main process follows; both paths end in the same counters.

One module per job: `events` (the `BatchEvent` lines steps append), `metering` (counting one batch's model
calls), `collector` (the run's counters, the events follower and the progress bar), `report` (the
`run_report.json` model) and `report_files` (writing, reading, deriving and merging reports).
"""
