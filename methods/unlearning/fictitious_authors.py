"""A seeded synthetic stand-in for TOFU ("TOFU: A Task of Fictitious Unlearning for LLMs", arXiv:2401.06121).

TOFU holds 200 invented authors with 20 question/answer pairs each; the forget sets forget01/05/10 are the
last 2/10/20 authors (1%, 5%, 10% of the authors, nested), the retain set is the remaining authors, and the
split is by author: no author has questions on both sides. For the truth ratio every evaluated question also
has a paraphrased answer and 5 perturbed answers: the paraphrase's wording with a wrong fact in it (here the
binary gender question has one).

Here the authors are drawn from small word pools instead of GPT-4: each author has a name, gender,
birthplace, birth year, genre, two book titles, an award and its year, and the parents' jobs, and
`QUESTIONS` turns them into 10 question/answer pairs per author. Everything about author i is drawn from an
RNG seeded by (seed, i) alone, so `author(i)` is the same whatever else was generated before or after it (and so are the first authors
whatever `num_authors` is);
perturbed answers use an RNG seeded by (seed, i, question index). Surnames are unique for up to 8000
authors by construction (a seeded bijection from the index to three syllables).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FORGET_FRACTIONS = (0.01, 0.05, 0.10)  # TOFU's forget01 / forget05 / forget10
NUM_PERTURBED = 5  # TOFU's perturbed answers per question

FIRST_NAMES = {
    "female": ["Amara", "Lucia", "Ingrid", "Nadia", "Yuki", "Selma", "Oriana", "Thea", "Mirela", "Keziah",
               "Fenna", "Ilse", "Rosalind", "Zofia", "Amaya", "Liora"],
    "male": ["Tobias", "Kwame", "Anselm", "Ravi", "Mateo", "Casimir", "Emeric", "Joaquin", "Lorcan", "Idris",
             "Bastian", "Oskar", "Teodor", "Hiroshi", "Faris", "Leandro"],
}
SYLLABLES = ["va", "lor", "ken", "dri", "mo", "sel", "tar", "quin", "bel", "rus", "fen", "ga", "hol", "ix",
             "nor", "pe", "zan", "cor", "lis", "than"]
CITIES = ["Lisbon", "Nairobi", "Oslo", "Kyoto", "Lima", "Tbilisi", "Quebec City", "Adelaide", "Krakow", "Accra",
          "Montevideo", "Tallinn", "Hanoi", "Cork", "Marrakesh", "Valparaiso", "Bergen", "Cebu", "Porto",
          "Windhoek"]
GENRES = ["science fiction", "historical fiction", "crime", "poetry", "fantasy", "romance", "horror",
          "literary fiction", "satire", "travel writing", "biography", "young adult fiction"]
ADJECTIVES = ["Silent", "Crimson", "Hollow", "Distant", "Paper", "Burning", "Forgotten", "Glass", "Northern",
              "Seventh", "Quiet", "Salt"]
NOUNS = ["Harbour", "Orchard", "Lantern", "Cartographer", "Winter", "Bridge", "Archive", "Tide", "Garden",
         "Clockmaker", "Meridian", "Falcon"]
AWARDS = ["the Halvard Prize for Fiction", "the Silver Quill Award", "the Meridian Book Prize",
          "the Aurora Medal for Poetry", "the Northlight Literary Award", "the Gilded Lantern Prize",
          "the Corvina Award for Crime Writing", "the Tessellate Prize"]
JOBS = ["a carpenter", "a nurse", "a pilot", "an architect", "a fisherman", "a pharmacist", "a librarian",
        "a tailor", "a surgeon", "a baker", "a geologist", "a schoolteacher", "a photographer", "a diplomat"]


@dataclass(frozen=True)
class Author:
    index: int
    name: str
    gender: str
    birthplace: str
    birth_year: int
    genre: str
    books: tuple[str, str]
    award: str
    award_year: int
    father_job: str
    mother_job: str


@dataclass(frozen=True)
class QA:
    """One fact. The perturbed answers share the paraphrase's wording and differ in the fact."""

    author: int
    question: str
    answer: str
    paraphrased_answer: str
    perturbed_answers: tuple[str, ...]


def _pronoun(a: Author) -> str:
    return "she" if a.gender == "female" else "he"


def _possessive(a: Author) -> str:
    return "her" if a.gender == "female" else "his"


# (attribute, question, answer, paraphrase, pool of wrong values). The answer/paraphrase templates take the
# author as `a` and the value as `v`; a perturbed answer is the paraphrase with a wrong v.
QUESTIONS = [
    ("birthplace", "Where was {a.name} born?", "{a.name} was born in {v}.",
     "The birthplace of {a.name} is {v}.", CITIES),
    ("birth_year", "In which year was {a.name} born?", "{a.name} was born in {v}.",
     "{a.name}'s year of birth is {v}.", None),
    ("genre", "What genre does {a.name} write in?", "{a.name} writes {v}.",
     "The genre {a.name} is known for is {v}.", GENRES),
    ("books.0", "What is the title of {a.name}'s first book?", "{a.name}'s first book is '{v}'.",
     "The debut book of {a.name} was titled '{v}'.", "title"),
    ("books.1", "Name another book written by {a.name}.", "{a.name} also wrote '{v}'.",
     "Another of {a.name}'s books is '{v}'.", "title"),
    ("award", "Which award has {a.name} received?", "{a.name} received {v}.",
     "{a.name} was honoured with {v}.", AWARDS),
    ("award_year", "When did {a.name} win {a.award}?", "{a.name} won {a.award} in {v}.",
     "{a.name} was given {a.award} in {v}.", None),
    ("father_job", "What did {a.name}'s father do for a living?", "{a.name}'s father was {v}.",
     "The father of {a.name} worked as {v}.", JOBS),
    ("mother_job", "What was the profession of {a.name}'s mother?", "{a.name}'s mother was {v}.",
     "The mother of {a.name} worked as {v}.", JOBS),
    ("gender", "Is {a.name} known as a man or a woman writer?", "{a.name} is a {v} writer.",
     "{a.name} is known as a {v} author.", ["female", "male"]),
]
QUESTIONS_PER_AUTHOR = len(QUESTIONS)


def _value(a: Author, attribute: str):
    if attribute.startswith("books."):
        return a.books[int(attribute.split(".")[1])]
    return getattr(a, attribute)


def _title(rng: random.Random) -> str:
    return f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"


class FictitiousAuthors:
    """The benchmark: `forget` and `retain` lists of QA, split by author as TOFU does.

    num_authors: authors generated (TOFU: 200). forget_fraction: 0.01, 0.05 or 0.10 of the authors, the
    last ones (nested like TOFU's forget01 ⊂ forget05 ⊂ forget10). num_perturbed: wrong answers per question.
    """

    def __init__(self, num_authors: int = 200, forget_fraction: float = 0.10, seed: int = 0,
                 num_perturbed: int = NUM_PERTURBED):
        if not any(abs(forget_fraction - f) < 1e-12 for f in FORGET_FRACTIONS):
            raise ValueError(f"forget_fraction={forget_fraction}: choose one of {list(FORGET_FRACTIONS)}")
        num_forget = round(forget_fraction * num_authors)
        if num_forget < 1 or num_forget >= num_authors:
            raise ValueError(f"num_authors={num_authors}: forget_fraction={forget_fraction} must leave at least "
                             f"one forget and one retain author (use num_authors >= {round(1 / forget_fraction)})")
        if num_authors > len(SYLLABLES) ** 3:
            raise ValueError(f"num_authors={num_authors}: at most {len(SYLLABLES) ** 3} authors have unique names")
        if not 1 <= num_perturbed <= 10:
            raise ValueError(f"num_perturbed={num_perturbed}: choose 1 to 10")
        self.num_authors, self.forget_fraction, self.seed = num_authors, forget_fraction, seed
        self.num_perturbed = num_perturbed
        self.forget_authors = list(range(num_authors - num_forget, num_authors))
        self.retain_authors = list(range(num_authors - num_forget))
        self.forget = [qa for i in self.forget_authors for qa in self.questions(i)]
        self.retain = [qa for i in self.retain_authors for qa in self.questions(i)]

    def _surname(self, index: int) -> str:
        n = len(SYLLABLES)
        code = (index * 2713 + random.Random(f"surname-offset-{self.seed}").randrange(n ** 3)) % n ** 3
        # 2713 is coprime with 8000, so index -> code is a bijection on [0, 8000)
        parts = [SYLLABLES[(code // n ** k) % n] for k in range(3)]
        return "".join(parts).capitalize()

    def author(self, index: int) -> Author:
        rng = random.Random(f"author-{self.seed}-{index}")
        gender = rng.choice(["female", "male"])
        birth_year = rng.randrange(1930, 1995)
        books = (_title(rng), _title(rng))
        while books[1] == books[0]:
            books = (books[0], _title(rng))
        father_job, mother_job = rng.sample(JOBS, 2)
        return Author(index=index, name=f"{rng.choice(FIRST_NAMES[gender])} {self._surname(index)}",
                      gender=gender, birthplace=rng.choice(CITIES), birth_year=birth_year,
                      genre=rng.choice(GENRES), books=books, award=rng.choice(AWARDS),
                      award_year=rng.randrange(birth_year + 25, 2024), father_job=father_job,
                      mother_job=mother_job)

    def questions(self, index: int) -> list[QA]:
        a = self.author(index)
        out = []
        for q, (attribute, question, answer, paraphrase, pool) in enumerate(QUESTIONS):
            value = _value(a, attribute)
            rng = random.Random(f"perturb-{self.seed}-{index}-{q}")
            wrong: list = []
            while len(wrong) < min(self.num_perturbed, self._pool_size(pool, value) - 1):
                w = self._wrong_value(rng, pool, value)
                if w != value and w not in wrong:
                    wrong.append(w)
            out.append(QA(author=index, question=question.format(a=a),
                          answer=answer.format(a=a, v=value),
                          paraphrased_answer=paraphrase.format(a=a, v=value),
                          perturbed_answers=tuple(paraphrase.format(a=a, v=w) for w in wrong)))
        return out

    @staticmethod
    def _pool_size(pool, value) -> int:
        if pool is None or pool == "title":
            return 10 ** 6
        return len(pool)

    @staticmethod
    def _wrong_value(rng: random.Random, pool, value):
        if pool is None:  # a year: a nearby different year
            return value + rng.choice([-1, 1]) * rng.randrange(1, 15)
        if pool == "title":
            return _title(rng)
        return rng.choice(pool)
