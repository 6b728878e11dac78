"""State-space kernels used by the adapters (usable on their own)."""

from ssmlora_app.ssm.scan import SCAN_METHODS, kernel, lti_scan, lti_step

__all__ = ["SCAN_METHODS", "kernel", "lti_scan", "lti_step"]
