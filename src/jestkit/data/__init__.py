"""Data any application reads: the batch the loop draws (source: Examples, DataSource),
WebDataset / Parquet shard pools (shards) streamed as a source (stream), a word tokenizer."""
