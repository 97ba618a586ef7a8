"""Exact and near-duplicate removal (MinHash LSH), step `dedup` between convert and split.

Two steps:

* `signatures(root, recipe, convert_manifest)` -- step `dedup-signatures`, one per convert
  shard (parallel in the flow's task runner): the projected text (`projection`: prompt =
  user turns, response = assistant turns, conversation = every turn; for records a template
  rendered, the source's own fields on that side instead of the template's wording:
  `tasks.dedup.content`) is normalised (NFKC, casefold, whitespace folded), keyed for exact
  matching, shingled (word `shingle_size`-grams; character shingles for no-space scripts)
  and MinHashed by one compiled pass over a batch (`kernels.py`). Signatures equal
  `datasketch.MinHash(num_perm, seed, hashfunc=tasks.dedup.minhash.shingle_hash)` bit for
  bit (Tuneline's shingle hash: `minhash.py`). Table `dedup_signatures` (ids, keep-rule
  columns, exact key, shingle count; the signature for `verify: estimate`), and the keys,
  partitioned on disk by key for the out-of-core clustering: `dedup_bands`, `dedup_exact`
  (`tasks.dedup.partitions`).
* `dedup(root, recipe, convert_manifests, signature_manifests, mapper=None)` -- step
  `dedup`, out of core: tasks over ranges of key partitions find the exact groups and the
  LSH buckets; candidate pairs are verified (`verify: exact` = Jaccard over the sets of
  shingle hashes, re-made from the records of the pairs only; `estimate` = share of equal
  signature slots), kept when Jaccard >= `threshold`, clustered (connected components over
  exact + verified edges), one record kept per cluster. Memory: one task's keys (at most
  `partitions.MAX_TASK_ENTRIES`) plus what is proportional to the duplicates. The tasks
  run where `mapper` says (`tasks.dedup.mapper`: here, threads, a process pool, Dask),
  with the same results. Tables `dedup_clusters`, `dedup_removed` (shard, row, record_id
  of every removed row) and `rejects`.
* `survivors(store, dedup_manifest)` -- the kept records, in order: the convert shards
  streamed without the removed rows. The kept rows are never copied; `split` reads them
  this way.

Keep rule (deterministic): higher source `priority`, then more turns, then more
characters (`n_chars`), then the smallest `record_id`. `scope: within_source` compares
records of the same source only. `template_variants: keep` never removes a record as a
duplicate of its own template variant (same source, same non-empty `example_id`, different
`template_id`): with the source fields compared, the renderings of one example are exact
duplicates of each other, and they stay; `dedup` treats them like any other records. The
same example in two sources is not a template variant: it is removed like any duplicate.

Documented edge cases: a record whose projection is empty (no turns of the projected
role) has no exact key and is never compared or removed; a text with fewer units than
`shingle_size` is matched exactly only; LSH bands/rows are those datasketch's
`_optimal_param(threshold, num_perm, false_positive_weight, false_negative_weight)` chooses
(`minhash.lsh_params`: the same optimisation, its integrals by exact quadrature).
"""
from tasks.dedup.cluster import dedup, survivors
from tasks.dedup.signatures import signatures

__all__ = ["dedup", "signatures", "survivors"]
