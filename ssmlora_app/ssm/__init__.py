"""State-space kernels used by the adapters (usable on their own): the diagonal LTI scan and
balanced truncation."""

from ssmlora_app.ssm.reduction import (
    BalancedTruncation,
    ModalSystem,
    balanced_truncation,
    gramians,
    to_modal,
)
from ssmlora_app.ssm.scan import SCAN_METHODS, kernel, lti_scan, lti_step

__all__ = [
    "SCAN_METHODS",
    "BalancedTruncation",
    "ModalSystem",
    "balanced_truncation",
    "gramians",
    "kernel",
    "lti_scan",
    "lti_step",
    "to_modal",
]
