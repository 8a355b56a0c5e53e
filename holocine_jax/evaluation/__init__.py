"""Evaluation of sampling runs: transition control with TransNet V2, contact sheets, gallery."""
