#!/usr/bin/env python3
"""Writes tools/prompts.txt: the prompts the tokenizer fixtures are made from.

Run from the repo root:   python3 tools/make_prompts.py   (no dependencies)
One prompt per line as a JSON string (so newlines, tabs and odd spaces
survive). Deterministic: a fixed seed mixes real-world SD prompt parts
(interior design rooms first: our users render rooms) with hand-written edge
cases: punctuation, digits, accents (composed and decomposed), CJK, emoji,
HTML entities, prompts far over 77 tokens, empty and whitespace-only ones,
mixed case, apostrophes, the special-token strings, other scripts, and
random strings over tricky Unicode blocks (NFC, case, letter/number classes).
"""
import json
import os
import random

ROOMS = ["living room", "bedroom", "kitchen", "bathroom", "dining room", "home office", "nursery",
         "walk-in closet", "sunroom", "attic loft", "basement den", "entryway", "laundry room",
         "kids' playroom", "studio apartment", "master suite", "powder room", "reading nook",
         "open-plan kitchen/diner", "patio", "balcony", "guest room", "library", "mudroom"]
STYLES = ["Scandinavian", "mid-century modern", "Japandi", "industrial", "boho", "minimalist",
          "farmhouse", "Art Deco", "coastal", "Mediterranean", "wabi-sabi", "maximalist",
          "French country", "Hollywood Regency", "brutalist", "Victorian", "rustic", "contemporary",
          "transitional", "neoclassical", "Bauhaus", "Memphis-style", "cottagecore", "Moroccan"]
DETAILS = ["oak floors", "white walls", "linen sofa", "velvet armchair", "terrazzo countertop",
           "brass fixtures", "floor-to-ceiling windows", "exposed brick", "marble backsplash",
           "rattan pendant lights", "jute rug", "built-in bookshelves", "herringbone parquet",
           "walnut cabinetry", "sage green cabinets", "arched doorway", "skylight", "fireplace",
           "potted fiddle-leaf fig", "bouclé chair", "travertine coffee table", "wainscoting",
           "LED strip lighting", "gallery wall", "clawfoot tub", "subway tiles", "concrete floor",
           "4-poster bed", "L-shaped sectional", "2 bar stools", "60\" TV", "12ft ceilings"]
LIGHT = ["soft morning light", "golden hour", "warm ambient lighting", "overcast daylight",
         "dramatic shadows", "natural light", "moody evening light", "candlelit", "neon glow"]
QUALITY = ["photorealistic", "8k", "4K UHD", "highly detailed", "architectural photography",
           "interior design magazine", "Architectural Digest", "octane render", "unreal engine 5",
           "trending on artstation", "35mm lens", "f/1.8", "wide angle", "ultra-realistic",
           "masterpiece", "best quality", "sharp focus", "HDR", "RAW photo", "cinematic",
           "(masterpiece:1.2)", "((best quality))", "[cozy:0.5]", "{warm|cool} tones"]
OTHER_SUBJECTS = ["a cat sitting on a windowsill", "portrait of an old fisherman",
                  "a castle on a hill at sunset", "cyberpunk city street at night, rain",
                  "a bowl of ramen", "astronaut riding a horse on mars", "a lighthouse in a storm",
                  "watercolor painting of a fox", "macro shot of a dew drop on a leaf",
                  "a red sports car", "an owl in a snowy forest", "logo of a coffee shop"]

EDGE = [
    "", " ", "   ", "\t", "\n", " \t\n ", "\u00a0", "\u3000", "\u2003 \u2009", "a\u00a0b", "a\u3000b",
    "a\u2028b\u2029c", "x\u0085y", "line one\nline two\r\nline three", "tabs\tbetween\twords",
    "  leading and trailing spaces  ", "multiple     spaces    inside",
    "don't", "it's a room", "we're", "they've", "I'm", "you'll", "she'd", "DON'T IT'S",
    "rock'n'roll", "'s", "''", "'''quoted'''", "o'clock", "the '90s", "it`s", "it\u2019s",
    "Hello, World!", "wait... what?!", "a-b_c.d,e;f:g", "(((nested)))", "[a|b]", "{x}", "<tag>",
    "50% off", "$100", "#hashtag", "@mention", "a+b=c", "1/2", "3.14159", "2024-01-15", "10:30pm",
    "1234567890", "room 101", "99 red balloons", "x2", "4k", "8K", "1080p", "v1.5", "1st 2nd 3rd",
    "½ ¼ ² ³", "①②③", "Ⅻ", "٣٤٥", "१२३", "๑๒๓",
    "café", "cafe\u0301", "naïve résumé", "nai\u0308ve", "Ångström", "A\u030angstro\u0308m",
    "ÉCOLE", "E\u0301COLE", "crème brûlée", "piñata", "jalapeño", "façade", "Zürich", "smørrebrød",
    "a\u0323\u0301", "a\u0301\u0323", "q\u0307\u0323", "\u1e0b\u0323", "e\u0304\u0301",
    "straße", "STRASSE", "ﬁne ﬂoor", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ", "İstanbul", "ISTANBUL", "ıi",
    "ΟΔΟΣ", "Σίσυφος", "ΣΑΣ", "Ǆemal", "ǅ", "ẞ",
    "Ｌｉｖｉｎｇ ｒｏｏｍ", "\u212b", "\u2126", "K\u212a",
    "日本の部屋", "和室 畳 障子", "现代客厅设计", "北欧风格的卧室", "한국 거실 인테리어",
    "\u1112\u1161\u11ab\u1100\u116e\u11a8", "中文English混合", "東京のアパート、夜景",
    "Москва, гостиная в стиле лофт", "Ελληνικό σπίτι", "غرفة معيشة حديثة", "חדר שינה",
    "आधुनिक रसोईघर", "ห้องนอนสไตล์มินิมอล", "Phòng khách hiện đại", "ქართული", "Հայերեն",
    "🛋️ cozy couch", "🏠🏡", "👨‍👩‍👧‍👦 family room", "🔥🔥🔥", "❤️", "👍🏽", "🇯🇵 flag",
    "✨ sparkle ✨", "☕ coffee corner", "🪴 plants", "emoji🙂inside", "≥ ≤ ≠ ∞", "→ ← ↑",
    "™ © ®", "° degrees", "€ £ ¥", "•bullet", "—em dash–en dash", "«quotes»", "“smart quotes”",
    "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "Tom &amp; Jerry", "&quot;quoted&quot;", "&#39;", "&#x27;",
    "&nbsp;", "a&nbsp;b", "&amp;amp;", "AT&T",
    "<|endoftext|>", "<|startoftext|>", "a <|endoftext|> b", "x<|endoftext|>y",
    "<|ENDOFTEXT|>", "<|endoftext|><|endoftext|>", "<|startoftext|>room", "!<|endoftext|>",
    "<|endoftext", "|endoftext|>", "<| endoftext |>",
    "MiXeD CaSe PrOmPt", "ALL CAPS LIVING ROOM", "camelCaseWord", "snake_case_word",
    "https://example.com/room.png", "user@example.com", "C:\\Users\\room",
    "a" * 200, "ab" * 100, "lo" + "o" * 300 + "ng", "x " * 100, "1" * 100, "!" * 80, "🙂" * 40,
    "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "\u200b zero width", "zero\u200bwidth", "soft\u00adhyphen", "bidi\u200emark", "\ufeffbom",
    "\u0301 leading combining", "\u0300\u0301\u0302", "\ufffd", "control\x01char", "bell\x07",
]


def room_prompt(rng):
    parts = [f"{rng.choice(['a', 'an', 'the', 'A', 'photo of a', 'interior of a', 'cozy', 'modern', 'luxurious', 'small'])} "
             f"{rng.choice(STYLES)} {rng.choice(ROOMS)}"]
    parts += rng.sample(DETAILS, rng.randint(1, 5))
    if rng.random() < 0.7:
        parts.append(rng.choice(LIGHT))
    parts += rng.sample(QUALITY, rng.randint(0, 5))
    sep = rng.choice([", ", ", ", ". ", " | ", ",", " "])
    text = sep.join(parts)
    if rng.random() < 0.15:
        text = text.title()
    if rng.random() < 0.05:
        text = text.upper()
    return text


def other_prompt(rng):
    parts = [rng.choice(OTHER_SUBJECTS)] + rng.sample(QUALITY, rng.randint(0, 4))
    return ", ".join(parts)


def long_prompt(rng):
    n = rng.randint(30, 80)
    return ", ".join(rng.choice(DETAILS + QUALITY + LIGHT) for _ in range(n))


def seed_style_prompt(rng):
    """What the seed's /generate-concept builds from its form fields."""
    room = rng.choice(ROOMS)
    style = rng.choice(STYLES)
    extra = rng.choice(["", "with lots of plants", "for a family of 4", "budget-friendly",
                        "with a home bar & wine fridge", "pet-friendly (2 dogs)", "kid's corner",
                        "büro für 2 personen", "ダイニングテーブル付き", "avec cheminée"])
    return (f"Conceptual visualization of a {style} {room}{', ' + extra if extra else ''}. "
            "Interior design, realistic lighting, high quality.")


# Unicode blocks for random strings: combining marks, Hangul syllables and
# jamo, CJK, emoji, Devanagari/Thai marks, fullwidth forms, math letters,
# Roman numerals, ligatures, C0/C1 controls, the spaces of U+2000..U+206F.
RANDOM_BLOCKS = [(0x20, 0x7F), (0xA0, 0x250), (0x300, 0x370), (0x370, 0x530), (0x1E00, 0x2000),
                 (0x2000, 0x2070), (0x3000, 0x3100), (0x4E00, 0x4E80), (0xAC00, 0xAC80),
                 (0x1100, 0x1200), (0x1F300, 0x1F680), (0x900, 0x980), (0xE00, 0xE80),
                 (0xFF00, 0xFF70), (0x10400, 0x10450), (0x1D400, 0x1D500), (0x2160, 0x2190),
                 (0xFB00, 0xFB50), (0x1, 0x20), (0x80, 0xA0)]


def random_unicode(rng):
    chars = []
    for _ in range(rng.randint(1, 60)):
        lo, hi = rng.choice(RANDOM_BLOCKS)
        chars.append(chr(rng.randrange(lo, hi)))
    return "".join(chars)


def main():
    rng = random.Random(20260101)
    prompts = list(EDGE)
    prompts += [room_prompt(rng) for _ in range(620)]
    prompts += [seed_style_prompt(rng) for _ in range(120)]
    prompts += [other_prompt(rng) for _ in range(80)]
    prompts += [long_prompt(rng) for _ in range(60)]
    # mutations: random case, random whitespace, random accents/emoji spliced in
    extras = ["é", "e\u0301", "ñ", "ü", "日本", "🛋️", "&amp;", "'s", "  ", "\t", "Ü", "ß", "İ", "Σ"]
    for _ in range(120):
        p = list(room_prompt(rng))
        for _ in range(rng.randint(1, 4)):
            p.insert(rng.randint(0, len(p)), rng.choice(extras))
        prompts.append("".join(p))
    prompts += [random_unicode(rng) for _ in range(300)]
    seen, out = set(), []
    for p in prompts:
        if p not in seen:
            seen.add(p)
            out.append(p)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts.txt")
    with open(path, "w", encoding="utf-8") as f:
        for p in out:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(out)} prompts")


if __name__ == "__main__":
    main()
