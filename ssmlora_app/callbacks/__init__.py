"""Lightning callbacks of the app (generic: none names an adapter method; a method's own
callbacks come from its ``callbacks`` hook through the module's ``configure_callbacks``)."""

from ssmlora_app.callbacks.checkpoint import RunCheckpoint
from ssmlora_app.callbacks.diagnostics import AdapterDiagnostics
from ssmlora_app.callbacks.export import ExportAdapter
from ssmlora_app.callbacks.lr_monitor import LRMonitor
from ssmlora_app.callbacks.nan_guard import NanGuard, NonFiniteLossError
from ssmlora_app.callbacks.predictions import PredictionWriter
from ssmlora_app.callbacks.progress import ParameterSummary, quiet_progress_bar
from ssmlora_app.callbacks.sigterm import SIGTERM_EXIT_CODE, CheckpointOnSigterm
from ssmlora_app.callbacks.summary import FitSummary

__all__ = [
    "SIGTERM_EXIT_CODE",
    "AdapterDiagnostics",
    "CheckpointOnSigterm",
    "ExportAdapter",
    "FitSummary",
    "LRMonitor",
    "NanGuard",
    "NonFiniteLossError",
    "ParameterSummary",
    "PredictionWriter",
    "RunCheckpoint",
    "quiet_progress_bar",
]
