"""Topic labels of the embedded corpus: the topic file of the Debian fortunes data each text
comes from (what sparse probing, :mod:`gemmascope.eval.probing`, predicts).

The Debian fortunes data come in one file per topic (``art``, ``computers``, ``science`` ...)
and the embedded corpus is those files concatenated in alphabetical order, so a text's topic is
the file it lies in. The files' first documents (:data:`TOPIC_STARTS`) were found by matching
every embedded document against the fortune-mod repository's ``datfiles/``
(github.com/shlomif/fortune-mod); each is checked against the corpus on every call. Texts that
occur twice (about 100) are kept once when their topics agree and dropped when they do not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gemmascope.data import text as text_lib

# (topic, index of its first document in embedded_corpus(), the start of that document's text)
TOPIC_STARTS: tuple[tuple[str, int, str], ...] = (
    ("art", 0, "7:30, Channel 5: The Bionic"),
    ("computers", 465, "!07/11 PDP a ni deppart m'I"),
    ("cookie", 1516, '"You know, of course, that t'),
    ("debian", 2649, "I think it's a little fantas"),
    ("definitions", 2734, "17th Rule of Friendship:"),
    ("disclaimer", 3937, "15% gratuity added for parti"),
    ("education", 4221, "A book is the work of a mind"),
    ("food", 4424, "1893 The ideal brain tonic"),
    ("goedel", 4622, "===================="),
    ("humorists", 4676, "A black cat crossing your pa"),
    ("kids", 4873, "A baby is an alimentary cana"),
    ("knghtbrd", 5023, "* SynrG notes that the numbe"),
    ("law", 5563, "A blind rabbit was hopping t"),
    ("linux", 5769, '"How do you pronounce SunOS?'),
    ("love", 6208, "A career is great, but you c"),
    ("magic", 6358, "A Thaum is the basic unit of"),
    ("medicine", 6388, "A CODE OF ETHICAL BEHAVIOR F"),
    ("miscellaneous", 6462, "1 bulls, 3 cows."),
    ("news", 7113, "A help wanted add for a phot"),
    ("paradoxum", 7166, "  A little pain never hurt a"),
    ("people", 7238, 'A "practical joker" deserves'),
    ("perl", 8489, "All language designers are a"),
    ("pets", 8762, "A door is what a dog is perp"),
    ("platitudes", 8814, "(1) Everything depends."),
    ("politics", 9314, "$100 invested at 7% interest"),
    ("pratchett", 10017, "He hated being thought of as"),
    ("science", 10019, "1 + 1 = 3, for large values "),
    ("songs-poems", 10644, "100 buckets of bits on the b"),
    ("sports", 11364, "A [golf] ball hitting a tree"),
    ("startrek", 11511, "A father doesn't destroy his"),
    ("tao", 11738, "The Way"),
    ("wisdom", 11820, "(1) Avoid fried meats which "),
    ("work", 12245, "(1)\tOffice employees will da"),
    ("zippy", 12875, "A can of ASPARAGUS, 73 pigeo"),
)
N_EMBEDDED_DOCS = 13423


def normalise(text: str) -> str:
    """Whitespace-collapsed text: the identity of a document for de-duplication and splitting."""
    return " ".join(text.split())


def fortune_topics(docs: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """``(texts, labels [n] int, names)``: the embedded corpus's documents labelled by the topic
    file they come from (module doc), duplicates resolved. ``docs``: the corpus (default: read it).
    Raises ``ValueError`` naming the first mismatch if the corpus is not the one the topic table
    was made from."""
    docs = list(text_lib.embedded_corpus() if docs is None else docs)
    if len(docs) != N_EMBEDDED_DOCS:
        raise ValueError(f"fortune_topics: the corpus has {len(docs)} documents, the topic table {N_EMBEDDED_DOCS}")
    for name, start, prefix in TOPIC_STARTS:
        if not docs[start].startswith(prefix):
            raise ValueError(
                f"fortune_topics: topic {name!r} should start at document {start} with {prefix!r}, "
                f"found {docs[start][:40]!r}"
            )
    starts = [s for _, s, _ in TOPIC_STARTS]
    labels = np.searchsorted(np.asarray(starts), np.arange(len(docs)), side="right") - 1
    first: dict[str, int] = {}
    topics_of: dict[str, set[int]] = {}
    for i, t in enumerate(docs):
        key = normalise(t)
        first.setdefault(key, i)
        topics_of.setdefault(key, set()).add(int(labels[i]))
    keep = [i for i, t in enumerate(docs) if first[normalise(t)] == i and len(topics_of[normalise(t)]) == 1]
    return [docs[i] for i in keep], labels[keep].astype(np.int32), tuple(n for n, _, _ in TOPIC_STARTS)
