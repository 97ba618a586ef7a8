"""A step's code cannot change without its VERSION being considered (tasks/step_sources.py)."""
from tasks import step_sources


def test_every_step_code_matches_its_recorded_version():
    assert step_sources.problems(step_sources.current(), step_sources.recorded()) == []


def test_a_changed_step_body_with_the_same_version_is_caught(tmp_path, monkeypatch):
    mod = tmp_path / "tasks" / "toy.py"
    mod.parent.mkdir()
    mod.write_text('"""A toy step."""\nVERSION = 1\n\n\ndef body(x):\n    return x + 1\n')
    monkeypatch.setattr(step_sources, "PROJECT", tmp_path)
    monkeypatch.setattr(step_sources, "STEP_SOURCES", {"toy": ("tasks.toy", ("tasks/toy.py",))})
    monkeypatch.setattr(step_sources, "version_of", lambda step: 1)
    then = step_sources.current()

    mod.write_text('"""A toy step, documented better."""\nVERSION = 1\n\n\ndef body(x):  # the same\n    return x + 1\n')
    assert step_sources.problems(step_sources.current(), then) == []  # docstrings and comments do not count

    mod.write_text('"""A toy step."""\nVERSION = 1\n\n\ndef body(x):\n    return x + 2\n')
    [problem] = step_sources.problems(step_sources.current(), then)
    assert problem.startswith("toy: its code changed but tasks.toy.VERSION is still 1")

    monkeypatch.setattr(step_sources, "version_of", lambda step: 2)
    [problem] = step_sources.problems(step_sources.current(), then)
    assert "VERSION 1 -> 2" in problem


def test_every_step_of_the_pipeline_is_guarded():
    from flows.steps import STEPS

    assert set(STEPS) <= set(step_sources.STEP_SOURCES)
