"""Synthetic long-context QA rows in the fusang_long schema, for the offline demo and tests.

Each row hides one fact ("The access code of the amber vault is 4821.") at a random depth
of a filler passage, with a few distractor facts about other entities, and asks about it
at the end of the prompt. A model restricted to a sliding window can only answer once it
has learnt to carry the fact across the window, which is what SWAA fine-tuning teaches.

Rows carry the fusang_long fields (question, answer, prompt, response, judge) plus `depth`,
the fraction of the passage's words that come before the fact. The entity pool is split
so that `split="train"` and `split="eval"` never ask about the same entity; a split's
rows depend only on (split, seed). Facts are `Fact` records so that a later generator
can chain them (two-hop questions) with the same passage builder.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "eval")
# Every EVAL_EVERY-th entity of the pool belongs to the eval split, the rest to train.
EVAL_EVERY = 5

ENTITY_ADJECTIVES = (
    "amber",
    "silver",
    "crimson",
    "hollow",
    "northern",
    "quiet",
    "iron",
    "velvet",
    "golden",
    "frozen",
    "ancient",
    "hidden",
    "copper",
    "misty",
    "scarlet",
    "granite",
    "ivory",
    "sunken",
    "painted",
    "lonely",
    "marble",
    "emerald",
    "forgotten",
    "windswept",
    "eastern",
    "western",
    "southern",
    "royal",
    "broken",
    "twin",
)
ENTITY_NOUNS = (
    "vault",
    "harbor",
    "library",
    "tower",
    "garden",
    "bridge",
    "observatory",
    "mill",
    "chapel",
    "archive",
    "lighthouse",
    "orchard",
    "station",
    "market",
    "fortress",
    "theater",
    "monastery",
    "quarry",
    "academy",
    "citadel",
    "greenhouse",
    "foundry",
    "brewery",
    "museum",
    "embassy",
    "granary",
    "infirmary",
    "pavilion",
    "sanctuary",
    "shipyard",
    "tannery",
    "aqueduct",
    "bazaar",
)
FIRST_NAMES = (
    "Mira",
    "Tomas",
    "Ines",
    "Kofi",
    "Lena",
    "Arjun",
    "Sofia",
    "Emil",
    "Yara",
    "Dmitri",
    "Noor",
    "Hugo",
    "Aiko",
    "Bruno",
    "Chiara",
    "Daniel",
    "Esther",
    "Farid",
    "Greta",
    "Hamid",
    "Ingrid",
    "Jonas",
    "Keira",
    "Luca",
    "Marta",
    "Nikolai",
    "Olga",
    "Pablo",
    "Rosa",
    "Samir",
    "Talia",
    "Viktor",
)
LAST_NAMES = (
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Castillo",
    "Novak",
    "Haddad",
    "Brennan",
    "Ivanova",
    "Sato",
    "Abernathy",
    "Bergstrom",
    "Delacroix",
    "Esposito",
    "Fitzgerald",
    "Gallagher",
    "Horvath",
    "Kowalski",
    "Laurent",
    "Mendoza",
    "Nakamura",
    "Oyelaran",
    "Petrov",
    "Quintero",
    "Rasmussen",
    "Schneider",
)

# Filler vocabulary: no digits and no "of the X is" shapes, so only the planted facts
# contain answers.
FILLER_PEOPLE = (
    "traveler",
    "merchant",
    "sailor",
    "clerk",
    "gardener",
    "painter",
    "shepherd",
    "baker",
    "scholar",
    "stranger",
    "captain",
    "weaver",
    "child",
    "musician",
    "farmer",
    "fisherman",
    "carpenter",
    "soldier",
    "priest",
    "widow",
    "poet",
    "blacksmith",
    "miller",
    "nurse",
    "tailor",
    "hunter",
    "pilgrim",
    "potter",
    "messenger",
    "innkeeper",
    "beekeeper",
    "librarian",
    "jeweler",
    "mason",
    "cobbler",
    "ferryman",
    "gravedigger",
    "herbalist",
    "juggler",
    "lamplighter",
    "mapmaker",
    "organist",
    "peddler",
    "ranger",
    "sculptor",
    "shopkeeper",
    "stonecutter",
    "watchman",
    "woodcutter",
    "apprentice",
    "botanist",
    "chemist",
    "courier",
    "dancer",
    "engineer",
    "glassblower",
)
FILLER_PERSON_ADJECTIVES = (
    "old",
    "young",
    "tall",
    "tired",
    "cheerful",
    "careful",
    "curious",
    "patient",
    "nervous",
    "gentle",
    "stubborn",
    "clever",
    "ragged",
    "wealthy",
    "humble",
    "silent",
    "restless",
    "brave",
    "anxious",
    "weary",
    "sleepy",
    "grumpy",
    "polite",
    "generous",
    "secretive",
    "talkative",
    "thoughtful",
    "cautious",
    "elderly",
    "barefoot",
    "hungry",
    "lonely",
    "proud",
    "shy",
    "diligent",
    "absentminded",
    "sunburnt",
    "limping",
    "bewildered",
    "charming",
    "dignified",
    "exhausted",
    "flamboyant",
    "gloomy",
    "hopeful",
    "impatient",
    "jovial",
    "knowledgeable",
    "melancholy",
    "nimble",
    "optimistic",
    "perplexed",
    "quarrelsome",
    "reluctant",
)
FILLER_THINGS = (
    "street",
    "cart",
    "hill",
    "basket",
    "river",
    "square",
    "fence",
    "lantern",
    "fog",
    "field",
    "well",
    "map",
    "inn",
    "meadow",
    "road",
    "barn",
    "boat",
    "window",
    "door",
    "roof",
    "wall",
    "cellar",
    "staircase",
    "letter",
    "book",
    "coat",
    "hat",
    "bottle",
    "chair",
    "table",
    "clock",
    "candle",
    "mirror",
    "blanket",
    "rope",
    "ladder",
    "wagon",
    "horse",
    "goat",
    "dog",
    "cat",
    "bird",
    "tree",
    "stone",
    "path",
    "forest",
    "valley",
    "lake",
    "pond",
    "cliff",
    "shore",
    "wheel",
    "hammer",
    "kettle",
    "bucket",
    "drum",
    "flute",
    "net",
    "sack",
    "bench",
    "chimney",
    "fountain",
    "carriage",
    "umbrella",
    "violin",
    "compass",
    "telescope",
    "saddle",
    "anchor",
    "barrel",
    "bridle",
    "cabinet",
    "curtain",
    "envelope",
    "feather",
    "garment",
    "helmet",
    "journal",
    "kitchen",
    "spindle",
    "necklace",
    "notebook",
    "painting",
    "pillow",
    "pocketwatch",
    "quilt",
    "ribbon",
    "scarf",
    "shovel",
    "sketchbook",
    "spoon",
    "suitcase",
    "teapot",
    "thimble",
    "trumpet",
    "tunnel",
    "vineyard",
    "wardrobe",
    "workshop",
    "courtyard",
    "alleyway",
    "balcony",
    "orchestra",
    "cathedral",
    "canal",
    "pier",
    "windmill",
    "scaffold",
    "greenhouse",
    "attic",
    "harpsichord",
    "lighthouse keeper's log",
    "birdcage",
    "cauldron",
    "chandelier",
    "doorknob",
    "drawbridge",
    "fishing rod",
    "gramophone",
    "hourglass",
    "inkwell",
    "jigsaw puzzle",
    "kayak",
    "locket",
    "mandolin",
    "nutcracker",
    "oil lamp",
    "parasol",
    "quiver",
    "rowboat",
    "satchel",
    "tapestry",
    "typewriter",
    "waterwheel",
    "weathervane",
    "wheelbarrow",
    "xylophone",
    "yarn",
    "zither",
    "sundial",
    "beehive",
    "bonfire",
    "cobblestone",
    "haystack",
    "pinecone",
    "seashell",
    "snowdrift",
    "toadstool",
    "waterfall",
    "wildflower",
)
FILLER_THING_ADJECTIVES = (
    "narrow",
    "wooden",
    "distant",
    "empty",
    "broken",
    "faded",
    "crowded",
    "winding",
    "heavy",
    "bright",
    "dusty",
    "muddy",
    "rusty",
    "fragile",
    "enormous",
    "tiny",
    "crooked",
    "polished",
    "damp",
    "warm",
    "green",
    "yellow",
    "pale",
    "dark",
    "smooth",
    "rough",
    "sturdy",
    "strange",
    "familiar",
    "forgotten",
    "glittering",
    "crumbling",
    "freshly painted",
    "abandoned",
    "overgrown",
    "creaking",
    "frosty",
    "sunlit",
    "moonlit",
    "shabby",
    "elegant",
    "peculiar",
    "magnificent",
    "weathered",
    "splintered",
    "tangled",
    "velvety",
    "shimmering",
    "lopsided",
    "cramped",
    "spacious",
    "fragrant",
    "smoky",
    "slippery",
)
FILLER_VERBS = (
    "walked past",
    "remembered",
    "painted",
    "carried",
    "described",
    "watched",
    "repaired",
    "visited",
    "admired",
    "ignored",
    "followed",
    "sketched",
    "praised",
    "avoided",
    "measured",
    "cleaned",
    "borrowed",
    "returned",
    "polished",
    "examined",
    "counted",
    "hid",
    "found",
    "lost",
    "sold",
    "bought",
    "dropped",
    "lifted",
    "opened",
    "closed",
    "pushed",
    "pulled",
    "noticed",
    "studied",
    "guarded",
    "chased",
    "decorated",
    "crossed",
    "climbed",
    "inspected",
    "photographed",
    "abandoned",
    "rearranged",
    "sharpened",
    "unlocked",
    "wrapped",
    "painted over",
    "carved",
    "dusted",
    "mended",
    "buried",
    "traded",
    "inherited",
    "delivered",
    "questioned",
    "complained about",
    "laughed at",
    "wondered about",
    "searched",
    "emptied",
    "filled",
    "tied up",
    "untangled",
    "weighed",
    "admonished",
    "bartered for",
    "catalogued",
    "disassembled",
    "embroidered",
    "fumigated",
    "gathered",
    "hoisted",
    "illuminated",
    "juggled",
    "kneaded",
    "levitated",
    "navigated",
    "overlooked",
    "pondered",
    "quarantined",
    "rescued",
    "scrubbed",
    "tinkered with",
    "unearthed",
    "varnished",
    "whittled",
    "yanked",
)
FILLER_TAILS = (
    "before the rain began",
    "while the bells were ringing",
    "without saying a word",
    "as the sun went down",
    "on a cold morning",
    "after a long day",
    "with great care",
    "for no clear reason",
    "in the early evening",
    "while the wind rose",
    "under a grey sky",
    "as the crowd gathered",
    "during the harvest festival",
    "long after midnight",
    "when nobody was looking",
    "despite the warnings",
    "just before dawn",
    "as the snow kept falling",
    "while humming an old song",
    "with trembling hands",
    "in the middle of the afternoon",
    "while the children played nearby",
    "as thunder rolled in the distance",
    "without asking for permission",
    "to the surprise of everyone",
    "before the market opened",
    "while the kettle was boiling",
    "in complete silence",
    "as the lamps were being lit",
    "after the storm had passed",
    "amid the clatter of hooves",
    "beneath the flickering streetlamps",
    "throughout the drizzly afternoon",
    "following an unexpected quarrel",
    "accompanied by a barking puppy",
    "ignoring the grumbling neighbours",
    "humming a forgotten lullaby",
    "clutching a steaming mug",
    "whistling through chipped teeth",
)

PROMPT_HEADER = "Read the following text and answer the question at the end."


@dataclass(frozen=True)
class Fact:
    """One (entity, attribute, value) statement a question can be asked about."""

    entity: str  # e.g. "amber vault"
    attribute: str  # e.g. "access code"
    value: str  # e.g. "4821"

    def sentence(self, value: str | None = None) -> str:
        return f"The {self.attribute} of the {self.entity} is {self.value if value is None else value}."

    def question(self) -> str:
        return f"{QUESTION_WORDS.get(self.attribute, 'What')} is the {self.attribute} of the {self.entity}?"


def _access_code(rng: random.Random) -> str:
    return str(rng.randint(1000, 9999))


def _founding_year(rng: random.Random) -> str:
    return str(rng.randint(1500, 1999))


def _keeper(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


ATTRIBUTES = {"access code": _access_code, "founding year": _founding_year, "keeper": _keeper}
QUESTION_WORDS = {"keeper": "Who"}


def split_entities(split: str) -> list[str]:
    """The entities a split may ask about; the splits' pools are disjoint."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pool = [f"{adjective} {noun}" for adjective, noun in product(ENTITY_ADJECTIVES, ENTITY_NOUNS)]
    return [entity for i, entity in enumerate(pool) if (i % EVAL_EVERY == 0) == (split == "eval")]


def random_facts(rng: random.Random, entities: list[str], count: int) -> list[Fact]:
    """`count` facts about distinct entities, each with a random attribute and value."""
    facts = []
    for entity in rng.sample(entities, count):
        attribute = rng.choice(sorted(ATTRIBUTES))
        facts.append(Fact(entity, attribute, ATTRIBUTES[attribute](rng)))
    return facts


def _person(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"the {rng.choice(FILLER_PEOPLE)}"
    return f"a {rng.choice(FILLER_PERSON_ADJECTIVES)} {rng.choice(FILLER_PEOPLE)}"


def _thing(rng: random.Random) -> str:
    return f"the {rng.choice(FILLER_THING_ADJECTIVES)} {rng.choice(FILLER_THINGS)}"


def filler_sentence(rng: random.Random) -> str:
    """One sentence of filler, in one of three shapes so the passage is not one pattern."""
    shape = rng.randrange(3)
    if shape == 0:
        text = f"{_person(rng)} {rng.choice(FILLER_VERBS)} {_thing(rng)} {rng.choice(FILLER_TAILS)}."
    elif shape == 1:
        first = f"{_person(rng)} {rng.choice(FILLER_VERBS)} {_thing(rng)}"
        text = f"{first}, and {_person(rng)} {rng.choice(FILLER_VERBS)} {_thing(rng)}."
    else:
        text = f"near {_thing(rng)}, {_person(rng)} {rng.choice(FILLER_VERBS)} {_thing(rng)}."
    return text[0].upper() + text[1:]


def build_passage(
    rng: random.Random, target_words: int, planted: list[tuple[str, float]]
) -> tuple[list[str], list[int]]:
    """Filler sentences of about `target_words` words with each (sentence, depth) planted.

    Returns the sentences and, for each planted sentence, its index in them. A sentence is
    planted at the sentence boundary nearest to `depth` (fraction of the filler words).
    """
    filler, words = [], 0
    while words < target_words - sum(len(s.split()) for s, _ in planted):
        filler.append(filler_sentence(rng))
        words += len(filler[-1].split())
    boundaries = [0]
    for sentence in filler:
        boundaries.append(boundaries[-1] + len(sentence.split()))
    slots = [min(range(len(boundaries)), key=lambda k: abs(boundaries[k] - depth * words)) for _, depth in planted]
    # Insert from the back so the slots computed on the filler stay valid.
    sentences = list(filler)
    for (sentence, _), slot in sorted(zip(planted, slots), key=lambda p: p[1], reverse=True):
        sentences.insert(slot, sentence)
    positions = [sentences.index(sentence) for sentence, _ in planted]
    return sentences, positions


def render_prompt(sentences: list[str], question: str, sentences_per_paragraph: int = 6) -> str:
    paragraphs = [
        " ".join(sentences[i : i + sentences_per_paragraph]) for i in range(0, len(sentences), sentences_per_paragraph)
    ]
    return f"{PROMPT_HEADER}\n\n" + "\n\n".join(paragraphs) + f"\n\nQuestion: {question}"


def words_before(sentences: list[str], index: int) -> int:
    return sum(len(s.split()) for s in sentences[:index])


def make_longqa_row(
    rng: random.Random,
    entities: list[str],
    *,
    num_words: int,
    min_depth: float,
    max_depth: float,
    num_distractors: int,
    wrong: bool,
) -> dict:
    """One single-hop row: the target fact at a depth in [min_depth, max_depth]."""
    target, *distractors = random_facts(rng, entities, 1 + num_distractors)
    planted = [(target.sentence(), rng.uniform(min_depth, max_depth))]
    planted += [(fact.sentence(), rng.random()) for fact in distractors]
    sentences, positions = build_passage(rng, num_words, planted)
    response_value = target.value
    while wrong and response_value == target.value:  # a judge-0 row answers with another value
        response_value = ATTRIBUTES[target.attribute](rng)
    return {
        "question": target.question(),
        "answer": target.value,
        "prompt": render_prompt(sentences, target.question()),
        "response": target.sentence(response_value),
        "judge": 0 if wrong else 1,
        "depth": words_before(sentences, positions[0]) / sum(len(s.split()) for s in sentences),
    }


def make_longqa_rows(
    num_rows: int,
    *,
    seed: int = 0,
    split: str = "train",
    min_words: int = 300,
    max_words: int = 600,
    min_depth: float = 0.0,
    max_depth: float = 0.5,
    num_distractors: int = 2,
    wrong_fraction: float = 0.1,
) -> list[dict]:
    """`num_rows` single-hop long-context QA rows in the fusang_long schema (plus `depth`).

    Prompts are `min_words`..`max_words` words of passage; the fact sits at about a depth in
    [min_depth, max_depth] of it (distractors planted before it shift it by a few words), so
    with max_depth 0.5 about half the passage and the question lie between the fact and the
    answer. About `wrong_fraction` of the rows get a
    wrong response and judge 0. Deterministic in (split, seed); the splits share no entity.
    """
    if not 0 < min_words <= max_words:
        raise ValueError(f"need 0 < min_words <= max_words, got {min_words}, {max_words}")
    if not 0.0 <= min_depth <= max_depth <= 1.0:
        raise ValueError(f"need 0 <= min_depth <= max_depth <= 1, got {min_depth}, {max_depth}")
    if not 0.0 <= wrong_fraction <= 1.0:
        raise ValueError(f"wrong_fraction must be in [0, 1], got {wrong_fraction}")
    entities = split_entities(split)
    # A string seed is hashed with SHA-512 by `random`, so it is stable across runs and platforms.
    rng = random.Random(f"swaa-longqa/{split}/{seed}")
    return [
        make_longqa_row(
            rng,
            entities,
            num_words=rng.randint(min_words, max_words),
            min_depth=min_depth,
            max_depth=max_depth,
            num_distractors=num_distractors,
            wrong=rng.random() < wrong_fraction,
        )
        for _ in range(num_rows)
    ]


def write_parquet(path: str | Path, rows: list[dict]) -> Path:
    """Write rows (dicts with the same keys) as one parquet file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
