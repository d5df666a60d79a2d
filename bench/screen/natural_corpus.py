"""Natural short texts for the `screen` bench, from files every Debian bookworm system has offline.

Prose: the paragraphs of the AppStream (DEP-11) descriptions of Debian main
(`/var/lib/apt/lists/*_main_dep11_Components-amd64.yml.gz`, after `apt-get update`), in English
and in the translations they carry (German, French, Spanish, Italian, Portuguese, Dutch, Polish,
Czech, Swedish, Finnish, Turkish, Indonesian, Russian, Ukrainian, Greek, Japanese, Chinese,
Korean), HTML tags and entities removed. Code: windows of 4 to 12 non-blank lines from the
Python standard library (`/usr/lib/python3*/**.py`). A text is kept when it has 10 to 60
whitespace-separated words (for Chinese and Japanese, 20 to 240 characters, which have no spaces).

Writes JSON lines `{"group", "lang", "kind", "text"}`; `group` names the component (and
language) a prose paragraph describes, so that two paragraphs of one group are distinct texts
on the same topic.

Usage: natural_corpus.py OUT.jsonl
"""

import glob
import gzip
import html
import json
import random
import re
import sys

import yaml

LANGS = "C en de fr es it pt pt_BR nl da sv fi pl cs sk sl hu tr id ca gl eu ru uk el ja zh_CN ko".split()
UNSPACED = {"ja", "zh_CN"}


def keep(text, lang):
    if lang in UNSPACED:
        return 20 <= len(text) <= 240
    return 10 <= len(text.split()) <= 60


def prose(path):
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for document in yaml.safe_load_all(lines):
            if not document or "Description" not in document:
                continue
            group = document.get("ID", "?")
            for lang, body in document["Description"].items():
                if lang not in LANGS or not isinstance(body, str):
                    continue
                for paragraph in re.findall(r"<p>(.*?)</p>", body, re.S):
                    text = html.unescape(re.sub(r"<[^>]+>", "", paragraph))
                    text = " ".join(text.split())
                    if keep(text, lang):
                        yield {"group": f"{group}/{lang}", "lang": "en" if lang == "C" else lang, "kind": "prose", "text": text}


def code(rng):
    for path in sorted(glob.glob("/usr/lib/python3*/**/*.py", recursive=True))[:400]:
        try:
            lines = [line.rstrip() for line in open(path, encoding="utf-8") if line.strip()]
        except (OSError, UnicodeDecodeError):
            continue
        at = 0
        while at < len(lines):
            size = rng.randint(4, 12)
            text = "\n".join(lines[at : at + size])
            at += size
            if keep(text, "code"):
                yield {"group": path, "lang": "python", "kind": "code", "text": text}


def main():
    rng = random.Random(20261204)
    records = list(prose(glob.glob("/var/lib/apt/lists/*_main_dep11_Components-amd64.yml.gz")[0]))
    records += list(code(rng))[:3000]
    # English duplicates across components (the same stock sentence) would be counted as
    # distinct texts: keep the first of each text.
    seen, unique = set(), []
    for record in records:
        if record["text"] not in seen:
            seen.add(record["text"])
            unique.append(record)
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        for record in unique:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    kinds = {}
    for record in unique:
        kinds[record["lang"]] = kinds.get(record["lang"], 0) + 1
    print(f"{len(unique)} natural texts written to {sys.argv[1]}: {kinds}")


if __name__ == "__main__":
    main()
