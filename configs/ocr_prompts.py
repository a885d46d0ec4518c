"""Training prompts for the `sd3_ocr` preset: scenes that show a short quoted text, none of whose texts is a test text.

`python -m configs.ocr_prompts [--out configs/prompts] [--count 6000] [--seed 0]` writes `ocr_train.txt`, one
prompt per line with the target text in double quotes (the OCR scorer reads the quoted text as the target). The
reference's OCR training set was written by a language model and is not available to us; this one is built from
templates instead: a text of one to four words from small vocabularies (signs, labels, greetings, numbers), set
in one of many scene descriptions. Any text equal to a quoted text of `ocr_test.txt` (ignoring case) is skipped,
so evaluation never shows a text RL was trained to write.
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

ADJECTIVES = ("Fresh", "Golden", "Quiet", "Open", "Grand", "Happy", "Silver", "Wild", "Sunny", "Little", "Royal",
              "Urban", "Secret", "Lucky", "Ocean", "Midnight", "Green", "Blue", "Cozy", "Daily", "North", "Hidden",
              "Bright", "Old Town", "Rustic", "Modern", "Electric", "Velvet", "Crystal", "Iron")
NOUNS = ("Bakery", "Garden", "Coffee", "Market", "Library", "Studio", "Harbor", "Bistro", "Books", "Cinema",
         "Theater", "Gallery", "Station", "Workshop", "Pantry", "Tavern", "Gym", "Pharmacy", "Florist", "Arcade",
         "Diner", "Records", "Motel", "Barber", "Bikes", "Noodles", "Tea House", "Print Shop", "Lab", "Farm")
NOTICES = ("Please Knock", "Back In Ten Minutes", "Staff Only", "Wet Paint", "Keep Left", "Slow Down",
           "No Parking Here", "Mind The Step", "Exit Only", "Quiet Please", "Closed On Mondays", "Open Daily",
           "Push To Open", "Deliveries At Rear", "Watch Your Head", "Fragile Handle With Care", "Do Not Disturb",
           "Lost And Found", "Ring For Service", "Tickets Here")
GREETINGS = ("Welcome", "Happy Birthday", "Good Morning", "Thank You", "See You Soon", "Congratulations",
             "Best Wishes", "Hello Friend", "Sweet Dreams", "Good Luck")
NAMES = ("Anna", "Leo", "Maya", "Omar", "Chen", "Sofia", "Ravi", "Elena", "Noah", "Zoe", "Kai", "Ines")
SCENES = (
    'A wooden sign hanging outside a small shop that reads "{text}", warm afternoon light.',
    'A neon sign glowing above a city doorway at night, spelling "{text}".',
    'A chalkboard on a café counter with "{text}" written in neat white letters.',
    'A handwritten note pinned to a corkboard saying "{text}".',
    'A birthday cake on a table with "{text}" piped in icing across the top.',
    'A coffee mug on a desk printed with the words "{text}".',
    'A street banner stretched between two lamp posts announcing "{text}".',
    'A book cover on a library shelf with the title "{text}" in bold serif type.',
    'A T-shirt folded on a shelf, its front printed with "{text}".',
    'A road sign beside a mountain highway reading "{text}".',
    'A vintage poster on a brick wall with the headline "{text}".',
    'A shop window with "{text}" painted in gold letters on the glass.',
    'A laptop screen showing a slide titled "{text}" in a bright meeting room.',
    'A greeting card on a wooden table with "{text}" in elegant script.',
    'A delivery van parked on a street, "{text}" painted on its side.',
    'A storefront awning printed with "{text}", seen from across a quiet street.',
    'A sticky note on a refrigerator door with "{text}" scribbled in marker.',
    'A doormat at a front entrance woven with the words "{text}".',
    'A billboard above a busy intersection displaying "{text}".',
    'A glass jar on a kitchen shelf with a paper label reading "{text}".',
    'A movie theater marquee lit up with "{text}".',
    'A metal plaque mounted beside a door engraved with "{text}".',
    'A smartphone lock screen showing the message "{text}".',
    'A kite flying over a beach with "{text}" printed on its sail.',
)


def sample_text(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    if kind == 1:
        return f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    if kind == 2:
        return rng.choice(NOTICES)
    if kind == 3:
        return f"{rng.choice(GREETINGS)} {rng.choice(NAMES)}"
    if kind == 4:
        return f"{rng.choice(NOUNS)} Since {rng.randrange(1890, 2025)}"
    return f"{rng.choice(NOUNS)} {rng.choice(('Open', 'Sale', 'Closed', 'Ahead'))} {rng.randrange(2, 100)}"


def quoted_texts(lines: list[str]) -> set[str]:
    return {text.lower() for line in lines for text in re.findall(r'"([^"]+)"', line)}


def generate(test_lines: list[str], *, count: int, seed: int) -> list[str]:
    """`count` prompts (as many as the vocabularies allow), every text outside the test texts, no prompt twice."""
    rng, excluded, prompts, seen = random.Random(seed), quoted_texts(test_lines), [], set()
    for _ in range(50 * count):
        if len(prompts) == count:
            break
        text = sample_text(rng)
        prompt = rng.choice(SCENES).format(text=text)
        if text.lower() not in excluded and prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    return prompts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="configs/prompts", help="folder holding ocr_test.txt")
    parser.add_argument("--count", type=int, default=6000, help="prompts to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    prompts = generate((out / "ocr_test.txt").read_text().splitlines(), count=args.count, seed=args.seed)
    (out / "ocr_train.txt").write_text("".join(p + "\n" for p in prompts))
    print(f"wrote {len(prompts)} prompts to {out / 'ocr_train.txt'}")


if __name__ == "__main__":
    main()
