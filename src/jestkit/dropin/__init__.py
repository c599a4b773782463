"""What a user imports into their own training loop.

* jestkit.dropin.loader: SelectiveLoader (wrap a DataLoader of super-batches) and
  CachedReference (reference losses looked up by example id).
* jestkit.dropin.cache: ReferenceCache, build_cache and the fingerprints that keep a cache
  tied to the weights and the data that made it.
* jestkit.dropin.holdout: train the reference on a held-out share of your own data.
* jestkit.dropin.distributed: global selection across torchrun ranks (GlobalSelector),
  redistribution of the selected examples, DDP helpers, the cache built sharded.
"""

from jestkit.dropin.loader import CachedReference, SelectiveLoader

__all__ = ["CachedReference", "SelectiveLoader"]
