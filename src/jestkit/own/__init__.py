"""Your own data and model: a run's pieces from the CLI's flags (run), `jestkit train` on them
(train) and `jestkit score`, the reference cache of your shards (score)."""
