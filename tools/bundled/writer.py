"""Every example about one medical condition, at the three tiers, from its row of the knowledge table."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from icft.data.schema import YES_NO_MAYBE, Example
from icft.evaluation.baselines import shared_words

from .text import (
    capitalize,
    is_generic,
    join_list,
    mid_sentence,
    predicate,
    slugify,
    symptom_set,
    symptom_tokens,
    tokens,
    with_article,
)

STAGES = {1: "general", 2: "knowledge", 3: "clinical"}
MEDICAL_SOURCE = "icft-medical"

# Causes that describe who gets a condition or a germ rather than a patient's history; a vignette's
# "relevant factor" line skips them (the patient's age and sex are already in the vignette).
NOT_HISTORY = re.compile(
    r"\b(?:sex|age|ages|aged|ancestry|background|years|adolescence|puberty|newborns|first-born|season|"
    r"unknown|no cause)\b|virus|bacteri|coccus|plasmodium|borrelia|mycobacter|neisseria|helicobacter|"
    r"coxsackie|syncytial",
    re.IGNORECASE,
)
# Text that fixes a patient's sex or age, so that a vignette never describes a pregnant man.
SEX_AND_AGE_RULES = (
    (re.compile(r"pregnan|contracepti|\bIVF\b|\bcoil\b|childbearing", re.I), "female", (20, 40)),
    (re.compile(r"menopaus", re.I), "female", (50, 75)),
    (re.compile(r"vagina|\bperiods?\b|menstrua|\bwomb\b|ovar", re.I), "female", None),
    (re.compile(r"testic|scrot|penis|penile|prostate|erectile|semen", re.I), "male", None),
)
# population -> (age range, age unit, fixed sex or None)
POPULATIONS = {
    "adult": ((25, 70), "year", None),
    "older adult": ((65, 88), "year", None),
    "young adult": ((18, 35), "year", None),
    "man": ((25, 65), "year", "male"),
    "older man": ((60, 85), "year", "male"),
    "woman": ((20, 45), "year", "female"),
    "older woman": ((55, 85), "year", "female"),
    "pregnant woman": ((20, 40), "year", "female"),
    "teenager": ((13, 17), "year", None),
    "teenage boy": ((12, 17), "year", "male"),
    "child": ((2, 10), "year", None),
    "boy": ((2, 12), "year", "male"),
    "infant": ((2, 11), "month", None),
    "young infant": ((3, 8), "week", None),
    "newborn": ((2, 6), "day", None),
}
# onset -> (vignette clause, the same in the patient's words)
ONSETS = {
    "sudden": [
        ("which began suddenly an hour ago", "It all started suddenly an hour ago."),
        ("which came on suddenly this morning", "It came on suddenly this morning."),
    ],
    "acute": [
        ("which began two days ago", "It started two days ago."),
        ("which began yesterday", "It started yesterday."),
        ("which began three days ago", "It started three days ago."),
    ],
    "week": [
        ("which began five days ago", "It started five days ago."),
        ("which began about a week ago", "It started about a week ago."),
    ],
    "subacute": [
        ("which began about two weeks ago", "It started about two weeks ago."),
        ("which began about a month ago", "It started about a month ago."),
    ],
    "chronic": [
        ("which have developed over several months", "It has built up over several months."),
        ("which have slowly worsened over about a year", "It has been getting worse for about a year."),
    ],
    "episodic": [
        ("which come and go in episodes", "It comes and goes in episodes."),
        ("which have come and gone over several months", "It has come and gone for several months."),
    ],
}
# Babies only days or weeks old cannot have had symptoms for months.
BABY_ONSETS = {
    "day": [
        ("which began yesterday", "It started yesterday."),
        ("which began this morning", "It started this morning."),
    ],
    "week": [
        ("which began yesterday", "It started yesterday."),
        ("which began a few days ago", "It started a few days ago."),
    ],
}


def known(row: dict, field: str) -> list[str]:
    """Every value the table gives a condition for `field`, whether its examples say it or not (a training
    condition's values that name a held-out one are set aside under "unsaid": generate.without_names). What
    decides whether another condition's value or name could also be right here, so that a value left unsaid
    still keeps its look-alikes out of the wrong options."""
    return row[field] + row.get("unsaid", {}).get(field, [])


@dataclass
class Patient:
    age: int
    unit: str  # year, month, week or day
    sex: str  # male or female
    pregnant: bool

    @property
    def is_child(self) -> bool:
        """Young enough for a parent to do the talking."""
        return self.unit != "year" or self.age < 13

    @property
    def noun(self) -> str:
        if self.unit != "year":
            return "baby girl" if self.sex == "female" else "baby boy"
        if self.age < 18:
            return "girl" if self.sex == "female" else "boy"
        if self.pregnant:
            return "pregnant woman"
        return "woman" if self.sex == "female" else "man"

    @property
    def age_text(self) -> str:
        return f"{self.age}-{self.unit}-old"

    def third_person(self) -> str:
        return capitalize(with_article(f"{self.age_text} {self.noun}"))

    def intro(self) -> str:
        """How the patient (or a parent) opens a consultation."""
        if self.is_child:
            child = "daughter" if self.sex == "female" else "son"
            return f"I'm worried about my {self.age_text} {child}."
        if self.pregnant:
            return f"I'm {self.age} and pregnant."
        return f"I'm {with_article(self.age_text + ' ' + self.noun)}."

    @property
    def possessive(self) -> str:
        if not self.is_child:
            return "My"
        return "Her" if self.sex == "female" else "His"

    @property
    def object(self) -> str:
        if not self.is_child:
            return "you"
        return "your daughter" if self.sex == "female" else "your son"


class Table:
    """The knowledge table plus what every writer draws its wrong options from, worked out once."""

    def __init__(self, conditions: list[dict]):
        self.conditions = conditions
        # field -> (value, lowercased, tokens, condition) for every value that is not generic
        self.specific = {
            field: [(v, v.lower(), tokens(v), c) for c in conditions for v in c[field] if not is_generic(field, v)]
            for field in ("symptoms", "causes", "tests", "treatments")
        }


class LookAlikePicker:
    """Chooses a retention probe's wrong options by how right they look to `looks_right`, the bag-of-words
    cheat fitted on the training file ((kind, option texts) -> a score per option, from its words alone).

    A probe's answer was taught as a right option, and wrong options drawn at random were mostly shown as
    wrong ones, so an option-word model picks the answer without reading the question (7 points above chance
    on the retention files before this). Here each probe takes the candidates nearest the answer's score, some
    just above it and the rest just below, with the answer on top exactly as often as chance says over all
    probes so far (a running tally, one per number of wrong options): balanced by construction.
    """

    def __init__(self, looks_right: Callable[[str, list[str]], list[float]]):
        self.looks_right = looks_right
        self.on_top: Counter = Counter()  # n wrong options -> probes whose answer the cheat ranks first
        self.expected: Counter = Counter()  # n -> what chance gives (1 / (n + 1) per probe)
        self.turn = 0

    def order(self, kind: str, right: str, candidates: list, n: int, text_of: Callable = str) -> list:
        """`candidates` reordered so that the first n are the wrong options to use."""
        scores = self.looks_right(kind, [right, *(text_of(c) for c in candidates)])
        by_distance = sorted(range(len(candidates)), key=lambda i: abs(scores[i + 1] - scores[0]))
        above = [i for i in by_distance if scores[i + 1] >= scores[0]]  # a tie keeps the answer off the top
        below = [i for i in by_distance if scores[i + 1] < scores[0]]
        self.expected[n] += 1 / (n + 1)
        if self.on_top[n] + 1 <= self.expected[n] or not above:  # the answer on top: its share is due (or forced)
            above_count = 0
        else:  # one to n options above the answer, in turn
            above_count = 1 + self.turn % n
            self.turn += 1
        first = above[:above_count] + below[: n - above_count]
        first += [i for i in by_distance if i not in first][: n - len(first)]  # one side ran short
        self.on_top[n] += all(scores[i + 1] < scores[0] for i in first)
        return [candidates[i] for i in first] + [candidates[i] for i in by_distance if i not in first]


class ConditionWriter:
    """All examples about one condition; every random choice comes from its own seeded RNG.

    `table` is what wrong options are drawn from: for a training condition only the training conditions, so
    that no training example quotes a held-out condition. `index` (the condition's place in its split) makes
    labels alternate across conditions (yes/no, which answer opens with "Yes."), so that every file is
    balanced by construction rather than by luck. `probes()` gives a training condition's retention probes:
    question instances held out of training about facts that training teaches in other words.
    """

    def __init__(self, condition: dict, table: Table, split: str, seed: int, index: int = 0):
        self.c = condition
        self.table = table
        self.all = table.conditions
        self.split = split
        self.index = index
        self.rng = random.Random(f"icft-bundled:{seed}:{condition['name']}")
        self.name = mid_sentence(condition["name"])
        self.slug = slugify(condition["name"])
        self.name_tokens = tokens(condition["name"])
        self.cause_tokens = frozenset().union(*(tokens(v) for v in known(condition, "causes")))
        self.examples: list[Example] = []
        self._counts: Counter = Counter()
        self._candidates: dict = {}
        self.asked: dict[str, set[str]] = {}  # field -> values that training questions have as the answer
        # Set before probes(), which then take wrong options that look as right as the answer (see below).
        self.picker: LookAlikePicker | None = None

    def add(self, tier: int, template: str, kind: str, **fields) -> Example:
        n = self._counts[(tier, template)]
        self._counts[(tier, template)] += 1
        meta = {
            "condition": self.c["name"], "specialty": self.c["specialty"], "tier": tier,
            "split": self.split, "template": template,
        }  # fmt: skip
        example_id = f"icft-med/{self.slug}/t{tier}/{template}/{n}"
        example = Example(id=example_id, kind=kind, source=MEDICAL_SOURCE, stage=STAGES[tier], meta=meta, **fields)
        self.examples.append(example)
        return example

    # --- choosing values

    def pick(self, field: str, k: int = 1) -> list[str]:
        """k of this condition's own values: specific ones first (see GENERIC), and among those the ones that
        do not repeat a word of the condition's name (a right option that echoes the question is a giveaway:
        wrong options never share a word with the name)."""
        values = self.c[field]
        plain = [v for v in values if not is_generic(field, v) and not tokens(v) & self.name_tokens]
        echo = [v for v in values if not is_generic(field, v) and tokens(v) & self.name_tokens]
        rest = [v for v in values if is_generic(field, v)]
        k = min(k, len(values))
        chosen: list[str] = []
        for group in (plain, echo, rest):
            chosen += self.rng.sample(group, min(k - len(chosen), len(group)))
        return chosen

    def specific(self, field: str) -> list[str]:
        """The values a multiple-choice question may have as its answer: not generic, since a generic value
        is never a wrong option and would stand out as the right one; generic ones only where there is no
        other (in the pick order)."""
        values = self.pick(field, len(self.c[field]))
        return [v for v in values if not is_generic(field, v)] or values

    def wrong_values(self, field: str, k: int, same_specialty: bool = False) -> list[str]:
        """k values of `field` from other conditions that cannot also be right for this one: not generic and
        sharing no content word (or drug class) with this condition's name, its own values of the field or
        related ones (a treatment aimed at one of its causes or symptoms can be right too). Other specialties
        by default (so the wrong answer is clearly wrong); same_specialty=True prefers neighbours (a plausible
        mistake)."""
        key = (field, same_specialty)
        if key not in self._candidates:
            related = {"symptoms": ["red_flags"], "tests": ["causes"], "treatments": ["causes", "symptoms"]}
            own = known(self.c, field) + [v for f in related.get(field, []) for v in known(self.c, f)]
            own_tokens = self.name_tokens.union(*(tokens(v) for v in own))
            seen, candidates = set(), []
            for value, lowered, value_tokens, other in self.table.specific[field]:
                if other is self.c or (other["specialty"] == self.c["specialty"]) != same_specialty:
                    continue
                if self.is_cause(other):
                    continue
                if lowered not in seen and not value_tokens & own_tokens:
                    seen.add(lowered)
                    candidates.append(value)
            self._candidates[key] = candidates
        candidates = self._candidates[key]
        if len(candidates) < k:
            if same_specialty:
                return (candidates + self.wrong_values(field, k - len(candidates)))[:k]
            raise ValueError(f"{self.c['name']}: only {len(candidates)} wrong {field} to choose from")
        return self.rng.sample(candidates, k)

    def look_alikes(self, kind: str, right: str, candidates: list, n: int, text_of: Callable = str) -> list:
        """`candidates` (wrong options) with the n to use first (see LookAlikePicker); unchanged without a
        picker (training examples)."""
        if self.picker is None or not candidates:
            return candidates
        return self.picker.order(kind, right, candidates, n, text_of)

    def is_cause(self, other: dict) -> bool:
        """Whether another condition is one of this one's causes (hypertension for a stroke): its causes,
        symptoms and treatments are often right here too, and it would be a fair diagnosis as well."""
        return bool(tokens(other["name"]) & self.cause_tokens)

    def allowed_others(self, shown_symptoms: Iterable[str] = ()) -> list[dict]:
        """Other conditions that are fair wrong diagnoses: never one whose name overlaps this one's, that causes
        or is caused by this one, or whose symptoms also cover every symptom shown."""
        shown = [tokens(s) for s in shown_symptoms]

        def allowed(other: dict) -> bool:
            if other is self.c or tokens(other["name"]) & self.name_tokens or self.is_cause(other):
                return False
            if any(self.name_tokens & tokens(cause) for cause in known(other, "causes")):
                return False
            other_tokens = symptom_tokens(tuple(known(other, "symptoms")))
            return not (shown and all(t & other_tokens for t in shown))

        return [o for o in self.all if allowed(o)]

    def other_conditions(self, k: int, shown_symptoms: Iterable[str] = ()) -> list[dict]:
        """k fair wrong diagnoses (see allowed_others), neighbours from the same specialty first."""
        candidates = self.allowed_others(shown_symptoms)
        same = [o for o in candidates if o["specialty"] == self.c["specialty"]]
        picks = self.rng.sample(same, min(k, len(same)))
        others = [o for o in candidates if o["specialty"] != self.c["specialty"]]
        return picks + self.rng.sample(others, k - len(picks))

    def close_others(
        self, k: int, question: str, right: str, text_of, shown_symptoms: Iterable[str] = ()
    ) -> list[dict]:
        """k fair wrong conditions (see allowed_others) whose option text (`text_of(condition)`) repeats at
        least as many of the question's words as the right option does, so that "pick the option that
        repeats the question" cannot find the answer; same-specialty neighbours first, then the closest."""
        need = shared_words(question, right)
        scored = [(shared_words(question, text_of(o)), o) for o in self.allowed_others(shown_symptoms)]
        close = [o for overlap, o in scored if overlap >= need]
        if self.picker is not None:
            close = self.look_alikes("qa", right, close, k, text_of)[:k]
        same = [o for o in close if o["specialty"] == self.c["specialty"]]
        picks = self.rng.sample(same, min(k, len(same)))
        others = [o for o in close if o["specialty"] != self.c["specialty"]]
        picks += self.rng.sample(others, min(k - len(picks), len(others)))
        rest = sorted((o for overlap, o in scored if overlap < need), key=lambda o: -shared_words(question, text_of(o)))
        return picks + rest[: k - len(picks)]

    def options(self, right: str, wrong: list[str]) -> tuple[list[str], int]:
        options = [right, *wrong]
        self.rng.shuffle(options)
        return options, options.index(right)

    def patient(self, texts: Iterable[str]) -> Patient:
        (low, high), unit, sex = POPULATIONS[self.c["population"]]
        for pattern, rule_sex, ages in SEX_AND_AGE_RULES:
            if any(pattern.search(t) for t in texts):
                sex = sex or rule_sex
                if ages and max(low, ages[0]) <= min(high, ages[1]):
                    low, high = max(low, ages[0]), min(high, ages[1])
        sex = sex or self.rng.choice(("female", "male"))
        return Patient(self.rng.randint(low, high), unit, sex, self.c["population"] == "pregnant woman")

    def scenario(self) -> tuple[Patient, list[str], str | None, tuple[str, str]]:
        """A patient with 2-3 of the symptoms (a specific one first, so that the picture is never only
        fever and fatigue), maybe one relevant factor, and an onset."""
        main = self.pick("symptoms")[0]
        rest = [s for s in self.c["symptoms"] if s != main]
        symptoms = [main, *self.rng.sample(rest, self.rng.choice((1, 2)))]
        history = [c for c in self.c["causes"] if not NOT_HISTORY.search(c)]
        factor = self.rng.choice(history) if history else None
        patient = self.patient(symptoms + ([factor] if factor else []))
        onsets = BABY_ONSETS.get(patient.unit) or ONSETS[self.c["onset"]]
        return patient, symptoms, factor, self.rng.choice(onsets)

    def vignette(self) -> tuple[str, list[str]]:
        patient, symptoms, factor, (clause, _) = self.scenario()
        self.rng.shuffle(symptoms)
        text = f"{patient.third_person()} presents with {join_list(symptoms)}, {clause}."
        if factor:
            text += f" Relevant factor: {factor}."
        return text, symptoms

    @property
    def safe_first(self) -> bool:
        """How the training red-flag pair is asked (see urgency_pair). It alternates every four conditions,
        not every other one, because the probes' rotation by four picks which conditions get a red-flag
        probe, and a probe is asked the other way round."""
        return (self.index // 4) % 2 == 0

    # --- question forms shared by the training examples and the retention probes

    def mc_term(self, tier: int, template: str, ask: str) -> Example:
        """`ask` is a question with {predicate}; the options are condition names."""
        question = ask.format(predicate=predicate(self.c))
        others = self.close_others(3, question, self.c["name"], lambda o: o["name"])
        options, answer = self.options(self.c["name"], [o["name"] for o in others])
        return self.add(tier, template, "qa", question=question, options=options, answer=answer)

    def mc_meaning(self, tier: int, template: str, ask: str) -> Example:
        """`ask` is a question with {name}; the options are definitions without their subject."""
        question = ask.format(name=self.name)
        others = self.close_others(3, question, predicate(self.c), predicate)
        options, answer = self.options(predicate(self.c), [predicate(o) for o in others])
        return self.add(tier, template, "qa", question=question, options=options, answer=answer)

    def mc_field(self, tier: int, template: str, question: str, field: str, right: str | None = None) -> Example:
        """Right: `right` or the own value that repeats fewest of the question's words; wrong: values that
        repeat at least as many where there are enough (a vignette's symptoms can echo a right test)."""
        if right is None:
            right = min(self.specific(field), key=lambda v: shared_words(question, v))
        need = shared_words(question, right)
        self.wrong_values(field, 3)  # works out the candidates once
        pool = self.wrong_values(field, len(self._candidates[(field, False)]))
        close = self.look_alikes("qa", right, [v for v in pool if shared_words(question, v) >= need], 3)
        wrong = close[:3] + sorted((v for v in pool if v not in close), key=lambda v: -shared_words(question, v))
        options, answer = self.options(right, wrong[:3])
        self.asked.setdefault(field, set()).add(right)
        return self.add(tier, template, "qa", question=question, options=options, answer=answer)

    def urgency_pair(self, tier: int, template: str, flag: str, safe_first: bool) -> Example:
        """A red flag: wait, or get urgent help now? The two answers hold exactly the same words (only their
        order differs) and open with "Yes." or "No." depending on how the question is asked, which alternates,
        so neither length, vocabulary nor the opening word tells the right one."""
        urgent = f"In someone with {self.name}, {flag} is a warning sign, not a minor symptom: get urgent help " \
            "now, not a routine appointment."
        wait = f"In someone with {self.name}, {flag} is a minor symptom, not a warning sign: get a routine " \
            "appointment, not urgent help now."
        prompt = f"Someone with {self.name} has a new sign: {flag}."
        if safe_first:
            prompt += " Is it safe to wait a few days and see if it settles?"
            chosen, rejected = f"No. {urgent}", f"Yes. {wait}"
        else:
            prompt += " Do they need urgent medical help now?"
            chosen, rejected = f"Yes. {urgent}", f"No. {wait}"
        return self.add(tier, template, "preference", prompt=prompt, chosen=chosen, rejected=rejected)

    def diagnosis_pair(self, tier: int, template: str) -> Example:
        text, shown = self.vignette()
        other = self.other_conditions(1, shown)[0]
        return self.add(
            tier, template, "preference",
            prompt=f"{text} What is the likely diagnosis and an appropriate first-line treatment?",
            chosen=f"The likely diagnosis is {self.name}; a first-line treatment is {self.c['treatments'][0]}.",
            rejected=f"The likely diagnosis is {mid_sentence(other['name'])}; "
            f"a first-line treatment is {other['treatments'][0]}.",
        )  # fmt: skip

    def value_pair(self, tier: int, template: str, field: str, prompt: str, answer: str) -> Example:
        """`answer` has {value}; right versus a neighbouring condition's value (a plausible mistake)."""
        right = self.specific(field)[0]
        wrong = self.wrong_values(field, 1, same_specialty=True)[0]
        if self.picker is not None:  # a neighbour's value where one looks as right, else any other
            pool = self._candidates[(field, True)]
            pool = pool if len(pool) >= 3 else pool + self.wrong_values(field, 3)
            wrong = self.look_alikes("preference", answer.format(value=right), pool, 1,
                                     lambda v: answer.format(value=v))[0]  # fmt: skip
        return self.add(
            tier, template, "preference", prompt=prompt,
            chosen=answer.format(value=right), rejected=answer.format(value=wrong),
        )  # fmt: skip

    def diagnosis_yn(self, template: str, label: str, ask: str) -> Example | None:
        """Does a patient with these (and no other) symptoms have this condition? yes: two of its own symptoms
        that no other condition has both of; no: one or two symptoms of another condition that share no word
        with this one's; maybe: one symptom that this condition shares word for word with another one. One
        question form for all three labels, so the form does not tell the answer. None where impossible."""
        symptoms = None
        if label == "yes":
            own = self.c["symptoms"]
            pairs = [(a, b) for i, a in enumerate(own) for b in own[i + 1 :]]
            self.rng.shuffle(pairs)
            for pair in pairs:
                shown = [tokens(s) for s in pair]
                if not any(all(t & symptom_tokens(tuple(known(o, "symptoms"))) for t in shown)
                           for o in self.all if o is not self.c):  # fmt: skip
                    symptoms = list(pair)
                    break
        elif label == "no":
            mine = symptom_tokens(tuple(known(self.c, "symptoms") + known(self.c, "red_flags")))
            other = self.other_conditions(1)[0]
            theirs = [s for s in other["symptoms"] if not tokens(s) & mine and not is_generic("symptoms", s)]
            if theirs:
                symptoms = self.rng.sample(theirs, min(len(theirs), self.rng.choice((1, 2))))
        else:
            shared = [
                s for s in self.c["symptoms"]
                if any(o is not self.c and s.lower() in symptom_set(tuple(known(o, "symptoms"))) for o in self.all)
            ]  # fmt: skip
            symptoms = [self.rng.choice(shared)] if shared else None
        if not symptoms:
            return None
        question = ask.format(symptoms=join_list(symptoms), name=self.name)
        return self.add(2, template, "qa", question=question, options=list(YES_NO_MAYBE), answer=YN[label])

    # --- the three tiers

    def tier1(self) -> None:
        c, name = self.c, self.name
        self.add(1, "text-definition", "text", text=c["definition"])
        symptoms = join_list(c["symptoms"])
        self.add(1, "text-symptoms", "text", text=f"Typical symptoms of {name} include {symptoms}.")
        self.mc_term(1, "mc-term", "Which term describes {predicate}?")
        self.mc_meaning(1, "mc-meaning", "What does the term '{name}' mean?")
        self.add(1, "open-definition", "qa", question=f"What is {name}?", answer=c["definition"])

    def tier2(self) -> None:
        c, name = self.c, self.name
        self.add(
            2, "text-facts", "text",
            text=f"First-line tests for {name} include {join_list(c['tests'])}. "
            f"First-line treatment includes {join_list(c['treatments'])}.",
        )  # fmt: skip
        self.add(
            2, "text-causes", "text",
            text=f"Causes and risk factors for {name} include {join_list(c['causes'])}. "
            f"Warning signs that need urgent care include {join_list(c['red_flags'])}.",
        )  # fmt: skip
        for field, template, count in (
            ("tests", "mc-test", 2), ("treatments", "mc-treatment", 2),
            ("symptoms", "mc-symptom", 1), ("causes", "mc-cause", 1),
        ):  # fmt: skip
            for right in self.specific(field)[:count]:
                self.mc_field(2, template, MC_QUESTIONS[field].format(name=name), field, right)
        self.yes_no_maybe()
        self.add(
            2, "open-tests", "qa", question=f"What are the first-line tests for {name}?",
            answer=f"First-line tests for {name} include {join_list(c['tests'])}.",
        )  # fmt: skip
        self.add(
            2, "open-treatments", "qa", question=f"How is {name} usually treated first?",
            answer=f"First-line treatment for {name} includes {join_list(c['treatments'])}.",
        )  # fmt: skip
        self.add(
            2, "open-red-flags", "qa", question=f"Which warning signs in someone with {name} need urgent care?",
            answer=f"Warning signs that need urgent care include {join_list(c['red_flags'])}.",
        )  # fmt: skip
        self.value_pair(
            2, "pref-treatment", "treatments", f"What is a first-line treatment for {name}?",
            f"A first-line treatment for {name} is {{value}}.",
        )  # fmt: skip
        right = self.specific("tests")[0]
        wrong = self.wrong_values("tests", 1)[0]
        self.add(
            2, "pref-test", "preference", prompt=f"What is a first-line test or assessment for {name}?",
            chosen=f"A first-line test for {name} is {right}.",
            rejected=f"A first-line test for {name} is {wrong}.",
        )  # fmt: skip

    def yes_no_maybe(self) -> None:
        """One fact check (yes or no, alternating across conditions) and one diagnosis question (the other of
        yes and no), plus a "maybe" diagnosis question where a symptom is shared: the labels come out about
        one third each in every file."""
        name, flip = self.name, self.index % 2 == 1
        field = self.rng.choice(["tests", "symptoms", "treatments"])
        if flip:
            self.add(2, "yn-fact", "qa", question=YN_ASKS[field].format(name=name, value=self.pick(field)[0]),
                     options=list(YES_NO_MAYBE), answer=YN["yes"])  # fmt: skip
        else:
            value = self.wrong_values(field, 1)[0]
            self.add(2, "yn-fact", "qa", question=YN_ASKS[field].format(name=name, value=value),
                     options=list(YES_NO_MAYBE), answer=YN["no"])  # fmt: skip
        for label in ("no" if flip else "yes", "maybe"):
            self.diagnosis_yn("yn-diagnosis", label, YN_DIAGNOSIS)

    def tier3(self) -> None:
        c, name = self.c, self.name
        for _ in range(2):
            text, shown = self.vignette()
            question = f"{text} What is the most likely diagnosis?"
            others = self.close_others(3, question, self.c["name"], lambda o: o["name"], shown)
            options, answer = self.options(c["name"], [o["name"] for o in others])
            self.add(3, "vignette-diagnosis", "qa", question=question, options=options, answer=answer)
        for field, template, ask in (
            ("tests", "vignette-test", "Which first-line test or assessment is most useful?"),
            ("treatments", "vignette-treatment", "Which is an appropriate first-line treatment?"),
        ):
            text, _ = self.vignette()
            self.mc_field(3, template, f"{text} {ask}", field)

        text, shown = self.vignette()
        self.add(
            3, "case", "text",
            text=f"Case: {text} Likely diagnosis: {name}. First-line tests: {join_list(c['tests'][:2])}. "
            f"Treatment: {c['treatments'][0]}. Urgent warning sign: {self.rng.choice(c['red_flags'])}.",
        )  # fmt: skip
        self.dialogues()
        self.urgency_pair(3, "pref-red-flag", self.rng.choice(c["red_flags"]), safe_first=self.safe_first)
        self.diagnosis_pair(3, "pref-vignette")

    def dialogues(self) -> None:
        """A one-exchange and a two-exchange consultation; the doctor names the main (first-listed) tests and
        treatments and the red flags to watch for."""
        c, name = self.c, self.name
        # Short answers keep dialogues within ~100 words: one test and two treatments, or the reverse.
        first_test, first_treatment = c["tests"][0], c["treatments"][0]
        tests, treatments = join_list(c["tests"][:2]), join_list(c["treatments"][:2])

        patient, symptoms, factor, (_, onset) = self.scenario()
        self.rng.shuffle(symptoms)
        relevant = f" Possibly relevant: {factor}." if factor else ""
        user = f"{patient.intro()} {patient.possessive} symptoms are {join_list(symptoms)}. {onset}{relevant}"
        doctor = (
            f"This could be {name}; a doctor should examine {patient.object} to confirm it. "
            f"A usual first test is {first_test}. Treatment often includes {treatments}. "
            f"Get urgent help for warning signs such as: {'; '.join(self.pick('red_flags', 2))}."
        )
        self.add(3, "dialogue-short", "dialogue", turns=_turns(user + " What could this be?", doctor))

        patient, symptoms, factor, (_, onset) = self.scenario()
        relevant = f" Possibly relevant: {factor}." if factor else " Nothing else that I know of."
        self.add(
            3, "dialogue-long", "dialogue",
            turns=_turns(
                f"{patient.intro()} The main problem is {symptoms[0]}. {onset}",
                "Are there any other symptoms, or anything in the history that might be relevant?",
                f"Other symptoms: {join_list(symptoms[1:])}.{relevant}",
                f"Together these suggest {name}; a doctor should confirm it. Tests usually start with {tests}. "
                f"Treatment often includes {first_treatment}. "
                f"Seek urgent care for: {'; '.join(self.pick('red_flags', 2))}.",
            ),
        )  # fmt: skip

    def write_all(self) -> list[Example]:
        self.tier1()
        self.tier2()
        self.tier3()
        return self.examples

    # --- retention probes

    def fresh_value(self, field: str, question: str) -> str:
        """A value of the field that no training question has as its answer where there is one (the fact
        texts teach it), else one that has; the one that repeats fewest of the question's words."""
        values = self.specific(field)
        fresh = [v for v in values if v not in self.asked.get(field, ())] or values
        return min(fresh, key=lambda v: shared_words(question, v))

    def probes(self) -> dict[str, list[Example]]:
        """Retention probes of a training condition, for {"validation-retention": [...], "test-retention": [...]}:
        per file, one general-stage, two knowledge-stage and two clinical-stage scorable questions, each worded
        differently from every training question (or about a new vignette). What they ask is taught in train
        by the fact texts and by training questions in other words. Call after write_all (the RNG goes on)."""
        name, i = self.name, self.index
        out: dict[str, list[Example]] = {}
        start = len(self.examples)
        for f, file in enumerate(("validation-retention", "test-retention")):
            before = len(self.examples)
            # general: one of the two term questions, the other one in the other file
            if (i + f) % 2 == 0:
                self.mc_term(1, "probe-mc-term", "What is the name for {predicate}?")
            else:
                self.mc_meaning(1, "probe-mc-meaning", "Which of these describes {name}?")
            # knowledge: a multiple-choice question on a rotating field, then a yes/no/maybe or a preference pair
            field = PROBE_FIELDS[(i + 2 * f) % 4]
            question = PROBE_QUESTIONS[field].format(name=name)
            self.mc_field(2, f"probe-mc-{field}", question, field, self.fresh_value(field, question))
            if (i + f) % 2 == 0:
                labels = ("yes", "no", "maybe", "yes", "no")[(i // 2 + f) % 3 :]
                for label in labels[:3]:  # the next label where this one is impossible
                    if self.diagnosis_yn("probe-yn-diagnosis", label, PROBE_DIAGNOSIS) is not None:
                        break
            else:
                self.value_pair(
                    2, "probe-pref-treatment", "treatments", f"Which treatment would be used early for {name}?",
                    f"{capitalize(name)} is often treated early with {{value}}.",
                )  # fmt: skip
            # clinical: a new vignette to diagnose, then a rotating test, treatment, red-flag or diagnosis pair
            text, shown = self.vignette()
            question = f"{text} Which condition is most likely?"
            others = self.close_others(3, question, self.c["name"], lambda o: o["name"], shown)
            options, answer = self.options(self.c["name"], [o["name"] for o in others])
            self.add(3, "probe-vignette-diagnosis", "qa", question=question, options=options, answer=answer)
            kind = (i + 2 * f) % 4
            if kind < 2:
                field = ("tests", "treatments")[kind]
                text, _ = self.vignette()
                ask = ("What should be done first to look for the cause?", "What is a suitable first treatment?")[kind]
                self.mc_field(3, f"probe-vignette-{field}", f"{text} {ask}", field, self.fresh_value(field, text + ask))
            elif kind == 2:
                # the other question form than the training pair's, so the prompt is new
                self.urgency_pair(3, "probe-pref-red-flag", self.rng.choice(self.c["red_flags"]),
                                  safe_first=not self.safe_first)  # fmt: skip
            else:
                self.diagnosis_pair(3, "probe-pref-vignette")
            out[file] = self.examples[before:]
        del self.examples[start:]
        for file, examples in out.items():
            for ex in examples:
                ex.meta["split"] = file
        return out


YN = {label: i for i, label in enumerate(YES_NO_MAYBE)}
MC_QUESTIONS = {
    "tests": "Which of these is a first-line test or assessment for {name}?",
    "treatments": "Which of these is a first-line treatment for {name}?",
    "symptoms": "Which of these is a typical symptom of {name}?",
    "causes": "Which of these is a recognised cause or risk factor for {name}?",
}
# the retention probes ask the same facts in other words
PROBE_FIELDS = ("tests", "treatments", "symptoms", "causes")
PROBE_QUESTIONS = {
    "tests": "To check for {name}, which of these is usually done early on?",
    "treatments": "Which of these is commonly used early in the treatment of {name}?",
    "symptoms": "Someone with {name} would be most likely to notice which of these?",
    "causes": "Which of these makes {name} more likely?",
}
YN_ASKS = {
    "tests": "Is this a first-line test or assessment for {name}: {value}?",
    "symptoms": "Is this a typical symptom of {name}: {value}?",
    "treatments": "Is this a first-line treatment for {name}: {value}?",
}
YN_DIAGNOSIS = "A patient reports {symptoms} and no other symptoms. Does the patient have {name}?"
PROBE_DIAGNOSIS = "Someone has {symptoms}, and nothing else. Is it {name}?"


def _turns(*contents: str) -> list[dict[str, str]]:
    """Alternating user/assistant turns, ending with the assistant's."""
    roles = ["user", "assistant"] * len(contents)
    return [{"role": role, "content": text} for role, text in zip(roles, contents)]
