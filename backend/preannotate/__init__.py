"""Pre-annotating whole projects: one tracking job per task, outside /predict, Label Studio as the ledger.

Pieces (one job each)
---------------------
- `spec.py`: what travels between processes: `JobSpec` (one task to track), `FrameProgress` and `Outcome`.
- `worker.py`: `Worker`, built in the worker's process by a `WorkerFactory`; `setup()` loads the model once,
  `run(spec, report_progress) -> Outcome` tracks one task (whole video, both directions, no time budget, the
  same result as an interactive track: backend.predict.TaskPredictor with an infinite deadline) and writes its
  prediction to Label Studio (`ledger.write_prediction`); a spec of source "automatic" (AUTO_MASKLETS, a task
  without prompts) is predicted by backend.automatic.AutoPredictor instead.
- `engine.py`: the `Engine` protocol and `get_engine(name)`; `local_engine.py` (N spawned processes);
  `ray_engine.py` (optional) implements the same protocol.
- `ledger.py`: reading tasks and prompts from Label Studio, the prompt signature, idempotent writes.
- `journal.py`: the local SQLite journal (attempts, last error, frames done, heartbeat).
- `runner.py`: one job over a project: pending specs from the ledger, the engine, retries, the summary.
- `cli.py` (`__main__.py`): the CLI, `python -m backend.preannotate --project ID ...`.
- `jobs.py`: the HTTP side's jobs (POST /preannotate, Retrieve Predictions' unfinished tasks, annotation
  webhooks), each run as a CLI process.

Engine contract
---------------
`engine.run(specs, worker_factory, on_progress, on_outcome, stop_event)` runs in the coordinating process
(the CLI, or the job process the HTTP route starts) and returns when every spec has an outcome or
`stop_event` is set:
- `specs`: a list of `JobSpec`; `worker_factory`: a `WorkerFactory`. Both are plain picklable dataclasses
  (JSON-like data and `config.settings.Settings`): the engine ships them to its worker processes/actors.
- In each worker process (an actor for Ray), the engine calls `worker = worker_factory(device)` once, then
  `worker.setup()` once (model load), then `worker.run(spec, report_progress)` for each spec it is given.
  `device` is "cuda:N" / "cuda" for the GPU the process owns, or None to follow the DEVICE setting. Worker
  processes must be started with the spawn context (never fork after torch is initialised).
- `report_progress(FrameProgress)` is called in the worker, at most about once a second (it is the
  heartbeat too); the engine relays each report to `on_progress(FrameProgress)` in the coordinating process.
- `worker.run` never raises for task problems: it returns an `Outcome` (done, unchanged, or failed with a
  reason and `retryable`). When a worker dies (SIGKILL, OOM, lost node) the engine makes the outcome itself:
  `Outcome.crashed(spec, reason)` (failed, retryable), and replaces the worker.
- `on_outcome(outcome) -> JobSpec | None` is called in the coordinating process for every outcome. The
  coordinator decides retries in one place (runner.py, from the journal's attempt count and
  `outcome.retryable`): a returned spec (the same task, `attempt + 1`) must be run again, by any worker.
- Callbacks are called from one thread of the coordinating process at a time (never concurrently).
- When `stop_event` is set (Ctrl-C, job cancelled), the engine stops handing out specs, ends its workers
  (a task cut short writes nothing: its prediction is written only when the whole video is tracked) and
  returns; the next run finds those tasks still pending in Label Studio and does them again.
Idempotence does not depend on the engine: a worker writes the new prediction first, then deletes every
other prediction of this backend's model version on that task, so a retried or duplicated run leaves one.
"""
