"""Trivial baselines and surface cheats, on hand-made items whose scores are worked out by hand."""

from __future__ import annotations

import io
from itertools import permutations

import pytest
from _tables import read_text

from icft.data.schema import YES_NO_MAYBE, Example
from icft.evaluation.baselines import (
    bag_of_words,
    cheat_rules,
    cheat_scores,
    expected_hit,
    longest_option,
    question_overlap,
    trivial_baselines,
)
from icft.evaluation.evaluate import EvalResult, print_table


def mc(i: int, options: list[str], answer: int, question: str = "Which one?") -> Example:
    return Example(id=f"mc{i}", kind="qa", source="t", question=question, options=options, answer=answer)


def yn(i: int, label: str) -> Example:
    return Example(id=f"yn{i}", kind="qa", source="t", question="Is it?", options=list(YES_NO_MAYBE),
                   answer=YES_NO_MAYBE.index(label))  # fmt: skip


def pref(i: int, chosen: str = "good", rejected: str = "bad") -> Example:
    return Example(id=f"p{i}", kind="preference", source="t", prompt="Which?", chosen=chosen, rejected=rejected)


def test_multiple_choice_baselines():
    # answers at positions 0, 0, 1, 2 of four options; no option text repeats
    items = [mc(0, list("abcd"), 0), mc(1, list("efgh"), 0), mc(2, list("ijkl"), 1), mc(3, list("mn"), 1)]
    out = trivial_baselines(items)
    assert out["random"]["accuracy"] == pytest.approx((0.25 * 3 + 0.5) / 4)
    assert out["position-prior"]["accuracy"] == pytest.approx(0.5)  # position 0 (tied with 1, lowest wins)
    assert out["majority"]["accuracy"] == pytest.approx(0.5)  # no repeated texts: the best position
    assert "macro_f1" not in out["random"] and "preference_accuracy" not in out["random"]


def test_majority_uses_a_repeated_option_text():
    # "none of these" is offered three times and right twice, at varying positions: 2/3 hits where offered
    items = [
        mc(0, ["x", "none of these"], 1), mc(1, ["none of these", "y"], 0),
        mc(2, ["z", "none of these"], 0), mc(3, ["u", "v"], 0),
    ]  # fmt: skip
    out = trivial_baselines(items)
    # offered: items 0, 1, 2 -> hits on 0 and 1; item 3 falls back to the best position (0) -> hit
    assert out["majority"]["accuracy"] == pytest.approx(3 / 4)
    assert out["position-prior"]["accuracy"] == pytest.approx(3 / 4)  # position 0: items 1, 2, 3


def test_yes_no_maybe_baselines():
    items = [yn(0, "yes"), yn(1, "yes"), yn(2, "yes"), yn(3, "no"), yn(4, "maybe"), yn(5, "no")]
    out = trivial_baselines(items)
    assert out["random"]["accuracy"] == pytest.approx(1 / 3)
    assert out["random"]["recall_yes"] == pytest.approx(1 / 3)
    # expected counts: F1_l = 2 n_l / (3 n_l + n): yes 6/15, no 4/12, maybe 2/9
    assert out["random"]["macro_f1"] == pytest.approx((6 / 15 + 4 / 12 + 2 / 9) / 3)
    # always "yes": accuracy 3/6; F1(yes) = 2*3/(2*3+3+0) = 2/3, F1(no) = F1(maybe) = 0
    assert out["majority"]["accuracy"] == pytest.approx(0.5)
    assert out["majority"]["macro_f1"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert out["majority"]["recall_yes"] == 1.0 and out["majority"]["recall_no"] == 0.0
    assert out["position-prior"]["accuracy"] == pytest.approx(0.5)


def test_preference_baselines_are_one_half_and_mixed_items_pool():
    items = [pref(0), pref(1, chosen="a much longer and better answer", rejected="no"), yn(0, "no"),
             mc(0, list("abcd"), 3)]  # fmt: skip
    out = trivial_baselines(items)
    # A scorer sees a pair's two answers in no stored order, whatever their texts: a fixed position is right
    # in the orders that put "chosen" there, a uniform guess on average over both positions.
    orders = list(permutations(["chosen", "rejected"]))
    fixed = sum(order[0] == "chosen" for order in orders) / len(orders)
    guess = sum(order[k] == "chosen" for order in orders for k in (0, 1)) / (2 * len(orders))
    assert out["random"]["preference_accuracy"] == pytest.approx(guess)
    for constant in ("majority", "position-prior"):
        assert out[constant]["preference_accuracy"] == pytest.approx(fixed)
    assert out["random"]["accuracy"] == pytest.approx((1 / 3 + 1 / 4) / 2)
    # majority: yes/no/maybe items answer their majority label ("no"), others the best position (3)
    assert out["majority"]["accuracy"] == pytest.approx(1.0)
    assert trivial_baselines([Example(id="t", kind="text", source="t", text="hi")]) == {}


def test_a_constant_answer_scores_rouge_on_templated_answers():
    template = "This could be flu; a doctor should examine you."
    items = [
        Example(id="o0", kind="qa", source="t", question="What is it?", answer=template),
        Example(id="o1", kind="qa", source="t", question="And this?", answer=template),
        Example(id="d0", kind="dialogue", source="t",
                turns=[{"role": "user", "content": "Help?"}, {"role": "assistant", "content": "Rest well."}]),
        pref(0),
    ]  # fmt: skip
    out = trivial_baselines(items)
    # the template given to all three: ROUGE-L 1, 1 and 0 (no word shared with the dialogue's answer)
    assert out["majority"]["rougeL"] == pytest.approx(2 / 3)
    assert "rougeL" not in out["random"] and "rougeL" not in out["position-prior"]
    assert "accuracy" not in out["majority"]  # no multiple choice among them


def test_cheats_on_hand_made_items():
    long_right = mc(0, ["a", "the longest option"], 1)
    assert longest_option(long_right) == [1.0, 18.0]
    echo = mc(1, ["kidney stones", "gout"], 0, question="What causes kidney pain?")
    assert question_overlap(echo) == [1.0, 0.0]  # "kidney"
    assert expected_hit([1.0, 1.0, 0.0], 0) == pytest.approx(0.5)  # a tie shares the hit
    assert expected_hit([1.0, 2.0], 0) == 0.0
    # a preference pair's stored order is invisible: the first-option cheat scores 1/2, not 1
    train = [pref(0), mc(2, ["yes sir", "no"], 0)]
    scores = cheat_scores(cheat_rules(train), [pref(1), long_right, echo])
    assert scores["first option"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert scores["chance"] == pytest.approx(0.5)


def test_bag_of_words_learns_a_planted_cue():
    # every right option says "certainly": the classifier must find it on new items
    train = [mc(i, [f"certainly w{i}", f"x{i}", f"y{i}", f"z{i}"], 0) for i in range(30)]
    rule = bag_of_words(train)
    test = mc(99, ["p", "q", "certainly r", "s"], 2)
    assert expected_hit(rule(test), 2) == 1.0


def test_print_table_shows_baselines_next_to_the_model():
    items = [yn(0, "yes"), yn(1, "no"), pref(0)]
    result = EvalResult(metrics={"accuracy": 0.5, "macro_f1": 0.4, "preference_accuracy": 1.0}, n_examples=3)
    out = io.StringIO()
    print_table({"f.jsonl": result}, file=out, examples={"f.jsonl": items})
    text = out.getvalue()
    rows = read_text(text)
    baselines = ("random", "majority", "position-prior")
    assert [r["file"] for r in rows] == ["f.jsonl", *(f"f.jsonl [{b}]" for b in baselines)]
    by_file = {r["file"]: r for r in rows}
    assert float(by_file["f.jsonl"]["accuracy"]) == 0.5 and float(by_file["f.jsonl"]["macro_f1"]) == 0.4
    assert float(by_file["f.jsonl [random]"]["preference_accuracy"]) == 0.5
    # under the table, what each baseline is (issue 38: "majority" alone did not say it is chosen on these items)
    legend = text.splitlines()[2 + len(rows) :]
    assert [line.split()[0] for line in legend] == ["[random]", "[majority]", "[position-prior]"]
    assert "chosen on these items" in legend[1]
    plain = io.StringIO()
    print_table({"f.jsonl": result}, file=plain)
    assert [r["file"] for r in read_text(plain.getvalue())] == ["f.jsonl"]  # no baselines without the items
    assert len(plain.getvalue().splitlines()) == 3
