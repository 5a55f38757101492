"""Text helpers and vocabulary for the bundled data generator: joining lists, articles, and deciding
whether two short medical phrases are about the same thing (so that a wrong option is never also right)."""

from __future__ import annotations

import re
import unicodedata
from functools import cache

# Words that carry no meaning when deciding whether two phrases are about the same thing.
STOPWORDS = frozenset(
    "the and for with without such from into onto over under after before within while when than that this "
    "these those any all one two both more less very often usually only other new its their them they who "
    "can may not has have been being are was were is be if or of in on to by as at up out per "
    "blood test tests level levels scan pain first line treatment medicine medicines signs sign "
    # words in condition names that say what kind of thing it is, not what it is about
    "disease syndrome disorder acute chronic primary type infection cancer".split()
)
# Words that mean the same thing for that purpose: two words for one symptom, or drugs of one class (a
# drug can be in two classes). Two phrases that share a class are treated as overlapping.
_CLASSES = {
    "breath": "breathless breathlessness breathing breath",
    "fatigue": "fatigue tiredness tired exhaustion",
    "sick": "nausea vomiting vomit sickness",
    "fever": "fever temperature shivering chills",
    "swell": "swollen swelling",
    "itch": "itching itchy",
    "cough": "cough coughing",
    "dizzy": "dizziness dizzy faint fainting",
    "vision": "vision visual sight",
    "bowel": "diarrhoea stool stools bowel bowels",
    "urine": "urine urinary",
    "glycaemia": "hba1c glucose sugar diabetes diabetic insulin metformin",
    "antibiotic": "antibiotic antibiotics amoxicillin flucloxacillin doxycycline ceftriaxone cefalexin "
    "ciprofloxacin nitrofurantoin trimethoprim phenoxymethylpenicillin penicillin fusidic metronidazole "
    "ofloxacin lymecycline piperacillin rifampicin chloramphenicol",
    "steroid": "steroid steroids corticosteroid corticosteroids prednisolone hydrocortisone dexamethasone",
    "antiviral": "antiviral aciclovir oseltamivir tenofovir entecavir antiretroviral",
    "anticoagulant": "anticoagulant anticoagulation apixaban rivaroxaban heparin",
    "antiplatelet": "antiplatelet aspirin clopidogrel",
    "nsaid": "nsaid nsaids ibuprofen diclofenac aspirin",
    "immunosuppressant": "immunosuppressant immunosuppressants methotrexate hydroxychloroquine mycophenolate "
    "azathioprine biological biologic tocilizumab infliximab tnf",
    "cancer-therapy": "chemotherapy immunotherapy radiotherapy targeted",
    "immobilise": "cast splint boot immobilisation brace bracing",
    "surgery": "surgery surgical operation repair excision removal resection prostatectomy cystectomy "
    "mastectomy lumpectomy myomectomy hysterectomy appendicectomy cholecystectomy orchidectomy",
    "liver": "liver bilirubin hepatic",
    "hormonal": "hormonal hormone contraceptive progestogens levonorgestrel oestrogen",
    "light-therapy": "phototherapy photodynamic",
}
SYNONYMS = {
    word: {c for c, words in _CLASSES.items() if word in words.split()} for word in " ".join(_CLASSES.values()).split()
}
# Values so widely applicable that they could be right for almost any condition: they are never used as
# wrong options, and a right option is taken from the other values first so they do not give it away.
GENERIC = {
    field: re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)
    for field, words in {
        "symptoms": [
            "fatigue", "fever", "nausea", "vomiting", "weight loss", "weight gain", "headaches?", "dizziness",
            "confusion", "unwell", "appetite", "itching", "muscle aches", "abdominal pain", "back pain",
            "joint pain", "chest pain", "breathlessness", "palpitations", "diarrhoea", "fast heart rate",
            "sweating", "poor feeding", "dehydration", "sleepiness",
        ],
        "causes": [
            "smoking", "obesity", "age", "older", "alcohol", "family history", "diabetes", "hypertension",
            "sex", "ancestry", "background", "genetic", "stress", "pregnancy", "infections?", "medicines",
            "inactivity", "injury", "surgery", "unknown", "immune",
        ],
        "tests": [
            "clinical", "examination", "assessment", "full blood count", "blood tests", "CRP", "history",
            "diary", "questionnaire", "ECG", "X-ray", "oxygen saturation", "urine dipstick", "kidney function",
            "liver function", "temperature", "blood glucose",
        ],
        "treatments": [
            "paracetamol", "ibuprofen", "pain relief", "fluids", "rest", "exercise", "weight loss", "smoking",
            "alcohol", "monitoring", "observation", "treating", "reassurance", "physiotherapy", "education",
            "support", "emergency", "hospital", "oxygen", "diet", "avoiding", r"vaccin\w*", "referral",
            "watchful", "palliative", "stopping", "continuing", "exercises?", "mobilisation", "active",
            "rehabilitation", "antibiotics?", r"\w*steroids?", "NSAIDs?",
        ],
    }.items()
}  # fmt: skip

# Names that keep their capital letter in mid-sentence (besides those with an apostrophe or an acronym).
PROPER_NAMES = ("Hodgkin", "Kawasaki", "Lyme", "Achilles", "Guillain")


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def join_list(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'; with a serial comma, or semicolons, where an item has its own 'and' or
    commas, so that 'wheeze, runny nose and cough, and fever' still reads as three items."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    if any("," in item for item in items[:-1]) and len(items) > 2:
        return "; ".join(items[:-1]) + "; and " + items[-1]
    serial = any("," in item or " and " in item or " or " in item for item in items[:-1])
    return ", ".join(items[:-1]) + ("," if serial else "") + " and " + items[-1]


def with_article(phrase: str) -> str:
    """'a 45-year-old man', 'an 82-year-old woman', 'an 11-year-old girl'."""
    an = phrase[:1].lower() in "aeiou" or re.match(r"8|(11|18)\D", phrase)
    return ("an " if an else "a ") + phrase


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def mid_sentence(name: str) -> str:
    """A condition's name as it reads inside a sentence: 'asthma', but 'Crohn's disease', 'COVID-19'."""
    first = name.split()[0]
    if "'" in first or any(ch.isupper() for ch in first[1:]) or first.startswith(PROPER_NAMES):
        return name
    return first[:1].lower() + name[1:]


def predicate(condition: dict) -> str:
    """The definition without its subject: 'a long-term condition in which ...'."""
    definition, name = condition["definition"], condition["name"]
    for verb in (" is ", " are "):
        if definition.startswith(name + verb):
            return definition[len(name) + len(verb) :].rstrip(".")
    raise ValueError(f"{name}: the definition must start with '{name} is' or '{name} are'")


@cache
def tokens(text: str) -> frozenset[str]:
    """Content words of a phrase, with plurals and synonyms folded together."""
    out = set()
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if len(word) > 4 and word.endswith("s") and word not in SYNONYMS:
            word = word[:-1]
        if len(word) >= 3 and word not in STOPWORDS:
            out.update(SYNONYMS.get(word, {word}))
    return frozenset(out)


@cache
def symptom_tokens(symptoms: tuple[str, ...]) -> frozenset[str]:
    return frozenset().union(*(tokens(s) for s in symptoms))


@cache
def symptom_set(symptoms: tuple[str, ...]) -> frozenset[str]:
    return frozenset(s.lower() for s in symptoms)


@cache
def is_generic(field: str, value: str) -> bool:
    pattern = GENERIC.get(field)
    return bool(pattern and pattern.search(value))
