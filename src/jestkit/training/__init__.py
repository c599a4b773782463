"""The jestkit application: configs, the training step and loop, reference, demo, reports."""
