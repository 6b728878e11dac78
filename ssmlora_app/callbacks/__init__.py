"""Lightning callbacks of the app (generic: none names an adapter method; a method's own
callbacks come from its ``callbacks`` hook through the module's ``configure_callbacks``)."""

from ssmlora_app.callbacks.diagnostics import AdapterDiagnostics
from ssmlora_app.callbacks.export import ExportAdapter
from ssmlora_app.callbacks.lr_monitor import LRMonitor
from ssmlora_app.callbacks.nan_guard import NanGuard, NonFiniteLossError
from ssmlora_app.callbacks.predictions import PredictionWriter
from ssmlora_app.callbacks.sigterm import CheckpointOnSigterm
from ssmlora_app.callbacks.summary import FitSummary

__all__ = [
    "AdapterDiagnostics",
    "CheckpointOnSigterm",
    "ExportAdapter",
    "FitSummary",
    "LRMonitor",
    "NanGuard",
    "NonFiniteLossError",
    "PredictionWriter",
]
