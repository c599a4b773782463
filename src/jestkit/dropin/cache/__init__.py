"""The reference cache: the frozen reference model's outputs for every training example, by id.

One module per job: format (CacheMeta, parts, manifest, checks), ids (the three id kinds),
fingerprint, build (build_cache, finalize), reader (ReferenceCache), datacomp (subsets).

The reference never changes, so its outputs (image and text embeddings for the contrastive
losses, a per-example loss otherwise) are computed once and read back during training. They are
stored as Parquet in one folder:

    path/
      part-00000.parquet     rows 0 .. rows_per_part-1 of `ids` (in the order given to build_cache)
      part-00001.parquet     the next rows_per_part ids, and so on
      manifest.json          written last, atomically: the cache is valid only when it exists

Ids come in three kinds, found from what build_cache is given, and stored compactly:

    int64    a torch integer tensor (or numpy integer array)  -> Parquet int64 column `id`
    str      a list (or numpy array) of str, e.g. WebDataset keys  -> Arrow string column `id`
    uid128   a numpy array of dtype UID_DTYPE = np.dtype("u8,u8"), DataComp's 128-bit uids as
             (first 16 hex digits, last 16 hex digits); parse_uids makes one from hex strings
             -> fixed_size_binary(16) column `id`, the uid's 16 bytes big-endian (its hex)

Each part also has one float32 column per output (a fixed-size list for embeddings), and carries
in its Parquet metadata the fingerprints it was built with, its index, the id kind and the
fingerprint of the whole id list, so that parts of different builds are never mixed.

What is checked, so that a damaged cache is refused (a CacheError naming the file and saying to
rebuild) and never read as wrong rows:
  * every Parquet page carries a CRC-32 (write_page_checksum) verified on every read;
  * the manifest records each part's size and sha256, verified when the cache is opened, so a
    part that is truncated, replaced, renamed or taken from another build is refused;
  * each part's metadata must name its own index, the manifest's meta, id kind and row count;
  * a manifest that is not valid JSON or lacks a field is refused, as is an older format.

Building is resumable and its writes atomic: a part is written to `part-k.parquet.tmp` and
renamed with os.replace once complete, so an interrupted build leaves no half part; re-running
skips complete parts and overwrites left-over temp files. Part k belongs to rank k % world_size;
under torch.distributed every rank calls build_cache with its rank, and rank 0 calls finalize
after a barrier (with world_size 1, build_cache finalizes itself). finalize reads every part
back (verifying its page checksums), checks that the parts' ids are exactly `ids`, and writes
the manifest with the parts' checksums.
"""

from jestkit.dropin.cache.build import build_cache, finalize
from jestkit.dropin.cache.datacomp import load_datacomp_subset, save_datacomp_subset
from jestkit.dropin.cache.fingerprint import fingerprint_ids, fingerprint_state_dict
from jestkit.dropin.cache.format import FORMAT_VERSION, MANIFEST, CacheError, CacheMeta
from jestkit.dropin.cache.ids import ID_KINDS, UID_DTYPE, Ids, format_uids, id_kind, parse_uids
from jestkit.dropin.cache.reader import ReferenceCache

__all__ = [
    "CacheError",
    "CacheMeta",
    "FORMAT_VERSION",
    "ID_KINDS",
    "Ids",
    "MANIFEST",
    "ReferenceCache",
    "UID_DTYPE",
    "build_cache",
    "finalize",
    "fingerprint_ids",
    "fingerprint_state_dict",
    "format_uids",
    "id_kind",
    "load_datacomp_subset",
    "parse_uids",
    "save_datacomp_subset",
]
