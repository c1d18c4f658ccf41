"""A seeded, offline generator of a varied demo corpus (reviews and news with sentiment labels and exact
PER/LOC/ORG character spans) for training, evaluating and exercising the batch pipeline. Its words and
sentence templates are in `albert_batch.dev.vocabulary`.

Over 300 lines because it is one generator: the casting of people, places and organisations, the
noise (typos, casing, emoji), the document shapes and the span checks all draw from one random stream,
in one order, so that a seed always gives the same corpus."""

from __future__ import annotations

import pathlib
import random
import re
import zlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from albert_batch.dev import vocabulary

SENTIMENTS = ("negative", "positive")
ENTITY_TYPES = ("PER", "LOC", "ORG")
NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")

_SPLITS = ("train", "eval", "inference")
_ID_BASE = {"train": 0, "eval": 1_000_000, "inference": 2_000_000}

_ENTITY_STRUCT = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("label", pa.string())])
_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("text", pa.string()),
        ("sentiment", pa.string()),
        ("entities", pa.list_(_ENTITY_STRUCT)),
    ]
)


@dataclass(frozen=True)
class Document:
    id: int
    text: str
    sentiment: str  # one of SENTIMENTS
    # (start, end, label) character spans, sorted and non-overlapping; text[start:end] is the entity surface,
    # with no leading or trailing whitespace; label is one of ENTITY_TYPES.
    entities: tuple[tuple[int, int, str], ...]


_ENTITY_SLOTS = {"PER": "PER", "LAST": "PER", "LOC": "LOC", "ORG": "ORG"}
_SLOT_RE = re.compile(r"\{([A-Z]+)\}")
_WORD_RE = re.compile(r"[^\W\d_]{4,}")

# Noise and shape rates (per sentence unless noted).
_P_TYPO = 0.05
_P_CASING = 0.04
_P_EMOJI = 0.12
_P_LONG_DOC = 0.02
_P_DATELINE = 0.2


_FILLERS = ("PRODUCT", "ASPECT", "NUM", "BIGNUM", "PRICE", "DAY", "MONTH", "YEAR")


def _parse(template: str) -> tuple[tuple[str, ...], bool]:
    """Split a template into alternating literal and slot parts: even indexes literal, odd indexes slot."""
    parts = tuple(_SLOT_RE.split(template))
    for slot in parts[1::2]:
        if slot not in _ENTITY_SLOTS and slot not in _FILLERS:
            raise ValueError(f"unknown slot {slot!r} in template {template!r}")
    return parts, any(slot in _ENTITY_SLOTS for slot in parts[1::2])


_Template = tuple[tuple[str, ...], bool]


def _compile(templates: tuple[str, ...]) -> tuple[_Template, ...]:
    return tuple(_parse(t) for t in templates)


# genre -> (neutral, {sentiment: sentiment-bearing})
TEMPLATES: dict[str, tuple[tuple[_Template, ...], dict[str, tuple[_Template, ...]]]] = {
    "review": (_compile(vocabulary.REVIEW_NEUTRAL),
               {"positive": _compile(vocabulary.REVIEW_POSITIVE), "negative": _compile(vocabulary.REVIEW_NEGATIVE)}),
    "news": (_compile(vocabulary.NEWS_NEUTRAL),
             {"positive": _compile(vocabulary.NEWS_POSITIVE), "negative": _compile(vocabulary.NEWS_NEGATIVE)}),
}

# A piece of text and its entity label, or None for plain text.
_Piece = tuple[str, "str | None"]


class _Cast:
    """The people, places and organisations one document talks about, so that mentions recur."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.people: list[tuple[str, str]] = []  # (full name, short name)
        self.places: list[str] = []
        self.orgs: list[str] = []
        self.named: set[str] = set()  # full names already mentioned in full
        for _ in range(rng.randint(1, 3)):
            self._new_person()
        self.places.extend(rng.sample(vocabulary.LOCATIONS, rng.randint(1, 3)))
        self.orgs.extend(rng.sample(vocabulary.ORGANISATIONS, rng.randint(1, 3)))

    def _new_person(self) -> tuple[str, str]:
        given, family, family_first = self.rng.choice(vocabulary.NAME_POOLS)
        first, last = self.rng.choice(given), self.rng.choice(family)
        person = (f"{last} {first}", last) if family_first else (f"{first} {last}", last)
        self.people.append(person)
        return person

    def pick(self, slot: str, taken: set[str]) -> str:
        """One surface for an entity slot, different from the ones already used in this sentence."""
        if slot in ("PER", "LAST"):
            choices = [p for p in self.people if p[0] not in taken]
            person = self.rng.choice(choices) if choices else self._new_person()
            if slot == "LAST" and person[0] in self.named:
                taken.add(person[0])
                return person[1]
            self.named.add(person[0])
            taken.add(person[0])
            return person[0]
        pool, universe = (self.places, vocabulary.LOCATIONS) if slot == "LOC" else (self.orgs, vocabulary.ORGANISATIONS)
        choices = [x for x in pool if x not in taken]
        if choices and self.rng.random() >= 0.1:
            surface = self.rng.choice(choices)
        else:  # a newcomer, also for later sentences
            surface = self.rng.choice([x for x in universe if x not in taken])
            if surface not in pool:
                pool.append(surface)
        taken.add(surface)
        return surface


def _filler(slot: str, rng: random.Random, product: str) -> str:
    if slot == "PRODUCT":
        return product
    if slot == "ASPECT":
        return rng.choice(vocabulary.ASPECTS)
    if slot == "NUM":
        return rng.choice(vocabulary.NUM_WORDS) if rng.random() < 0.6 else str(rng.randint(2, 30))
    if slot == "BIGNUM":
        return f"{rng.randint(1, 40) * 50:,}"
    if slot == "PRICE":
        return f"{rng.choice('$€£')}{rng.randint(9, 400)}.{rng.choice(('00', '49', '95', '99'))}"
    if slot == "DAY":
        return rng.choice(vocabulary.DAYS)
    if slot == "MONTH":
        return rng.choice(vocabulary.MONTHS)
    return str(rng.randint(1998, 2023))  # YEAR


def _typo(text: str, rng: random.Random) -> str:
    """Swap two adjacent, different letters inside one word of plain text; unchanged if no word qualifies."""
    words = list(_WORD_RE.finditer(text))
    if not words:
        return text
    word = rng.choice(words)
    spots = [i for i in range(word.start(), word.end() - 1) if text[i] != text[i + 1]]
    if not spots:
        return text
    i = rng.choice(spots)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def _sentence(template: _Template, rng: random.Random, cast: _Cast, product: str,
              genre: str, sentiment: str) -> list[_Piece]:
    parts, has_entity = template
    taken: set[str] = set()
    pieces: list[_Piece] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if part:
                pieces.append((part, None))
        elif part in _ENTITY_SLOTS:
            pieces.append((cast.pick(part, taken), _ENTITY_SLOTS[part]))
        else:
            pieces.append((_filler(part, rng, product), None))
    # Merge adjacent plain pieces so noise sees whole phrases.
    merged: list[_Piece] = []
    for text, label in pieces:
        if label is None and merged and merged[-1][1] is None:
            merged[-1] = (merged[-1][0] + text, None)
        else:
            merged.append((text, label))
    # Noise touches plain text only, so entity surfaces stay exactly as inserted.
    if rng.random() < _P_TYPO:
        plain = [i for i, (_, label) in enumerate(merged) if label is None]
        if plain:
            i = rng.choice(plain)
            merged[i] = (_typo(merged[i][0], rng), None)
    if not has_entity and rng.random() < _P_CASING:
        case = str.upper if rng.random() < 0.5 else str.lower
        merged = [(case(text), None) for text, _ in merged]
    if genre == "review" and rng.random() < _P_EMOJI:
        emoji = vocabulary.POSITIVE_EMOJI if sentiment == "positive" else vocabulary.NEGATIVE_EMOJI
        merged.append((" " + rng.choice(emoji), None))
    return merged


def _separator(rng: random.Random, long_doc: bool) -> str:
    r = rng.random()
    if long_doc and r < 0.15:
        return "\n\n"
    if r < 0.90:
        return " "
    if r < 0.95:
        return "  "
    return "\n" if r < 0.975 else "\t"


def _document(doc_id: int, rng: random.Random) -> Document:
    sentiment = SENTIMENTS[rng.random() < 0.5]
    genre = "review" if rng.random() < 0.5 else "news"
    neutral, bearing = TEMPLATES[genre]
    bearing_for = bearing[sentiment]
    cast = _Cast(rng)
    product = rng.choice(vocabulary.PRODUCTS)

    # Templates mix sentiment-bearing sentences with neutral context. Each kind is drawn from a shuffled bag,
    # so a template repeats only once its bag has run dry.
    bags: dict[bool, list[_Template]] = {True: [], False: []}

    def draw(bearing_kind: bool) -> _Template:
        if not bags[bearing_kind]:
            bags[bearing_kind] = list(bearing_for if bearing_kind else neutral)
            rng.shuffle(bags[bearing_kind])
        return bags[bearing_kind].pop()

    def render(template: _Template) -> list[_Piece]:
        return _sentence(template, rng, cast, product, genre, sentiment)

    long_doc = rng.random() < _P_LONG_DOC
    sentences: list[list[_Piece]] = []
    if long_doc:
        # 600-1200 words: sentences until the target is met, counted as rendered.
        target_words = rng.randint(620, 1150)
        words, last_template = 0, None
        while words < target_words:
            last_template = draw(rng.random() < 0.55)
            sentences.append(render(last_template))
            words += len("".join(text for text, _ in sentences[-1]).split())
        if not last_template[1]:
            # Long documents keep naming entities up to the very end.
            sentences.append(render(rng.choice([t for t in neutral + bearing_for if t[1]])))
    else:
        count = max(1, min(12, round(rng.lognormvariate(0.95, 0.55))))
        kinds = [rng.random() < 0.55 for _ in range(count)]
        if not any(kinds):
            kinds[rng.randrange(count)] = True  # every document states its sentiment at least once
        sentences = [render(draw(kind)) for kind in kinds]
    if genre == "news" and rng.random() < _P_DATELINE:
        sentences[0] = [(cast.pick("LOC", set()), "LOC"), (f", {rng.choice(vocabulary.DAYS)} — ", None)] + sentences[0]

    text, entities = _assemble(sentences, rng, long_doc)
    return Document(id=doc_id, text=text, sentiment=sentiment, entities=tuple(entities))


def _assemble(sentences: list[list[_Piece]], rng: random.Random, long_doc: bool) -> tuple[str, list[tuple[int, int, str]]]:
    """The document's text, with separators between sentences, and its entities' checked spans."""
    chunks: list[str] = []
    entities: list[tuple[int, int, str]] = []
    surfaces: list[str] = []
    pos = 0
    for i, pieces in enumerate(sentences):
        if i:
            sep = _separator(rng, long_doc)
            chunks.append(sep)
            pos += len(sep)
        for text, label in pieces:
            if label is not None:
                entities.append((pos, pos + len(text), label))
                surfaces.append(text)
            chunks.append(text)
            pos += len(text)
    text = "".join(chunks)
    _check_spans(text, entities, surfaces)
    return text, entities


def _check_spans(text: str, entities: list[tuple[int, int, str]], surfaces: list[str]) -> None:
    """Raise AssertionError if the generator produced a span that does not hold; never expected to fire."""
    previous_end = 0
    for (start, end, label), surface in zip(entities, surfaces, strict=True):
        ok = (
            label in ENTITY_TYPES
            and previous_end <= start < end <= len(text)
            and text[start:end] == surface
            and surface == surface.strip()
        )
        if not ok:
            raise AssertionError(f"bad entity span {(start, end, label)} for surface {surface!r} in {text!r}")
        previous_end = end


def generate(n: int, *, seed: int, split: str = "train") -> list[Document]:
    """n documents, identical for identical arguments; a shorter n gives a prefix of a longer one."""
    if split not in _ID_BASE:
        raise ValueError(f"split must be one of {', '.join(_SPLITS)}, not {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, not {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    # Injective in (seed, split): crc32 is below 2**32 and distinct for the three splits.
    rng = random.Random(seed * 2**32 + zlib.crc32(split.encode()))
    base = _ID_BASE[split]
    return [_document(base + i, rng) for i in range(n)]


def to_table(docs: list[Document]) -> pa.Table:
    """The documents as an Arrow table: id int64, text, sentiment, entities list<struct<start, end, label>>."""
    return pa.table(
        {
            "id": pa.array([d.id for d in docs], pa.int64()),
            "text": pa.array([d.text for d in docs], pa.string()),
            "sentiment": pa.array([d.sentiment for d in docs], pa.string()),
            "entities": pa.array(
                [[{"start": s, "end": e, "label": lab} for s, e, lab in d.entities] for d in docs],
                pa.list_(_ENTITY_STRUCT),
            ),
        },
        schema=_SCHEMA,
    )


_PART_RE = re.compile(r"part-\d{5}\.parquet")


def write_corpus(folder: str | pathlib.Path, docs: list[Document], *, rows_per_file: int = 1000) -> list[pathlib.Path]:
    """Write docs as part-00000.parquet, part-00001.parquet, ... in folder (created if missing).

    Part files left in the folder by an earlier, larger write are removed so the folder holds exactly these
    documents. No documents still writes one empty part file, so the folder carries the schema."""
    if isinstance(rows_per_file, bool) or not isinstance(rows_per_file, int) or rows_per_file < 1:
        raise ValueError(f"rows_per_file must be a positive integer, not {rows_per_file!r}")
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = to_table(docs)
    paths = []
    for number, offset in enumerate(range(0, max(len(docs), 1), rows_per_file)):
        path = folder / f"part-{number:05d}.parquet"
        pq.write_table(table.slice(offset, rows_per_file), path)
        paths.append(path)
    written = {p.name for p in paths}
    for stale in folder.iterdir():
        if _PART_RE.fullmatch(stale.name) and stale.name not in written and stale.is_file():
            stale.unlink()
    return paths
