"""The one answer normaliser (tasks/answers.py) on every FLAN CoT task family, through the
reader's own templates, the validate check and evaluation's exact match.

Rows are written here in the shapes of the shared TSVs (`question \\t answer \\t rationale`,
a literal backslash-n for a newline); no real text is copied."""
from __future__ import annotations

import pytest

from tasks.answers import choice_index, final_answer, is_bare_label, parse_answer, same_answer
from tasks.evaluate.metrics import exact_match
from tasks.ingest.registry import READERS
from tasks.ingest.flan import FlanCotReader
from tasks.recipe import parse_recipe
from tasks.render import COT_TEMPLATES, render_cot
from tasks.validate import targets_in_choices

#: Per task family: TSV lines in the shared files' shape, and a wrong answer that names no choice.
FAMILIES = {
    "aqua": ([f"A tank holds {i}0 litres and loses {i} litres a day. After how many days is it empty?\\n"
              f"Options:\\n(A) 5\\n(B) {i}\\n(C) 10\\n(D)  12\\n(E) 20\t(C)\t{i}0 / {i} = 10 days." for i in range(2, 7)],
             "(F)"),
    "creak": (['Claim: "Copper conducts electricity."\\nIs the claim above correct?\\nOptions:\\n- yes\\n- no\tyes\t'
               "Copper is a metal used in wires.",
               'Is the following a factual statement?\\n"Glass is a gas at room temperature."\\nOptions:\\n- yes\\n- no'
               "\tno\tGlass is a solid at room temperature.",
               'Yes / no, is the following a verifiable fact?\\n"Owls hunt at night."\tyes\tMany owls are nocturnal.'],
              "maybe"),
    "ecqa": ([f"Where would you keep a spare key number {i}?\\nOptions:\\n- under the mat\\n- in the ocean\\n- on the moon"
              f"\tunder the mat\tA spare key is kept close to the door. The mat is by the door." for i in range(4)],
             "in a drawer"),
    "gsm8k": ([f"Ann has {i} apples and buys {i} more. How many apples does she have?\t{2 * i}\t"
               f"She has {i} + {i} = {2 * i} apples." for i in range(3, 7)], None),
    "qasc": ([f"What do plants need to grow, case {i}?\\nOptions:\\n- (A) darkness\\n- (B) sunlight\\n- (C) salt\\n"
              f"- (D) plastic\\n- (E) noise\\n- (F) ice\\n- (G) sand\\n- (H) smoke\t(B)\tPlants make food from light. "
              "Sunlight is light." for i in range(4)], "(Z)"),
    "sensemaking": ([f'Which of the following two sentences does not make sense?\\nOptions:\\n- Sentence A: "He ate '
                     f'soup number {i}."\\n- Sentence B: "He ate the spoon number {i}."\\n\tSentence B\t'
                     "A spoon is not food." for i in range(4)], "Sentence C"),
    "strategyqa": ([f"Could a cat swim across lake {i}?\tno\tCats avoid water. Lakes are wide." for i in range(4)], None),
}


def _records(tmp_path, family: str) -> list[dict]:
    p = tmp_path / f"cot_{family}_train.tsv"
    p.write_text("\n".join(FAMILIES[family][0]) + "\n")
    rc = parse_recipe({"sources": [{"name": "cot", "format": "flan_cot", "path": str(p), "templates_per_row": 4}],
                       "split": {"eval_fraction": 0.0}}, tmp_path)
    reader, src = READERS["flan_cot"], rc.sources[0]
    rows = [(str(p), i[1], i[2]) for i in reader.read(rc, src, str(p)) if i[0] == "row"]
    return list(reader.convert(rc, src, rows, reader.exemplar_pool(rc, src, str(p), rows)))


def _answer(line: str) -> str:
    return line.split("\t")[1]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_template_states_an_answer_the_check_and_exact_match_accept(tmp_path, family):
    records = _records(tmp_path, family)
    answers = {r: _answer(line) for r, line in enumerate(FAMILIES[family][0], 1)}
    assert len({r["template_id"] for r in records}) >= 3  # several wordings of the answer are covered
    for r in records:
        target, choices = r["messages"][1]["content"], r["answer_choices"]
        assert same_answer(final_answer(target), answers[r["origin_row"]]), (r["template_id"], target)
        if choices:
            assert targets_in_choices([target], [choices]) == [True], (r["template_id"], target, choices)
        else:
            assert targets_in_choices([target], [choices]) == [None]
        # evaluation: a generation that reasons differently but ends in the same answer matches
        assert exact_match(f"Some other reasoning.\nSo the answer is: {answers[r['origin_row']]}", target) == 1.0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_template_wording_is_read_back(family):
    line = FAMILIES[family][0][0]
    stem, options, answer, rationale = FlanCotReader._parse(dict(zip(("question", "answer", "rationale"),
                                                                     line.split("\t"))))
    for ttype, wordings in COT_TEMPLATES.items():
        for idx in range(len(wordings)):
            _, target = render_cot(ttype, idx, stem, options, answer, rationale)
            assert final_answer(target) is not None and same_answer(final_answer(target), answer), (ttype, idx)
            assert targets_in_choices([target], [options]) == ([True] if options else [None]), (ttype, idx)


@pytest.mark.parametrize("family", sorted(f for f, (_, wrong) in FAMILIES.items() if wrong))
def test_an_answer_that_names_no_choice_fails_the_check(tmp_path, family):
    wrong = FAMILIES[family][1]
    for r in _records(tmp_path, family):
        if r["answer_choices"]:
            bad = r["messages"][1]["content"].replace(_answer(FAMILIES[family][0][r["origin_row"] - 1]), wrong)
            assert targets_in_choices([bad], [r["answer_choices"]]) == [False], bad
            assert exact_match(f"So the answer is: {wrong}", r["messages"][1]["content"]) == 0.0


def test_final_answer_takes_the_last_answer_phrase_of_any_template_wording():
    assert final_answer("x = 3.\nSo the answer is: (C)") == "(C)"
    assert final_answer("1/7:1/7:1/14 = 2:2:1 Therefore, the answer is no.") == "no"
    assert final_answer("Reasoning: The answer is not obvious. Still.\nAnswer: Sentence A") == "Sentence A"
    assert final_answer("Cold weather. The answer: answer questions.") == "answer questions"
    assert final_answer("Final answer: 3.5") == "3.5"
    assert final_answer("No phrase here.") is None


def test_labels_sentences_numbers_and_text():
    assert parse_answer("(D)") == parse_answer("D") == parse_answer("d)") == parse_answer("Option D")
    assert same_answer("(D)", "(D) sex") and not same_answer("(D)", "(A) DNA")
    assert same_answer("DNA", "(A) DNA") and same_answer("(A) dna.", "(A) DNA")
    assert same_answer("Sentence A", 'Sentence A: "He drinks apple."') and not same_answer("Sentence A", "Sentence B")
    assert same_answer("Yes.", "yes") and not same_answer("yes", "no")
    assert same_answer("$1,120.00", "1120") and same_answer("72.0", "72") and same_answer("25%", "25")
    assert not same_answer("0.2", "2") and not same_answer("", "")
    assert choice_index("So the answer is: (B)", ["(A) 5", "(B) 7"]) == 1
    assert choice_index("bedroom", ["synagogue", "bedroom"]) == 1
    assert is_bare_label("(C)") and is_bare_label("Sentence B") and not is_bare_label("(C) 10") \
        and not is_bare_label("yes")
