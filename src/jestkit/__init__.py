"""jestkit: JEST (joint example selection) for PyTorch."""

from jestkit.core import (
    METHODS,
    POLICIES,
    Embeddings,
    SelectionConfig,
    Selector,
    select,
)

__all__ = ["METHODS", "POLICIES", "Embeddings", "SelectionConfig", "Selector", "select"]
__version__ = "0.1.0"
