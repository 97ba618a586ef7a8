"""Training and evaluation code runs where Prefect is not installed (a bare GPU box):
the Prefect tasks call it, it never imports Prefect (docs/ARCHITECTURE.md: tasks/ never imports Prefect)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_training_and_evaluation_import_without_prefect():
    code = ("import sys; sys.modules['prefect'] = None\n"  # any `import prefect` now raises
            "import tasks.train_sft.loop, tasks.train_sft.launch, tasks.model, tasks.evaluate.run\n"
            "import benchmarks.train\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
