"""One place per kind (`data/kinds.py`): every text an example is turned into, pinned for each kind.

The expected values below were produced by the code from before `kinds.py` existed (each caller branching on
`ex.kind` itself) and pasted here as literals: prompts, targets, candidates, chat messages, references,
retrieval queries and facts, Context blocks, curriculum text and the evaluation's hit and error records must
stay exactly what they were, so that runs, caches and the bundled benchmark's figures do not move.
"""

from __future__ import annotations

import pytest

from icft.curriculum import _text, _words
from icft.data.formatting import candidates, chat_messages, is_open_ended, prompt_and_target, reference
from icft.data.kinds import BY_NAME, choice_type, is_question, kind_of
from icft.data.schema import KINDS, YES_NO_MAYBE, Example
from icft.data.templated import answer_side
from icft.evaluation.baselines import _label_key, _question, choices, is_choice, is_yes_no_maybe, item_type
from icft.evaluation.evaluate import _choice_metrics, _error_record, _is_hit
from icft.evaluation.scoring import ChoiceScores, is_scorable
from icft.memory.embedder import example_text
from icft.memory.retrieval import fact_text, prompt_budget, with_context

EXAMPLES = {
    "text": Example(id="t", kind="text", source="s", text="The heart  pumps\nblood."),
    "mc": Example(id="m", kind="qa", source="s", context="Fever and rash.", question="Which is likely?",
                  options=["measles", "gout", "flu", "mumps"], answer=1, meta={"tier": "recall"}),
    "yes/no/maybe": Example(id="y", kind="qa", source="s", context="An abstract.", question="Does aspirin help?",
                            options=list(YES_NO_MAYBE), answer=1),
    "open": Example(id="o", kind="qa", source="s", context="Adult patient.", question="What lowers\nfever?",
                    answer="Paracetamol."),
    "preference": Example(id="p", kind="preference", source="s", prompt="Chest pain?", chosen="Call an ambulance.",
                          rejected="Sleep it off."),
    "dialogue": Example(id="d", kind="dialogue", source="s", turns=[
        {"role": "user", "content": "I cough."}, {"role": "assistant", "content": "Since when?"},
        {"role": "user", "content": "Two weeks."}, {"role": "assistant", "content": "Any fever?"},
        {"role": "user", "content": "No fever."}, {"role": "assistant", "content": "See a doctor soon."}]),
}  # fmt: skip
FACTS = ["Fire is hot.", "Ice is cold."]
# Log-probabilities of each candidate, chosen so that the raw and the per-character pick differ on every
# choice item: a hit then shows which of the two the evaluation reads for that kind.
LOGPROBS = {"mc": [-7.7, -6.0, -6.5, -9.0], "yes/no/maybe": [-3.0, -2.5, -4.0], "preference": [-10.0, -8.0]}


def _call(f, *args, **kwargs):
    """f's result, or its ValueError as "ValueError: message" (some kinds have no such text)."""
    try:
        return f(*args, **kwargs)
    except ValueError as error:
        return f"ValueError: {error}"


def scores_of(name: str, ex: Example) -> ChoiceScores:
    _, texts, gold = candidates(ex)
    return ChoiceScores(ex, LOGPROBS[name], [len(t.strip()) for t in texts], gold)


def outputs(name: str, ex: Example, chat, plain) -> dict:
    """Everything the callers turn `ex` into, through their public (and a few private) functions."""
    out = {
        "plain": prompt_and_target(ex),
        "plain rejected": prompt_and_target(ex, answer="rejected"),
        "plain with a plain tokenizer": prompt_and_target(ex, plain, "plain"),
        "chat": prompt_and_target(ex, chat, "chat"),
        "chat rejected": prompt_and_target(ex, chat, "chat", answer="rejected"),
        "candidates": _call(candidates, ex),
        "chat candidates": _call(candidates, ex, chat, "chat"),
        "chat_messages": _call(chat_messages, ex),
        "chat_messages rejected": _call(chat_messages, ex, "rejected"),
        "reference": reference(ex),
        "is_open_ended": is_open_ended(ex),
        "is_scorable": is_scorable(ex),
        "is_choice": is_choice(ex),
        "is_yes_no_maybe": is_yes_no_maybe(ex),
        "example_text": example_text(ex),
        "fact_text": fact_text(ex),
        "no facts is the example": with_context(ex, []) is ex,
        "with_context plain": prompt_and_target(with_context(ex, FACTS)),
        "with_context chat": prompt_and_target(with_context(ex, FACTS), chat, "chat"),
        "prompt_budget plain": prompt_budget(plain, ex, 128, 16),
        "prompt_budget chat": prompt_budget(chat, ex, 128, 16),
        "curriculum text": _text(ex),
        "curriculum words": " ".join(_words(ex)),
    }
    if is_choice(ex):  # the baselines' and the evaluation's helpers only ever see choice items
        texts, gold = choices(ex)
        s = scores_of(name, ex)
        out.update({
            "choices": (texts, gold), "question": _question(ex), "item_type": item_type(ex),
            "label keys": [_label_key(ex, t) for t in texts], "is_hit": _is_hit(s), "error record": _error_record(s),
        })  # fmt: skip
    return out


# fmt: off
EXPECTED: dict[str, dict] = {'text': {'plain': ('', 'The heart  pumps\nblood.'),
          'plain rejected': ('', 'The heart  pumps\nblood.'),
          'plain with a plain tokenizer': ('', 'The heart  pumps\nblood.'),
          'chat': ('[CLS]', 'The heart  pumps\nblood.[SEP]'),
          'chat rejected': ('[CLS]', 'The heart  pumps\nblood.[SEP]'),
          'candidates': 'ValueError: example t (text) has no candidates to score',
          'chat candidates': 'ValueError: example t (text) has no candidates to score',
          'chat_messages': "ValueError: 'text' examples have no chat form",
          'chat_messages rejected': "ValueError: 'text' examples have no chat form",
          'reference': 'The heart  pumps\nblood.',
          'is_open_ended': False,
          'is_scorable': False,
          'is_choice': False,
          'is_yes_no_maybe': False,
          'example_text': 'The heart  pumps\nblood.',
          'fact_text': 'The heart pumps blood.',
          'no facts is the example': True,
          'with_context plain': ('', 'The heart  pumps\nblood.'),
          'with_context chat': ('[CLS]', 'The heart  pumps\nblood.[SEP]'),
          'prompt_budget plain': 128,
          'prompt_budget chat': 127,
          'curriculum text': 'The heart  pumps\nblood.',
          'curriculum words': 'the heart pumps blood'},
 'mc': {'plain': ('Context: Fever and rash.\n'
                  'Question: Which is likely?\n'
                  'Options: (A) measles (B) gout (C) flu (D) mumps\n'
                  'Answer:',
                  ' gout'),
        'plain rejected': ('Context: Fever and rash.\n'
                           'Question: Which is likely?\n'
                           'Options: (A) measles (B) gout (C) flu (D) mumps\n'
                           'Answer:',
                           ' gout'),
        'plain with a plain tokenizer': ('Context: Fever and rash.\n'
                                         'Question: Which is likely?\n'
                                         'Options: (A) measles (B) gout (C) flu (D) mumps\n'
                                         'Answer:',
                                         ' gout'),
        'chat': ('[CLS]<|user|>Context: Fever and rash.\n'
                 'Question: Which is likely?\n'
                 'Options: (A) measles (B) gout (C) flu (D) mumps<|end|><|assistant|>',
                 'gout<|end|>'),
        'chat rejected': ('[CLS]<|user|>Context: Fever and rash.\n'
                          'Question: Which is likely?\n'
                          'Options: (A) measles (B) gout (C) flu (D) mumps<|end|><|assistant|>',
                          'gout<|end|>'),
        'candidates': ('Context: Fever and rash.\n'
                       'Question: Which is likely?\n'
                       'Options: (A) measles (B) gout (C) flu (D) mumps\n'
                       'Answer:',
                       [' measles', ' gout', ' flu', ' mumps'],
                       1),
        'chat candidates': ('[CLS]<|user|>Context: Fever and rash.\n'
                            'Question: Which is likely?\n'
                            'Options: (A) measles (B) gout (C) flu (D) mumps<|end|><|assistant|>',
                            ['measles', 'gout', 'flu', 'mumps'],
                            1),
        'chat_messages': [{'role': 'user',
                           'content': 'Context: Fever and rash.\n'
                                      'Question: Which is likely?\n'
                                      'Options: (A) measles (B) gout (C) flu (D) mumps'},
                          {'role': 'assistant', 'content': 'gout'}],
        'chat_messages rejected': [{'role': 'user',
                                    'content': 'Context: Fever and rash.\n'
                                               'Question: Which is likely?\n'
                                               'Options: (A) measles (B) gout (C) flu (D) mumps'},
                                   {'role': 'assistant', 'content': 'gout'}],
        'reference': 'gout',
        'is_open_ended': False,
        'is_scorable': True,
        'is_choice': True,
        'is_yes_no_maybe': False,
        'example_text': 'Which is likely?',
        'fact_text': 'Which is likely? gout',
        'no facts is the example': True,
        'with_context plain': ('Context: Fire is hot.\n'
                               'Ice is cold.\n'
                               'Fever and rash.\n'
                               'Question: Which is likely?\n'
                               'Options: (A) measles (B) gout (C) flu (D) mumps\n'
                               'Answer:',
                               ' gout'),
        'with_context chat': ('[CLS]<|user|>Context: Fire is hot.\n'
                              'Ice is cold.\n'
                              'Fever and rash.\n'
                              'Question: Which is likely?\n'
                              'Options: (A) measles (B) gout (C) flu (D) mumps<|end|><|assistant|>',
                              'gout<|end|>'),
        'prompt_budget plain': 125,
        'prompt_budget chat': 124,
        'curriculum text': 'Context: Fever and rash.\n'
                           'Question: Which is likely?\n'
                           'Options: (A) measles (B) gout (C) flu (D) mumps\n'
                           'Answer: gout',
        'curriculum words': 'context fever and rash question which is likely options a measles b gout c flu d '
                            'mumps answer gout',
        'choices': (['measles', 'gout', 'flu', 'mumps'], 1),
        'question': 'Fever and rash. Which is likely?',
        'item_type': 'mc',
        'label keys': [('mc', 'measles'), ('mc', 'gout'), ('mc', 'flu'), ('mc', 'mumps')],
        'is_hit': True,
        'error record': {'id': 'm',
                         'kind': 'qa',
                         'source': 's',
                         'tier': 'recall',
                         'question': 'Which is likely?',
                         'gold': 'gout',
                         'predicted': 'gout'}},
 'yes/no/maybe': {'plain': ('Context: An abstract.\n'
                            'Question: Does aspirin help?\n'
                            'Options: (A) yes (B) no (C) maybe\n'
                            'Answer:',
                            ' no'),
                  'plain rejected': ('Context: An abstract.\n'
                                     'Question: Does aspirin help?\n'
                                     'Options: (A) yes (B) no (C) maybe\n'
                                     'Answer:',
                                     ' no'),
                  'plain with a plain tokenizer': ('Context: An abstract.\n'
                                                   'Question: Does aspirin help?\n'
                                                   'Options: (A) yes (B) no (C) maybe\n'
                                                   'Answer:',
                                                   ' no'),
                  'chat': ('[CLS]<|user|>Context: An abstract.\n'
                           'Question: Does aspirin help?\n'
                           'Options: (A) yes (B) no (C) maybe<|end|><|assistant|>',
                           'no<|end|>'),
                  'chat rejected': ('[CLS]<|user|>Context: An abstract.\n'
                                    'Question: Does aspirin help?\n'
                                    'Options: (A) yes (B) no (C) maybe<|end|><|assistant|>',
                                    'no<|end|>'),
                  'candidates': ('Context: An abstract.\n'
                                 'Question: Does aspirin help?\n'
                                 'Options: (A) yes (B) no (C) maybe\n'
                                 'Answer:',
                                 [' yes', ' no', ' maybe'],
                                 1),
                  'chat candidates': ('[CLS]<|user|>Context: An abstract.\n'
                                      'Question: Does aspirin help?\n'
                                      'Options: (A) yes (B) no (C) maybe<|end|><|assistant|>',
                                      ['yes', 'no', 'maybe'],
                                      1),
                  'chat_messages': [{'role': 'user',
                                     'content': 'Context: An abstract.\n'
                                                'Question: Does aspirin help?\n'
                                                'Options: (A) yes (B) no (C) maybe'},
                                    {'role': 'assistant', 'content': 'no'}],
                  'chat_messages rejected': [{'role': 'user',
                                              'content': 'Context: An abstract.\n'
                                                         'Question: Does aspirin help?\n'
                                                         'Options: (A) yes (B) no (C) maybe'},
                                             {'role': 'assistant', 'content': 'no'}],
                  'reference': 'no',
                  'is_open_ended': False,
                  'is_scorable': True,
                  'is_choice': True,
                  'is_yes_no_maybe': True,
                  'example_text': 'Does aspirin help?',
                  'fact_text': 'Does aspirin help? no',
                  'no facts is the example': True,
                  'with_context plain': ('Context: Fire is hot.\n'
                                         'Ice is cold.\n'
                                         'An abstract.\n'
                                         'Question: Does aspirin help?\n'
                                         'Options: (A) yes (B) no (C) maybe\n'
                                         'Answer:',
                                         ' no'),
                  'with_context chat': ('[CLS]<|user|>Context: Fire is hot.\n'
                                        'Ice is cold.\n'
                                        'An abstract.\n'
                                        'Question: Does aspirin help?\n'
                                        'Options: (A) yes (B) no (C) maybe<|end|><|assistant|>',
                                        'no<|end|>'),
                  'prompt_budget plain': 127,
                  'prompt_budget chat': 126,
                  'curriculum text': 'Context: An abstract.\n'
                                     'Question: Does aspirin help?\n'
                                     'Options: (A) yes (B) no (C) maybe\n'
                                     'Answer: no',
                  'curriculum words': 'context an abstract question does aspirin help options a yes b no c maybe '
                                      'answer no',
                  'choices': (['yes', 'no', 'maybe'], 1),
                  'question': 'An abstract. Does aspirin help?',
                  'item_type': 'yes/no/maybe',
                  'label keys': [('yn', 'yes'), ('yn', 'no'), ('yn', 'maybe')],
                  'is_hit': True,
                  'error record': {'id': 'y',
                                   'kind': 'qa',
                                   'source': 's',
                                   'tier': None,
                                   'question': 'Does aspirin help?',
                                   'gold': 'no',
                                   'predicted': 'no'}},
 'open': {'plain': ('Context: Adult patient.\nQuestion: What lowers\nfever?\nAnswer:', ' Paracetamol.'),
          'plain rejected': ('Context: Adult patient.\nQuestion: What lowers\nfever?\nAnswer:', ' Paracetamol.'),
          'plain with a plain tokenizer': ('Context: Adult patient.\nQuestion: What lowers\nfever?\nAnswer:',
                                           ' Paracetamol.'),
          'chat': ('[CLS]<|user|>Context: Adult patient.\nQuestion: What lowers\nfever?<|end|><|assistant|>',
                   'Paracetamol.<|end|>'),
          'chat rejected': ('[CLS]<|user|>Context: Adult patient.\n'
                            'Question: What lowers\n'
                            'fever?<|end|><|assistant|>',
                            'Paracetamol.<|end|>'),
          'candidates': 'ValueError: example o (qa) has no candidates to score',
          'chat candidates': 'ValueError: example o (qa) has no candidates to score',
          'chat_messages': [{'role': 'user', 'content': 'Context: Adult patient.\nQuestion: What lowers\nfever?'},
                            {'role': 'assistant', 'content': 'Paracetamol.'}],
          'chat_messages rejected': [{'role': 'user',
                                      'content': 'Context: Adult patient.\nQuestion: What lowers\nfever?'},
                                     {'role': 'assistant', 'content': 'Paracetamol.'}],
          'reference': 'Paracetamol.',
          'is_open_ended': True,
          'is_scorable': False,
          'is_choice': False,
          'is_yes_no_maybe': False,
          'example_text': 'What lowers\nfever?',
          'fact_text': 'What lowers fever? Paracetamol.',
          'no facts is the example': True,
          'with_context plain': ('Context: Fire is hot.\n'
                                 'Ice is cold.\n'
                                 'Adult patient.\n'
                                 'Question: What lowers\n'
                                 'fever?\n'
                                 'Answer:',
                                 ' Paracetamol.'),
          'with_context chat': ('[CLS]<|user|>Context: Fire is hot.\n'
                                'Ice is cold.\n'
                                'Adult patient.\n'
                                'Question: What lowers\n'
                                'fever?<|end|><|assistant|>',
                                'Paracetamol.<|end|>'),
          'prompt_budget plain': 112,
          'prompt_budget chat': 111,
          'curriculum text': 'Context: Adult patient.\nQuestion: What lowers\nfever?\nAnswer: Paracetamol.',
          'curriculum words': 'context adult patient question what lowers fever answer paracetamol'},
 'preference': {'plain': ('Question: Chest pain?\nAnswer:', ' Call an ambulance.'),
                'plain rejected': ('Question: Chest pain?\nAnswer:', ' Sleep it off.'),
                'plain with a plain tokenizer': ('Question: Chest pain?\nAnswer:', ' Call an ambulance.'),
                'chat': ('[CLS]<|user|>Chest pain?<|end|><|assistant|>', 'Call an ambulance.<|end|>'),
                'chat rejected': ('[CLS]<|user|>Chest pain?<|end|><|assistant|>', 'Sleep it off.<|end|>'),
                'candidates': ('Question: Chest pain?\nAnswer:', [' Call an ambulance.', ' Sleep it off.'], 0),
                'chat candidates': ('[CLS]<|user|>Chest pain?<|end|><|assistant|>',
                                    ['Call an ambulance.', 'Sleep it off.'],
                                    0),
                'chat_messages': [{'role': 'user', 'content': 'Chest pain?'},
                                  {'role': 'assistant', 'content': 'Call an ambulance.'}],
                'chat_messages rejected': [{'role': 'user', 'content': 'Chest pain?'},
                                           {'role': 'assistant', 'content': 'Sleep it off.'}],
                'reference': 'Call an ambulance.',
                'is_open_ended': False,
                'is_scorable': True,
                'is_choice': True,
                'is_yes_no_maybe': False,
                'example_text': 'Chest pain?',
                'fact_text': 'Chest pain? Call an ambulance.',
                'no facts is the example': True,
                'with_context plain': ('Question: Context: Fire is hot.\nIce is cold.\nChest pain?\nAnswer:',
                                       ' Call an ambulance.'),
                'with_context chat': ('[CLS]<|user|>Context: Fire is hot.\n'
                                      'Ice is cold.\n'
                                      'Chest pain?<|end|><|assistant|>',
                                      'Call an ambulance.<|end|>'),
                'prompt_budget plain': 124,
                'prompt_budget chat': 123,
                'curriculum text': 'Question: Chest pain?\nAnswer: Call an ambulance.',
                'curriculum words': 'question chest pain answer call an ambulance',
                'choices': (['Call an ambulance.', 'Sleep it off.'], 0),
                'question': 'Chest pain?',
                'item_type': 'preference',
                'label keys': [('preference', 'call'), ('preference', 'sleep')],
                'is_hit': True,
                'error record': {'id': 'p',
                                 'kind': 'preference',
                                 'source': 's',
                                 'tier': None,
                                 'question': 'Chest pain?',
                                 'gold': 'Call an ambulance.',
                                 'predicted': 'Call an ambulance.'}},
 'dialogue': {'plain': ('Patient: I cough.\n'
                        'Doctor: Since when?\n'
                        'Patient: Two weeks.\n'
                        'Doctor: Any fever?\n'
                        'Patient: No fever.\n'
                        'Doctor:',
                        ' See a doctor soon.'),
              'plain rejected': ('Patient: I cough.\n'
                                 'Doctor: Since when?\n'
                                 'Patient: Two weeks.\n'
                                 'Doctor: Any fever?\n'
                                 'Patient: No fever.\n'
                                 'Doctor:',
                                 ' See a doctor soon.'),
              'plain with a plain tokenizer': ('Patient: I cough.\n'
                                               'Doctor: Since when?\n'
                                               'Patient: Two weeks.\n'
                                               'Doctor: Any fever?\n'
                                               'Patient: No fever.\n'
                                               'Doctor:',
                                               ' See a doctor soon.'),
              'chat': ('[CLS]<|user|>I cough.<|end|><|assistant|>Since when?<|end|><|user|>Two '
                       'weeks.<|end|><|assistant|>Any fever?<|end|><|user|>No fever.<|end|><|assistant|>',
                       'See a doctor soon.<|end|>'),
              'chat rejected': ('[CLS]<|user|>I cough.<|end|><|assistant|>Since when?<|end|><|user|>Two '
                                'weeks.<|end|><|assistant|>Any fever?<|end|><|user|>No fever.<|end|><|assistant|>',
                                'See a doctor soon.<|end|>'),
              'candidates': 'ValueError: example d (dialogue) has no candidates to score',
              'chat candidates': 'ValueError: example d (dialogue) has no candidates to score',
              'chat_messages': [{'role': 'user', 'content': 'I cough.'},
                                {'role': 'assistant', 'content': 'Since when?'},
                                {'role': 'user', 'content': 'Two weeks.'},
                                {'role': 'assistant', 'content': 'Any fever?'},
                                {'role': 'user', 'content': 'No fever.'},
                                {'role': 'assistant', 'content': 'See a doctor soon.'}],
              'chat_messages rejected': [{'role': 'user', 'content': 'I cough.'},
                                         {'role': 'assistant', 'content': 'Since when?'},
                                         {'role': 'user', 'content': 'Two weeks.'},
                                         {'role': 'assistant', 'content': 'Any fever?'},
                                         {'role': 'user', 'content': 'No fever.'},
                                         {'role': 'assistant', 'content': 'See a doctor soon.'}],
              'reference': 'See a doctor soon.',
              'is_open_ended': True,
              'is_scorable': False,
              'is_choice': False,
              'is_yes_no_maybe': False,
              'example_text': 'I cough.\nTwo weeks.\nNo fever.',
              'fact_text': 'I cough. Since when? Two weeks. Any fever? No fever. See a doctor soon.',
              'no facts is the example': True,
              'with_context plain': ('Patient: I cough.\n'
                                     'Doctor: Since when?\n'
                                     'Patient: Two weeks.\n'
                                     'Doctor: Any fever?\n'
                                     'Patient: Context: Fire is hot.\n'
                                     'Ice is cold.\n'
                                     'No fever.\n'
                                     'Doctor:',
                                     ' See a doctor soon.'),
              'with_context chat': ('[CLS]<|user|>I cough.<|end|><|assistant|>Since when?<|end|><|user|>Two '
                                    'weeks.<|end|><|assistant|>Any fever?<|end|><|user|>Context: Fire is hot.\n'
                                    'Ice is cold.\n'
                                    'No fever.<|end|><|assistant|>',
                                    'See a doctor soon.<|end|>'),
              'prompt_budget plain': 112,
              'prompt_budget chat': 111,
              'curriculum text': 'Patient: I cough.\n'
                                 'Doctor: Since when?\n'
                                 'Patient: Two weeks.\n'
                                 'Doctor: Any fever?\n'
                                 'Patient: No fever.\n'
                                 'Doctor: See a doctor soon.',
              'curriculum words': 'patient i cough doctor since when patient two weeks doctor any fever patient no '
                                  'fever doctor see a doctor soon'}}
EXPECTED_CHOICE_METRICS = {'accuracy': 1.0, 'accuracy_norm': 0.0, 'macro_f1': 1.0, 'recall_no': 1.0,
                           'preference_accuracy': 1.0}
# fmt: on


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_every_text_of_every_kind_is_unchanged(name, chat_tokenizer, bert_tokenizer):
    ex = EXAMPLES[name]
    before = ex.to_dict()
    assert outputs(name, ex, chat_tokenizer, bert_tokenizer) == EXPECTED[name]
    assert ex.to_dict() == before  # nothing above modifies the example


def test_choice_metrics_are_unchanged():
    scores = [scores_of(name, EXAMPLES[name]) for name in ("mc", "yes/no/maybe", "preference")]
    assert _choice_metrics(scores) == EXPECTED_CHOICE_METRICS


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_the_kind_holds_the_pinned_texts(name):
    # The callers above are thin: each pinned value is what the example's kind says.
    ex, want = EXAMPLES[name], EXPECTED[name]
    kind = kind_of(ex)
    assert kind.name == ex.kind
    assert kind.pair(ex) == want["plain"]
    assert kind.pair(ex, "rejected") == want["plain rejected"]
    assert kind.query(ex) == want["example_text"]
    assert kind.fact(ex) == want["fact_text"]
    assert kind.is_open(ex) == want["is_open_ended"]
    assert (kind.candidates(ex) is not None) == want["is_choice"] == want["is_scorable"]
    assert _call(kind.messages, ex) == want["chat_messages"]
    assert kind.asks == (name != "text")
    assert kind.sides == (("chosen", "rejected") if name == "preference" else ("chosen",))
    assert choice_type(ex) == (want["item_type"] if want["is_choice"] else None)
    if want["is_choice"]:
        assert kind.candidates(ex) == want["choices"]
        assert kind.prompt(ex) == want["candidates"][0]


def test_written_answers_and_questions():
    # the answer text a record teaches (what `data stats` measures for boilerplate): what templated.answer_side
    # picked by kind before it asked the kind; none for text or for an answer picked from options
    want = {"text": None, "mc": None, "yes/no/maybe": None, "open": "Paracetamol.", "preference": "Call an ambulance.",
            "dialogue": "See a doctor soon."}  # fmt: skip
    for name, ex in EXAMPLES.items():
        assert answer_side(ex) == kind_of(ex).written_answer(ex) == want[name], name
        assert is_question(ex) == (name in ("mc", "yes/no/maybe", "open")), name


def test_one_class_per_kind_and_unknown_kinds_are_refused():
    assert set(BY_NAME) == set(KINDS)
    odd = Example(id="x", kind="poem", source="s", text="Roses.")
    for f in (kind_of, prompt_and_target, example_text, fact_text, is_open_ended):
        with pytest.raises(ValueError, match="unknown kind 'poem'"):
            f(odd)

