"""Lightning callbacks of the app."""

from ssmlora_app.callbacks.export import ExportAdapter
from ssmlora_app.callbacks.hrm_diagnostics import HRMDiagnostics
from ssmlora_app.callbacks.lr_monitor import LRMonitor
from ssmlora_app.callbacks.predictions import PredictionWriter
from ssmlora_app.callbacks.summary import FitSummary

__all__ = ["ExportAdapter", "FitSummary", "HRMDiagnostics", "LRMonitor", "PredictionWriter"]
