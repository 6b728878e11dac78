"""ssmlora: parameter-efficient fine-tuning with LoRA and state-space-model adapters."""

__version__ = "0.1.0"
