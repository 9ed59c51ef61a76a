"""Per-sample scores, calibration and the Scorer. Imports no transport."""
