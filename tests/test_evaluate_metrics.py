"""Exact match, ROUGE-L and the MMLU CSV reader on known inputs."""
from __future__ import annotations

import pytest

from tasks.evaluate.metrics import exact_match, lcs_length, normalize_answer, rouge_l
from tasks.evaluate.mmlu import MmluError, mmlu_files, mmlu_prompt, read_mmlu_csv


def test_exact_match_normalises_case_punctuation_articles_spaces():
    assert exact_match("The  Eiffel tower!", "eiffel Tower") == 1.0
    assert exact_match("an apple.", "Apple") == 1.0
    assert exact_match("Paris", "London") == 0.0
    assert exact_match("", "") == 1.0
    assert normalize_answer("A cat, the dog") == "cat dog"


def test_lcs_length_known_cases():
    assert lcs_length(list("abcbdab"), list("bdcaba")) == 4
    assert lcs_length([], ["a"]) == 0
    assert lcs_length(["x"], ["x"]) == 1


def test_rouge_l_known_values():
    # LCS("the cat sat on the mat", "the cat lay on the mat") = 5 of 6 tokens on both sides.
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # P = 2/2, R = 2/4 -> F = 2*1*0.5/1.5
    assert rouge_l("police killed", "police killed the gunman") == pytest.approx(2 / 3)
    assert rouge_l("Hello, World!", "hello world") == 1.0
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("abc", "xyz") == 0.0
    # word order matters: a reversed sentence shares a subsequence of length 1
    assert rouge_l("a b c", "c b a") == pytest.approx(1 / 3)


def _write(path, text: str, newline: str = "\n"):
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def test_mmlu_no_header_letter_answers(tmp_path):
    f = _write(tmp_path / "astronomy_test.csv", "What is 1+1?,1,2,3,4,B\nSun is a?,star,planet,moon,comet,A\n")
    items = read_mmlu_csv(f)
    assert [i.answer for i in items] == [1, 0]
    assert items[0].subject == "astronomy"
    assert items[0].choices == ("1", "2", "3", "4")
    assert items[1].row == 2


def test_mmlu_header_index_answers_and_lowercase(tmp_path):
    f = _write(tmp_path / "math.csv", "question,A,B,C,D,answer\nq1,a,b,c,d,3\nq2,a,b,c,d,0\nq3,a,b,c,d,c\n")
    items = read_mmlu_csv(f)
    assert [i.answer for i in items] == [3, 0, 2]
    assert [i.row for i in items] == [2, 3, 4]
    assert items[0].subject == "math"


def test_mmlu_embedded_newline_and_cr_in_quoted_fields(tmp_path):
    text = '"Line one\nline two\r\nline three?","x\ny",b,c,d,D\nplain,a,b,c,d,A\n'
    f = tmp_path / "q_dev.csv"
    f.write_bytes(text.replace("\nplain", "\r\nplain").encode())
    items = read_mmlu_csv(f)
    assert len(items) == 2
    assert items[0].question == "Line one\nline two\r\nline three?"
    assert items[0].choices[0] == "x\ny"
    assert items[0].answer == 3
    assert items[1].row == 2 and items[1].answer == 0
    assert "Line one" in mmlu_prompt(items[0]) and "D. d" in mmlu_prompt(items[0])


@pytest.mark.parametrize(
    "text, message",
    [
        ("q1,a,b,c,d,A\nq2,a,b,c,E\n", "row 2: expected 6 fields"),
        ("q1,a,b,c,d,A\nq2,a,b,c,d,E\n", "row 2: field 'answer'"),
        ("q1,a,b,c,d,A\n,a,b,c,d,B\n", "row 2: field 'question' is empty"),
        ('q1,a,b,c,d,A\n"q2,a,b,c,d,A\n', "not valid CSV"),
    ],
)
def test_mmlu_malformed_names_file_and_row(tmp_path, text, message):
    f = _write(tmp_path / "bad.csv", text)
    with pytest.raises(MmluError) as exc:
        read_mmlu_csv(f)
    assert str(f) in str(exc.value) and message in str(exc.value)


def test_mmlu_files_glob_and_missing(tmp_path):
    _write(tmp_path / "b_test.csv", "q,a,b,c,d,A\n")
    _write(tmp_path / "a_test.csv", "q,a,b,c,d,A\n")
    assert [p.split("/")[-1] for p in mmlu_files([str(tmp_path / "*.csv")])] == ["a_test.csv", "b_test.csv"]
    with pytest.raises(MmluError, match="no file matches"):
        mmlu_files([str(tmp_path / "none*.csv")])
