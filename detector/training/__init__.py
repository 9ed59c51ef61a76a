"""Training loop, checkpoints and the train -> calibrate -> bundle pipeline."""
