"""A seeded, offline generator of a varied demo corpus (reviews and news with sentiment labels and exact
PER/LOC/ORG character spans) for training, evaluating and exercising the batch pipeline."""

from __future__ import annotations

import pathlib
import random
import re
import zlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

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


# --- Vocabulary -------------------------------------------------------------------------------------------
# Person names are drawn per naming tradition so that combinations look plausible; family_first marks
# traditions where the family name is written first (the short form is then the family name).
# (given names, family names, family_first)
_NAME_POOLS: tuple[tuple[tuple[str, ...], tuple[str, ...], bool], ...] = (
    (("Emily", "James", "Olivia", "Michael", "Hannah", "Daniel"),
     ("Carter", "Thompson", "Reynolds", "Whitaker", "Hughes", "Bennett"), False),
    (("Björn", "Ingrid", "Sigrid", "Lars", "Freya", "Anders"),
     ("Ågren", "Lindqvist", "Håkansson", "Sørensen", "Nyström", "Eriksson"), False),
    (("Aoife", "Niamh", "Siobhán", "Róisín"), ("Ní Bhriain", "Ní Dhomhnaill", "Kavanagh", "Byrne"), False),
    (("Cillian", "Pádraig", "Oisín"), ("Ó Súilleabháin", "Mac Cárthaigh", "Kavanagh", "Byrne"), False),
    (("José", "Lucía", "Mateo", "Camila", "João", "Inês"),
     ("Álvarez", "García", "Fernández", "Oliveira", "Santos", "Muñoz"), False),
    (("Oluwaseun", "Chiamaka", "Adebayo", "Ngozi", "Tunde"), ("Adeyemi", "Okafor", "Balogun", "Eze", "Nwosu"), False),
    (("Wei", "Xiaoling", "Jun", "Mei", "Hao"), ("Zhang", "Wang", "Chen", "Liu", "Zhao"), True),
    (("Min-jun", "Ji-woo", "Seo-yeon", "Hyun-woo"), ("Kim", "Park", "Lee", "Choi"), True),
    (("Haruto", "Yui", "Sakura", "Kenji"), ("Tanaka", "Suzuki", "Watanabe", "Nakamura"), False),
    (("Jürgen", "Anneliese", "Lukas", "Greta"), ("Müller", "Schäfer", "Weiß", "Köhler"), False),
    (("Élodie", "François", "Chloé", "Thibault"), ("Lefèvre", "Dubois", "Moreau", "Girard"), False),
    (("Priya", "Arjun", "Ananya", "Rohan"), ("Sharma", "Iyer", "Chatterjee", "Patel"), False),
    (("Małgorzata", "Piotr", "Zofia", "Krzysztof"), ("Nowak", "Wójcik", "Kaczmarek", "Mazur"), False),
    (("Layla", "Omar", "Yasmin", "Karim"), ("Haddad", "Mansour", "El-Sayed", "Khalil"), False),
)

_LOCATIONS = (
    "São Paulo", "New York", "Buenos Aires", "Los Angeles", "Hong Kong", "Cape Town", "Kuala Lumpur",
    "Rio de Janeiro", "New Delhi", "Mexico City", "Abu Dhabi", "London", "Paris", "Berlin", "Tokyo", "Lagos",
    "Nairobi", "Reykjavík", "Kraków", "Zürich", "Malmö", "Dublin", "Galway", "Lisbon", "Madrid", "Seoul",
    "Osaka", "Shanghai", "Mumbai", "Bengaluru", "Toronto", "Montréal", "Sydney", "Auckland", "Cairo", "Accra",
    "Lima", "Bogotá", "Istanbul", "Helsinki", "Oslo", "Vienna", "Prague", "Brazil", "Germany", "Nigeria",
    "Japan", "Ireland", "Iceland", "Kenya", "Canada", "Portugal", "New Zealand", "South Korea", "South Africa",
    "Sri Lanka", "Costa Rica", "Côte d'Ivoire",
)

_ORGANISATIONS = (
    "Northwind Traders", "Acme Corp", "Contoso Pharmaceuticals", "Globex Corporation", "Initech",
    "Fabrikam Industries", "Wide World Importers", "Tailspin Toys", "Adventure Works", "Litware Systems",
    "Blue Yonder Airlines", "Margie's Travel", "Proseware", "Coho Winery", "Alpine Ski House",
    "Lucerne Publishing", "Trey Research", "Woodgrove Bank", "Fourth Coffee", "Humongous Insurance",
    "Helios Analytics", "Greenfield Foods", "Kestrel Aerospace", "Meridian Health", "Polaris Telecom",
    "Orion Logistics", "Bluewater Shipping", "Red Maple Bank", "Silverline Rail", "Quantum Leaf Labs",
    "Harbor & Finch", "Vantage Motors", "Cobalt Mobile", "Evergreen Mutual", "Ironbridge Capital",
    "Brightwave Electronics", "Nordvik Energi", "Banco Estrela",
)

_FIRST_NAMES = tuple(dict.fromkeys(n for given, _, _ in _NAME_POOLS for n in given))
_LAST_NAMES = tuple(dict.fromkeys(n for _, family, _ in _NAME_POOLS for n in family))

_PRODUCTS = (
    "headphones", "blender", "backpack", "coffee maker", "e-reader", "running shoes", "vacuum cleaner",
    "desk lamp", "phone case", "smartwatch", "air fryer", "tent", "electric kettle", "keyboard", "office chair",
    "water bottle", "power bank", "rice cooker", "bluetooth speaker", "winter jacket",
)
_ASPECTS = (
    "battery life", "sound quality", "build quality", "customer service", "delivery", "packaging", "design",
    "setup", "fit", "finish", "display", "warranty support",
)
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_NUM_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve")

# --- Sentence templates -----------------------------------------------------------------------------------
# {PER} {LAST} {LOC} {ORG} are entity slots; {PRODUCT} {ASPECT} {NUM} {BIGNUM} {PRICE} {DAY} {MONTH} {YEAR}
# are plain filler. Every template starts with a capital letter or an entity.

_REVIEW_NEUTRAL = (
    "I bought this {PRODUCT} from {ORG} last {MONTH}.",
    "Ordered the {PRODUCT} as a gift for my sister in {LOC}.",
    "It shipped from the {ORG} warehouse in {LOC} and arrived after {NUM} days.",
    "My colleague {PER} recommended it to me.",
    "{PER} from the {ORG} support team answered my first email.",
    "I have been using it daily for {NUM} weeks now.",
    "For context, I live in {LOC} and use it mostly at home.",
    "Paid {PRICE} for it during a sale.",
    "This is my second {PRODUCT} from {ORG}.",
    "I compared it with a similar model before buying.",
    "We use it mostly on weekends.",
    "The box included a manual in {NUM} languages.",
    "My partner {PER} uses it more than I do.",
    "It is the {YEAR} model, bought through the {ORG} online shop.",
)

_REVIEW_POSITIVE = (
    "Absolutely love this {PRODUCT}!",
    "The {ASPECT} is excellent, far better than I expected.",
    "Honestly the best purchase I have made this year.",
    "Works perfectly right out of the box.",
    "Great value for the money.",
    "Highly recommend it to anyone looking for a reliable {PRODUCT}.",
    "The {ASPECT} is superb and it feels really well made.",
    "{ORG} did a fantastic job with this one.",
    "Setup took two minutes and it has worked flawlessly since.",
    "I am delighted with it and would buy it again without hesitation.",
    "Five stars, no complaints at all.",
    "It exceeded my expectations in every way.",
    "Customer service at {ORG} was friendly and incredibly helpful.",
    "{PER} at the store in {LOC} was wonderful and helped me pick the right one.",
    "Sturdy, elegant and a joy to use.",
    "My whole family is thrilled with it.",
    "The {ASPECT} is outstanding for this price.",
    "Arrived early in {LOC}, beautifully packaged and in perfect condition.",
    "Impressive quality, it still looks brand new after months of use.",
    "Quiet, fast and very easy to clean.",
    "A brilliant little {PRODUCT} that does exactly what it promises.",
    "I had doubts at first, but it won me over completely.",
    "Easily the most comfortable {PRODUCT} I have owned.",
    "Fantastic {ASPECT}, I am genuinely happy with this.",
    "Worth every penny.",
    "Would happily recommend {ORG} to friends in {LOC}.",
    "Everything about it feels thoughtful and polished.",
    "It makes my mornings so much better.",
)

_REVIEW_NEGATIVE = (
    "Terrible {PRODUCT}, it broke after {NUM} days.",
    "The {ASPECT} is awful and nothing like the description.",
    "Complete waste of money.",
    "It stopped working within a week.",
    "Very disappointed with this purchase.",
    "I would not recommend it to anyone.",
    "The {ASPECT} is poor and it feels cheap and flimsy.",
    "{ORG} should be embarrassed to sell this.",
    "Customer service at {ORG} was rude and completely unhelpful.",
    "Arrived in {LOC} damaged, with a cracked casing and missing parts.",
    "One star, and only because zero is not an option.",
    "It overheats constantly and smells of burnt plastic.",
    "Returning it immediately.",
    "{PER} from {ORG} promised a refund that never came.",
    "Noisy, slow and a nightmare to clean.",
    "The worst {PRODUCT} I have ever owned.",
    "Frustrating to set up and the instructions are useless.",
    "After {NUM} weeks it is already falling apart.",
    "Save yourself the trouble and buy something else.",
    "Horrible experience from start to finish.",
    "It looks nothing like the photos and feels badly made.",
    "Overpriced junk that fails at the one thing it should do.",
    "I regret buying it and I am still waiting for {ORG} to respond.",
    "The {ASPECT} is a joke, unacceptable at this price.",
    "Two replacements from {ORG}, both defective.",
    "My order to {LOC} was delayed for weeks and then arrived broken.",
    "Uncomfortable, unreliable and badly designed.",
)

_NEWS_NEUTRAL = (
    "{ORG} is headquartered in {LOC}.",
    "The announcement was made at a press conference in {LOC} on {DAY}.",
    "{PER}, who has led {ORG} since {YEAR}, spoke to reporters after the meeting.",
    "The company employs about {BIGNUM} people across {NUM} countries.",
    "According to a statement, the plans were approved by the board on {DAY}.",
    "{PER} of {ORG} declined to give further details.",
    "Analysts in {LOC} had been following the story closely.",
    "The report was published on {DAY} by researchers at {ORG}.",
    "{LAST} said the figures would be reviewed again next quarter.",
    "Officials in {LOC} are expected to comment later this week.",
    "The deal was first reported by local media in {LOC}.",
    "A spokesperson for {ORG} confirmed the timeline on {DAY}.",
    "The next review is scheduled for {MONTH}.",
    "{PER}, an economist based in {LOC}, said more data would be needed.",
)

_NEWS_POSITIVE = (
    "{ORG} reported record profits for the quarter, beating expectations.",
    "The new clinic in {LOC} has been widely praised by patients and staff.",
    "{PER} welcomed the breakthrough as a major success for the region.",
    "Residents of {LOC} celebrated the reopening of the historic bridge.",
    "The partnership between {ORG} and {ORG} is expected to create {BIGNUM} new jobs.",
    "Investors cheered the news, sending shares sharply higher.",
    "The festival drew huge crowds and glowing reviews.",
    "{PER} was honoured with an award for outstanding community work.",
    "Unemployment in {LOC} fell to its lowest level in a decade.",
    "The team's remarkable victory delighted fans across {LOC}.",
    "Researchers at {ORG} announced a promising advance in battery technology.",
    "The rescue operation was a complete success, and everyone was brought home safely.",
    "Critics hailed the exhibition as brilliant and inspiring.",
    "{ORG} received warm praise for its generous donation to local schools.",
    "The upgrade to the rail network in {LOC} was finished ahead of schedule and under budget.",
    "Tourism in {LOC} is booming, with hotels reporting excellent bookings.",
    "{PER} described the agreement as a historic win for workers.",
    "Local businesses are thriving since the new market opened.",
    "The charity run raised a record amount for the children's hospital.",
    "Air quality in {LOC} has improved dramatically, a study found.",
    "{ORG} was named the best place to work in {LOC} for the third year running.",
    "The launch went smoothly and customers responded with enthusiasm.",
    "Volunteers were thanked for their wonderful, tireless efforts.",
    "{PER} said the team was proud and grateful for the strong support.",
    "The mayor of {LOC} praised the project as a model of success.",
    "Exports rose strongly, and {ORG} raised its forecast for the year.",
    "{LAST} called it the best result in the history of the company.",
)

_NEWS_NEGATIVE = (
    "{ORG} announced {BIGNUM} layoffs amid falling sales.",
    "The scandal has badly damaged public trust in {ORG}.",
    "{PER} sharply criticised the decision as reckless and unfair.",
    "Flooding in {LOC} destroyed homes and left thousands without power.",
    "Shares of {ORG} plunged after the disappointing results.",
    "The project in {LOC} is years behind schedule and massively over budget.",
    "Residents of {LOC} expressed anger over the worsening pollution.",
    "The company faces a lawsuit over its failure to protect customer data.",
    "{PER} resigned after a damning report revealed serious mismanagement.",
    "Hospitals in {LOC} warned of dangerous staff shortages.",
    "The collapse of the talks was a bitter blow for workers at {ORG}.",
    "Critics slammed the exhibition as dull and confused.",
    "A recall of faulty heaters by {ORG} followed several reported fires.",
    "Commuters in {LOC} endured another week of chaotic delays and cancellations.",
    "The regulator fined {ORG} for misleading advertising.",
    "Crime in {LOC} rose sharply for the second year in a row.",
    "{PER} called the outcome a disaster for small businesses.",
    "The team suffered a humiliating defeat in front of a furious crowd in {LOC}.",
    "Investors fear the losses at {ORG} will deepen next year.",
    "The outage left customers stranded and frustrated for hours.",
    "Protesters in {LOC} condemned the cuts as cruel and short-sighted.",
    "The failed merger of {ORG} and {ORG} cost shareholders dearly.",
    "Drought has ruined harvests across {LOC}, pushing food prices higher.",
    "{LAST} admitted the rollout had been a serious mistake.",
    "Inspectors found unsafe conditions at the {ORG} factory in {LOC}.",
    "Consumer confidence slumped to its weakest level in years.",
)

_ENTITY_SLOTS = {"PER": "PER", "LAST": "PER", "LOC": "LOC", "ORG": "ORG"}
_SLOT_RE = re.compile(r"\{([A-Z]+)\}")
_WORD_RE = re.compile(r"[^\W\d_]{4,}")
_POSITIVE_EMOJI = ("😀", "👍", "✨")
_NEGATIVE_EMOJI = ("😡", "🙄")

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
_TEMPLATES: dict[str, tuple[tuple[_Template, ...], dict[str, tuple[_Template, ...]]]] = {
    "review": (_compile(_REVIEW_NEUTRAL),
               {"positive": _compile(_REVIEW_POSITIVE), "negative": _compile(_REVIEW_NEGATIVE)}),
    "news": (_compile(_NEWS_NEUTRAL),
             {"positive": _compile(_NEWS_POSITIVE), "negative": _compile(_NEWS_NEGATIVE)}),
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
        self.places.extend(rng.sample(_LOCATIONS, rng.randint(1, 3)))
        self.orgs.extend(rng.sample(_ORGANISATIONS, rng.randint(1, 3)))

    def _new_person(self) -> tuple[str, str]:
        given, family, family_first = self.rng.choice(_NAME_POOLS)
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
        pool, universe = (self.places, _LOCATIONS) if slot == "LOC" else (self.orgs, _ORGANISATIONS)
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
        return rng.choice(_ASPECTS)
    if slot == "NUM":
        return rng.choice(_NUM_WORDS) if rng.random() < 0.6 else str(rng.randint(2, 30))
    if slot == "BIGNUM":
        return f"{rng.randint(1, 40) * 50:,}"
    if slot == "PRICE":
        return f"{rng.choice('$€£')}{rng.randint(9, 400)}.{rng.choice(('00', '49', '95', '99'))}"
    if slot == "DAY":
        return rng.choice(_DAYS)
    if slot == "MONTH":
        return rng.choice(_MONTHS)
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
        emoji = _POSITIVE_EMOJI if sentiment == "positive" else _NEGATIVE_EMOJI
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
    neutral, bearing = _TEMPLATES[genre]
    bearing_for = bearing[sentiment]
    cast = _Cast(rng)
    product = rng.choice(_PRODUCTS)

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
        sentences[0] = [(cast.pick("LOC", set()), "LOC"), (f", {rng.choice(_DAYS)} — ", None)] + sentences[0]

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
    return Document(id=doc_id, text=text, sentiment=sentiment, entities=tuple(entities))


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
