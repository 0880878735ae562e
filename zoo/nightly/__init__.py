"""`zoo nightly`: rebuild every variant of the manifest whose inputs changed, publish it, and report
what happened. manifest: the TOML schema; run: the runner loop (the gate's too); report: the metric
changes against the published scorecards and the markdown people read. The run exits non-zero when
a variant failed or was found broken."""
