"""The training engine both applications share: configuration sections (config), the step
(step), the loop (loop: Trainer), FLOP counting (flops), selection statistics (stats),
checkpoints (checkpoint), run folders (rundir), the reference as the step sees it (reference),
a run recorded to result.json (record) and the device (device)."""
