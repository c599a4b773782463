"""`jestkit plan`: which method pays on a pool for a compute budget, from cheap measurements of
the reference's pass over the pool (measure), rules on them (rules), short pilots where the
rules cannot decide (pilots), and the table it prints and writes (report)."""
