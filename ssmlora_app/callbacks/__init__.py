"""Lightning callbacks of the app."""

from ssmlora_app.callbacks.export import ExportAdapter
from ssmlora_app.callbacks.hrm_diagnostics import HRMDiagnostics
from ssmlora_app.callbacks.lr_monitor import LRMonitor
from ssmlora_app.callbacks.nan_guard import NanGuard, NonFiniteLossError
from ssmlora_app.callbacks.predictions import PredictionWriter
from ssmlora_app.callbacks.sdt_selection import SDTSelection
from ssmlora_app.callbacks.sigterm import CheckpointOnSigterm
from ssmlora_app.callbacks.ssmlora_diagnostics import SSMLoRADiagnostics
from ssmlora_app.callbacks.summary import FitSummary

__all__ = [
    "CheckpointOnSigterm",
    "ExportAdapter",
    "FitSummary",
    "HRMDiagnostics",
    "LRMonitor",
    "NanGuard",
    "NonFiniteLossError",
    "PredictionWriter",
    "SDTSelection",
    "SSMLoRADiagnostics",
]
