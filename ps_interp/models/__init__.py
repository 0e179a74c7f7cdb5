"""Models: adapters, loading, the `Model` type and tiny random models."""
from .adapters import ADAPTERS, Adapter, adapter_for, register_adapter, supported_architectures
from .loading import DEFAULT_MODEL, cache_dir, load, wrap
from .model import SITE, Model
from . import organism, vlm  # noqa: E402,F401  (register 'smollm2-135m-safety-en' and 'smollm2-dinov2-llava')

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "register_adapter", "supported_architectures",
           "DEFAULT_MODEL", "cache_dir", "load", "wrap", "SITE", "Model"]
