"""The steps a run can stop after (`tuneline run --until`), in order. Kept apart from the
flows so the CLI can check `--until` without importing Prefect."""
DATA_STEPS = ["ingest", "convert", "dedup", "split", "validate", "mix"]
STEPS = DATA_STEPS + ["train", "evaluate"]
