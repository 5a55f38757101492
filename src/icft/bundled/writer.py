"""Every example about one medical condition, at the three tiers, from its row of the knowledge table."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..data.schema import Example
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


class ConditionWriter:
    """All examples about one condition; every random choice comes from its own seeded RNG."""

    def __init__(self, condition: dict, table: Table, split: str, seed: int):
        self.c = condition
        self.table = table
        self.all = table.conditions
        self.split = split
        self.rng = random.Random(f"icft-bundled:{seed}:{condition['name']}")
        self.name = mid_sentence(condition["name"])
        self.slug = slugify(condition["name"])
        self.name_tokens = tokens(condition["name"])
        self.cause_tokens = frozenset().union(*(tokens(v) for v in condition["causes"]))
        self.examples: list[Example] = []
        self._counts: Counter = Counter()
        self._candidates: dict = {}

    def add(self, tier: int, template: str, kind: str, **fields) -> None:
        n = self._counts[(tier, template)]
        self._counts[(tier, template)] += 1
        meta = {
            "condition": self.c["name"], "specialty": self.c["specialty"], "tier": tier,
            "split": self.split, "template": template,
        }  # fmt: skip
        example_id = f"icft-med/{self.slug}/t{tier}/{template}/{n}"
        example = Example(id=example_id, kind=kind, source=MEDICAL_SOURCE, stage=STAGES[tier], meta=meta, **fields)
        self.examples.append(example)

    # --- choosing values

    def pick(self, field: str, k: int = 1) -> list[str]:
        """k of this condition's own values, specific ones first (see GENERIC)."""
        values = self.c[field]
        specific = [v for v in values if not is_generic(field, v)]
        rest = [v for v in values if is_generic(field, v)]
        k = min(k, len(values))
        chosen = self.rng.sample(specific, min(k, len(specific)))
        return chosen + self.rng.sample(rest, k - len(chosen))

    def wrong_values(self, field: str, k: int, same_specialty: bool = False) -> list[str]:
        """k values of `field` from other conditions that cannot also be right for this one: not generic and
        sharing no content word (or drug class) with this condition's name, its own values of the field or
        related ones (a treatment aimed at one of its causes or symptoms can be right too). Other specialties
        by default (so the wrong answer is clearly wrong); same_specialty=True prefers neighbours (a plausible
        mistake)."""
        key = (field, same_specialty)
        if key not in self._candidates:
            related = {"symptoms": ["red_flags"], "tests": ["causes"], "treatments": ["causes", "symptoms"]}
            own = self.c[field] + [v for other_field in related.get(field, []) for v in self.c[other_field]]
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

    def is_cause(self, other: dict) -> bool:
        """Whether another condition is one of this one's causes (hypertension for a stroke): its causes,
        symptoms and treatments are often right here too, and it would be a fair diagnosis as well."""
        return bool(tokens(other["name"]) & self.cause_tokens)

    def other_conditions(self, k: int, shown_symptoms: Iterable[str] = ()) -> list[dict]:
        """k other conditions for wrong diagnoses: neighbours from the same specialty first, never one whose
        name overlaps this one's, that causes or is caused by this one, or whose symptoms also cover every
        symptom shown."""
        shown = [tokens(s) for s in shown_symptoms]

        def allowed(other: dict) -> bool:
            if other is self.c or tokens(other["name"]) & self.name_tokens or self.is_cause(other):
                return False
            if any(self.name_tokens & tokens(cause) for cause in other["causes"]):
                return False
            other_tokens = symptom_tokens(tuple(other["symptoms"]))
            return not (shown and all(t & other_tokens for t in shown))

        candidates = [o for o in self.all if allowed(o)]
        same = [o for o in candidates if o["specialty"] == self.c["specialty"]]
        picks = self.rng.sample(same, min(k, len(same)))
        others = [o for o in candidates if o["specialty"] != self.c["specialty"]]
        return picks + self.rng.sample(others, k - len(picks))

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

    # --- the three tiers

    def tier1(self) -> None:
        c, name = self.c, self.name
        self.add(1, "text-definition", "text", text=c["definition"])
        symptoms = join_list(c["symptoms"])
        self.add(1, "text-symptoms", "text", text=f"Typical symptoms of {name} include {symptoms}.")
        options, answer = self.options(c["name"], [o["name"] for o in self.other_conditions(3)])
        question = f"Which term describes {predicate(c)}?"
        self.add(1, "mc-term", "qa", question=question, options=options, answer=answer)
        options, answer = self.options(predicate(c), [predicate(o) for o in self.other_conditions(3)])
        question = f"What does the term '{name}' mean?"
        self.add(1, "mc-meaning", "qa", question=question, options=options, answer=answer)
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
        questions = {
            "tests": f"Which of these is a first-line test or assessment for {name}?",
            "treatments": f"Which of these is a first-line treatment for {name}?",
            "symptoms": f"Which of these is a typical symptom of {name}?",
            "causes": f"Which of these is a recognised cause or risk factor for {name}?",
        }
        for field, template, count in (
            ("tests", "mc-test", 2), ("treatments", "mc-treatment", 2),
            ("symptoms", "mc-symptom", 1), ("causes", "mc-cause", 1),
        ):  # fmt: skip
            for right in self.pick(field, count):
                options, answer = self.options(right, self.wrong_values(field, 3))
                self.add(2, template, "qa", question=questions[field], options=options, answer=answer)
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
        right = self.pick("treatments")[0]
        wrong = self.wrong_values("treatments", 1, same_specialty=True)[0]
        self.add(
            2, "pref-treatment", "preference", prompt=f"What is a first-line treatment for {name}?",
            chosen=f"A first-line treatment for {name} is {right}.",
            rejected=f"A first-line treatment for {name} is {wrong}.",
        )  # fmt: skip
        right = self.pick("tests")[0]
        wrong = self.wrong_values("tests", 1)[0]
        self.add(
            2, "pref-test", "preference", prompt=f"What is a first-line test or assessment for {name}?",
            chosen=f"A first-line test for {name} is {right}.",
            rejected=f"A first-line test for {name} is {wrong}.",
        )  # fmt: skip

    def yes_no_maybe(self) -> None:
        name = self.name
        asks = {
            "tests": lambda v: f"Is this a first-line test or assessment for {name}: {v}?",
            "symptoms": lambda v: f"Is this a typical symptom of {name}: {v}?",
            "treatments": lambda v: f"Is this a first-line treatment for {name}: {v}?",
            "red_flags": lambda v: f"In someone with {name}, does this sign need urgent medical care: {v}?",
        }
        yn = ["yes", "no", "maybe"]
        for field in self.rng.sample(list(asks), 2):
            self.add(2, "yn-yes", "qa", question=asks[field](self.pick(field)[0]), options=yn, answer=0)
        for field in self.rng.sample(["tests", "symptoms", "treatments"], 2):
            value = self.wrong_values(field, 1)[0]
            self.add(2, "yn-no", "qa", question=asks[field](value), options=yn, answer=1)
        # "maybe": a symptom this condition shares word for word with another one cannot settle the diagnosis.
        shared = [
            (s, o) for s in self.c["symptoms"] for o in self.all
            if o is not self.c and s.lower() in symptom_set(tuple(o["symptoms"]))
        ]  # fmt: skip
        if shared:
            symptom, other = self.rng.choice(shared)
            self.add(
                2, "yn-maybe", "qa",
                context=f"{capitalize(symptom)} occurs in {name} and also in other conditions, "
                f"such as {mid_sentence(other['name'])}.",
                question=f"A patient's only reported symptom is {symptom}. Does the patient have {name}?",
                options=yn, answer=2,
            )  # fmt: skip

    def tier3(self) -> None:
        c, name = self.c, self.name
        for _ in range(2):
            text, shown = self.vignette()
            others = self.other_conditions(3, shown)
            options, answer = self.options(c["name"], [o["name"] for o in others])
            self.add(
                3, "vignette-diagnosis", "qa", question=f"{text} What is the most likely diagnosis?",
                options=options, answer=answer,
            )  # fmt: skip
        for field, template, ask in (
            ("tests", "vignette-test", "Which first-line test or assessment is most useful?"),
            ("treatments", "vignette-treatment", "Which is an appropriate first-line treatment?"),
        ):
            text, _ = self.vignette()
            options, answer = self.options(self.pick(field)[0], self.wrong_values(field, 3))
            self.add(3, template, "qa", question=f"{text} {ask}", options=options, answer=answer)

        text, shown = self.vignette()
        self.add(
            3, "case", "text",
            text=f"Case: {text} Likely diagnosis: {name}. First-line tests: {join_list(c['tests'][:2])}. "
            f"Treatment: {c['treatments'][0]}. Urgent warning sign: {self.rng.choice(c['red_flags'])}.",
        )  # fmt: skip
        self.dialogues()

        flag = self.rng.choice(c["red_flags"])
        self.add(
            3, "pref-red-flag", "preference",
            prompt=f"Someone with {name} has a new warning sign: {flag}. "
            "Is it safe to wait a few days and see if it settles?",
            chosen=f"No. In someone with {name}, this warning sign ({flag}) can mean a serious problem. "
            "Get urgent medical help now, for example at an emergency department or by calling emergency "
            "services.",
            rejected=f"Yes. This is common with {name} and usually settles on its own. "
            "Rest at home and book a routine appointment if it is still there next week.",
        )  # fmt: skip
        text, shown = self.vignette()
        other = self.other_conditions(1, shown)[0]
        self.add(
            3, "pref-vignette", "preference",
            prompt=f"{text} What is the likely diagnosis and an appropriate first-line treatment?",
            chosen=f"The likely diagnosis is {name}; a first-line treatment is {c['treatments'][0]}.",
            rejected=f"The likely diagnosis is {mid_sentence(other['name'])}; "
            f"a first-line treatment is {other['treatments'][0]}.",
        )  # fmt: skip

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


def _turns(*contents: str) -> list[dict[str, str]]:
    """Alternating user/assistant turns, ending with the assistant's."""
    roles = ["user", "assistant"] * len(contents)
    return [{"role": role, "content": text} for role, text in zip(roles, contents)]
