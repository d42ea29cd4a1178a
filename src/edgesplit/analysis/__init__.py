"""Cut analysis: trace a model, enumerate its cuts, size them and cost both sides."""

from edgesplit.analysis.cuts import Analysis, Cut, analyze, example_input

__all__ = ["Analysis", "Cut", "analyze", "example_input"]
