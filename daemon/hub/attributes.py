"""The structured path's population: built-in attribute lists and seeded sampling from targets.

A run's :class:`AttributeTargets` says which population it aims at; a list
left empty there falls back to the built-in lists below. They are
*illustrative defaults*, chosen to spread personas over many trades, places
and interests, not census data: every entry has weight 1 (regions too, so
a small country is as likely as a large one). A run that wants a real
population states its own weights.

Sampling is a pure function of the targets and a ``random.Random``: the
architect seeds one per slot, so a slot's attributes never depend on the
order slots are made in.
"""

from __future__ import annotations

import random
from typing import Final

from protocol.hub_persona import BIG_FIVE, Attributes, AttributeTargets, BigFive, Weighted

__all__ = [
    "INTERESTS",
    "OCCUPATIONS",
    "REGIONS",
    "TRAIT_MEAN",
    "TRAIT_SD",
    "pick",
    "resolved",
    "sample",
]

#: Illustrative occupations (not weighted by any labour statistics).
OCCUPATIONS: Final = (
    "nurse", "primary school teacher", "software developer", "electrician", "farmer", "accountant",
    "truck driver", "chef", "pharmacist", "civil engineer", "police officer", "librarian", "plumber",
    "graphic designer", "dentist", "social worker", "carpenter", "journalist", "lawyer", "bus driver",
    "architect", "veterinarian", "hairdresser", "retail cashier", "mechanic", "physiotherapist",
    "data analyst", "firefighter", "fisher", "translator", "university lecturer", "midwife",
    "photographer", "warehouse worker", "baker", "paramedic", "real estate agent", "musician", "tailor",
    "pilot", "marketing manager", "construction worker", "cleaner", "biologist", "web designer",
    "tour guide", "small shop owner", "surgeon", "street food vendor", "bank teller",
    "call centre agent", "research chemist", "museum curator", "gardener", "security guard",
    "childcare worker", "taxi driver", "welder", "psychologist", "retired teacher", "student",
    "homemaker",
)  # fmt: skip

#: Illustrative regions on every inhabited continent (each weight 1, not by population).
REGIONS: Final = (
    # Africa
    "Lagos, Nigeria", "Nairobi, Kenya", "Cairo, Egypt", "Accra, Ghana", "Johannesburg, South Africa",
    "Casablanca, Morocco", "Addis Ababa, Ethiopia", "Dakar, Senegal", "Kampala, Uganda",
    "Lusaka, Zambia",
    # Asia
    "Mumbai, India", "Bangalore, India", "Shanghai, China", "Chengdu, China", "Tokyo, Japan",
    "Osaka, Japan", "Seoul, South Korea", "Jakarta, Indonesia", "Manila, Philippines", "Hanoi, Vietnam",
    "Bangkok, Thailand", "Dhaka, Bangladesh", "Karachi, Pakistan", "Tehran, Iran", "Istanbul, Turkey",
    "Riyadh, Saudi Arabia", "Almaty, Kazakhstan", "Kathmandu, Nepal",
    # Europe
    "London, UK", "Glasgow, Scotland", "Paris, France", "Lyon, France", "Berlin, Germany",
    "Munich, Germany", "Madrid, Spain", "Rome, Italy", "Warsaw, Poland", "Stockholm, Sweden",
    "Amsterdam, Netherlands", "Lisbon, Portugal", "Athens, Greece", "Kyiv, Ukraine", "Dublin, Ireland",
    # North and Central America
    "New York, USA", "rural Iowa, USA", "Houston, USA", "Los Angeles, USA", "Toronto, Canada",
    "Montreal, Canada", "Mexico City, Mexico", "Guadalajara, Mexico", "Havana, Cuba",
    "Guatemala City, Guatemala",
    # South America
    "Sao Paulo, Brazil", "Recife, Brazil", "Buenos Aires, Argentina", "Lima, Peru", "Bogota, Colombia",
    "Santiago, Chile", "Quito, Ecuador",
    # Oceania
    "Sydney, Australia", "Perth, Australia", "Auckland, New Zealand", "Suva, Fiji",
)  # fmt: skip

#: Illustrative interests.
INTERESTS: Final = (
    "gardening", "football", "chess", "cooking", "baking", "hiking", "birdwatching", "photography",
    "painting", "knitting", "woodworking", "cycling", "running", "swimming", "yoga", "meditation",
    "jazz", "classical music", "hip hop", "playing guitar", "singing in a choir", "dancing",
    "reading novels", "poetry", "history", "astronomy", "physics", "mathematics puzzles", "programming",
    "video games", "board games", "tabletop role-playing", "anime", "science fiction", "film", "theatre",
    "stand-up comedy", "podcasts", "travel", "learning languages", "volunteering", "local politics",
    "climate action", "animal welfare", "dog training", "fishing", "camping", "mountain climbing",
    "surfing", "skiing", "basketball", "cricket", "tennis", "martial arts", "car repair", "motorcycles",
    "home renovation", "interior design", "fashion", "sewing", "pottery", "calligraphy", "genealogy",
    "coin collecting", "vintage records", "craft beer", "coffee", "tea ceremony", "vegetarian cooking",
    "nutrition", "personal finance", "investing", "entrepreneurship", "parenting", "religious community",
    "philosophy", "psychology", "urban sketching", "beekeeping", "caring for elderly parents",
)  # fmt: skip

#: The Big Five are drawn per trait from normal(mean, sd), rounded and held to 0..100.
TRAIT_MEAN: Final = 50.0
TRAIT_SD: Final = 15.0


def _flat(values: tuple[str, ...]) -> list[Weighted]:
    return [Weighted(value=v, weight=1.0) for v in values]


def resolved(targets: AttributeTargets) -> AttributeTargets:
    """``targets`` with every empty list filled from the built-in ones (equal weights)."""
    return targets.model_copy(
        update={
            "occupation": targets.occupation or _flat(OCCUPATIONS),
            "region": targets.region or _flat(REGIONS),
            "interests": targets.interests or list(INTERESTS),
        }
    )


def pick(values: list[Weighted], rng: random.Random) -> str:
    """One value, with probability proportional to its weight."""
    return rng.choices([w.value for w in values], weights=[w.weight for w in values], k=1)[0]


def sample(targets: AttributeTargets, rng: random.Random) -> Attributes:
    """One person's attributes drawn from ``targets`` (empty lists: the built-in ones).

    Occupation first, then gender from that occupation's shares in
    ``occupation_gender`` when it has some (the overall shares otherwise), so
    a run can ask for, say, as many male nurses as female ones. The draws
    happen in a fixed order, so the same ``rng`` state gives the same person.
    """
    full = resolved(targets)
    occupation = pick(full.occupation, rng)
    gender = pick(full.occupation_gender.get(occupation) or full.gender, rng)
    age = rng.randint(full.age_min, full.age_max)
    region = pick(full.region, rng)
    count = min(full.interests_per_persona, len(full.interests))
    interests = rng.sample(full.interests, count)
    traits = {t: min(100, max(0, round(rng.gauss(TRAIT_MEAN, TRAIT_SD)))) for t in BIG_FIVE}
    return Attributes(
        age=age,
        gender=gender,
        occupation=occupation,
        region=region,
        interests=interests,
        traits=BigFive(**traits),
    )
