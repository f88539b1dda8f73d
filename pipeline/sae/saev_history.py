"""Which encoder each saev commit that wrote schema-1 checkpoints used (data, not code).

saev's schema-1 header carries ``commit`` (the short git SHA of the saev checkout that wrote
it) but the same schema was written by code of both encoder conventions: saev subtracted
``b_dec`` in the encoder (``relu((x - b_dec) @ W_enc + b_enc)``) until commit ``e7ca004``
("don't remove decoder bias since it's zero by default", 2025-07-31) and not after.

How these tables were made (reproducible from a clone of OSU-NLP-Group/saev): for every
commit reachable from ``8d38c23~1`` (``8d38c23`` is the first to write schema 2) whose
``[src/]saev/nn/modeling.py`` writes ``"schema": 1``, the commit's 7-character SHA goes
into :data:`SUBTRACTS_B_DEC` when that file's encoder contains ``x - self.b_dec`` and into
:data:`PLAIN` otherwise. 184 commits: 179 subtract, 5 do not (``e7ca004``
and its descendants before schema 2).
"""

from __future__ import annotations

SCHEMA1_FIRST_PLAIN = "e7ca004"

SUBTRACTS_B_DEC = frozenset(
    """
    02b306f 03837ef 050ab62 053c29a 06d5e94 08f0176 0b6704b 0d2ec28 0eff867 0f835b3
    131266b 15e88c7 1c64e53 1c842cc 1e61d58 1f2cf1e 2202d3f 22c1f5d 24f21f6 2548ef3
    29338ad 29d30b7 2a109e8 2b4d098 2ba9540 2c5df57 2c7e6cd 2e6c946 2f49e5e 3073a91
    33f4c14 34699db 3522070 357a268 36e0ff9 395426a 3be383f 3e47acf 3e90477 3f14c11
    3f9706d 3fc16cf 41d7ea2 42b6764 42e4fb2 461204f 4624e2b 468b069 4738887 47b6670
    47c4f69 4a3ba38 4af2866 4e917b4 4e9b2fa 4ec38ba 4f87ac7 4f983f9 516b142 521420e
    52ef7a3 55eecca 5615da6 580b0ef 5951e84 5b26d49 5bc8aa9 5c61705 5c6dce4 5ecb4f1
    5ee8a88 5fee417 602a3de 6093f84 633f2c2 63958af 63cf5b1 645bc4d 65c5a2b 6845bc2
    6898a88 6a3bcd0 6e58ae0 700e9ab 728e884 73b150a 75fef8f 7929824 79cda4e 7f0cca4
    80ecefe 80f7387 820bb46 863916f 88c8b28 8aecac1 8dfde93 900d753 91fb38f 9574d4c
    95eeddf 9642665 984e254 9b57615 9bee6c4 9d0643f 9f39cf8 9fbe14e 9fd5a6e a050e7a
    a159d41 a2ece89 a3aef07 a6052a5 a885467 aa5c1ce ac4218d acbc385 b1f1687 b23cf37
    b2f2090 ba289c9 bd330ef bedaef7 bf99831 c270a9f c2dad76 c2e3541 c3c7a1b c489e4a
    c6340dc c6a4602 c6e3552 c7966fc c9306cd cb70136 cce83fe d2aab2d d4fcc7e d562412
    d578b80 d63b4d9 d6c8eb6 d71dee2 d877cc2 d88d39c d991de3 daa4e44 db894a2 deac460
    dfc4e39 e19e3a0 e302195 e4e9712 e5092bd e70fbac e71e456 e8037b3 e89ec17 ea2c9f5
    ea5a8eb eb7c1ca ec00e57 eca9c85 edb546d ee0f56f ee86c12 f190cc7 f206a1a f2dd7bd
    f326328 f3d648a f53bd68 f5d892c f87540e f8aaffd fcd4b3e fd5af0c ff2b5c8
""".split()
)

PLAIN = frozenset(
    """
    5056de4 795479b ab690dc e7ca004 fad9929
""".split()
)


def schema1_subtracts_b_dec(commit: str | None) -> bool | None:
    """True / False for a known schema-1 writer (full or short SHA), None when unknown or absent."""
    if not commit or not isinstance(commit, str) or len(commit) < 7:
        return None
    short = commit.strip().lower()[:7]
    if short in SUBTRACTS_B_DEC:
        return True
    if short in PLAIN:
        return False
    return None
