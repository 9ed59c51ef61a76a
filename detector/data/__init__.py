"""Data readers (one per SPEC format), built-in datasets and synthetic generators."""

from detector.data.sampleset import SampleSet, to_model_space
from detector.data.spec import load_spec

__all__ = ["SampleSet", "load_spec", "to_model_space"]
