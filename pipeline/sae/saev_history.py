"""What each saev commit's ``dump`` wrote and its forward computed (data, not code; one owner).

saev (OSU-NLP-Group/saev) writes checkpoints as one JSON header line + ``torch.save(state_dict)``.
The header's ``schema`` says the header's shape, not the forward: saev changed its encoder and its
``BatchTopK`` without changing the schema, so the header's ``commit`` (the short SHA of the saev
checkout that wrote the file; from schema 1 on) is what tells them apart. :data:`WRITERS` lists,
per writer era, every commit (7-character SHA, every ref of the repository) whose SAE file writes
that schema, with

* ``subtracts_b_dec``: the ``SparseAutoencoder`` encoder is ``(x − b_dec) @ W_enc + b_enc``
  (saev until e7ca004, "don't remove decoder bias since it's zero by default", 2025-07-31, and on
  the PR-14 branch that forked before it) or ``x @ W_enc + b_enc``;
* ``batchtopk``: what that code's ``BatchTopK`` activation computes at inference, as the
  :class:`~pipeline.sae.kinds.BatchTopK` ``inference`` mode that reproduces it: ``"batch_total"``
  (the k largest pre-activations of the whole batch, k in total), ``"batch"`` (the N·k largest of
  the batch), ``"row"`` (each row's k largest), ``"threshold"`` (``h·1[h > θ]`` with the learned
  buffer ``activation.threshold``); ``None`` when that code has no TopK/BatchTopK (ReLU only).
  Every saev TopK keeps negative pre-activations that rank among a row's k largest
  (``mask * x``, no ReLU): ``TopK(keep_negative=True)``; so does every masking BatchTopK.
* ``abs_batchtopk``: that code also has ``AbsBatchTopK`` (top N·k of ``|h|`` over the batch).

Before schema 1 (no ``schema`` key, the header is the bare config; saev/modeling.py at 984dfb2,
2024-10-30, then saev/nn.py to 57a7163) every writer subtracted b_dec and had ReLU only; before 984dfb2 saev
pickled ``{"cfg": <config object>, "state_dict": ...}`` with ``torch.save`` and no JSON header.
docs/saev-checkpoints.md has the whole table with what saev's current loader (3d73f1f) does.

How the table was made (tests/test_saev_history.py re-derives it): for every commit of every ref,
the file holding ``class SparseAutoencoder(`` (``src/saev/nn/modeling.py``, ``saev/nn/modeling.py``,
``saev/nn.py``, ...); its ``dump``'s ``"schema"`` (or ``SCHEMA_VERSION``); ``x - self.b_dec``
inside that class's ``encode`` (or ``forward`` when there is no ``encode``: a search of the whole
file also finds the Matryoshka objective's subtraction, which put seven commits in the wrong set
before); and the ``BatchTopK`` forward's rule (``flatten`` + ``topk(k)``, ``flatten`` +
``topk(k * bsz)``, per-row ``topk``, or the ``threshold`` buffer). The per-commit source snippets
are committed in tests/data/saev_commits.json so that CI checks the table without saev's history.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEMA1_FIRST_PLAIN = "e7ca004"


@dataclass(frozen=True)
class Writer:
    """One era of saev's checkpoint writers (see the module docstring)."""

    schema: int
    subtracts_b_dec: bool
    batchtopk: str | None
    note: str
    abs_batchtopk: bool = False
    commits: frozenset[str] = field(default=frozenset(), compare=False)


def _era(writer: Writer, shas: str) -> Writer:
    return Writer(
        writer.schema,
        writer.subtracts_b_dec,
        writer.batchtopk,
        writer.note,
        writer.abs_batchtopk,
        frozenset(shas.split()),
    )


WRITERS: tuple[Writer, ...] = tuple(
    _era(w, shas)
    for w, shas in (
        (
            Writer(
                1,
                True,
                None,
                'saev/nn/modeling.py 5951e84 (2025-04-28) to e7ca004^ on main (and the PR-12 refs): ReLU only, cls "Relu"',
            ),
            """
    02b306f 03837ef 050ab62 053c29a 06d5e94 08f0176 0b6704b 0d2ec28 0eff867 0f835b3 131266b 15e88c7
    1c64e53 1c842cc 1e61d58 1f2cf1e 2202d3f 22c1f5d 24f21f6 2548ef3 29338ad 2a109e8 2b4d098 2ba9540
    2c5df57 2c7e6cd 2e6c946 2f49e5e 3073a91 34699db 3522070 357a268 36e0ff9 395426a 3be383f 3e47acf
    3e90477 3f14c11 3f9706d 3fc16cf 41d7ea2 42b6764 42e4fb2 461204f 4624e2b 468b069 4738887 47b6670
    47c4f69 4a3ba38 4af2866 4e917b4 4e9b2fa 4ec38ba 4f87ac7 4f983f9 516b142 521420e 52ef7a3 55eecca
    5615da6 580b0ef 5951e84 5b26d49 5bc8aa9 5c61705 5c6dce4 5dce30d 5ecb4f1 5ee8a88 602a3de 6093f84
    633f2c2 63958af 63cf5b1 645bc4d 6898a88 6a3bcd0 6e58ae0 700e9ab 728e884 73b150a 75fef8f 7929824
    79cda4e 7f0cca4 80ecefe 80f7387 820bb46 863916f 88c8b28 8dfde93 900d753 91fb38f 9574d4c 95eeddf
    9642665 984e254 9b57615 9bee6c4 9d0643f 9fbe14e 9fd5a6e a050e7a a159d41 a2ece89 a3aef07 a4d9a7f
    a6052a5 a885467 aa5c1ce ac4218d acbc385 b1f1687 b23cf37 b2f2090 ba289c9 bd330ef bedaef7 bf99831
    c270a9f c2dad76 c2e3541 c3c7a1b c489e4a c6340dc c6a4602 c6e3552 c7966fc c9306cd cb70136 cce83fe
    d2aab2d d4fcc7e d562412 d578b80 d63b4d9 d6c8eb6 d71dee2 d877cc2 d88d39c daa4e44 db894a2 deac460
    dfc4e39 e19e3a0 e302195 e4e9712 e5092bd e70fbac e71e456 e89ec17 ea5a8eb eb7c1ca ec00e57 eca9c85
    edb546d ee0f56f ee86c12 f190cc7 f206a1a f2dd7bd f326328 f3d648a f53bd68 f6e61e5 f87540e f8aaffd
    fcd4b3e fd5af0c ff2b5c8
""",
        ),
        (
            Writer(
                1,
                True,
                "batch_total",
                "PR-14 branch 33f4c14..29d30b7 (2025-07-15/23): TopK/BatchTopK added, still subtracting b_dec",
            ),
            """
    29d30b7 33f4c14 d991de3 e8037b3
""",
        ),
        (
            Writer(
                1,
                False,
                None,
                'e7ca004 (2025-07-31) "don\'t remove decoder bias" and its descendants before the PR-14 merge: ReLU only',
            ),
            """
    5056de4 795479b ab690dc e7ca004 fad9929
""",
        ),
        (
            Writer(
                1,
                False,
                "batch_total",
                "9f39cf8 (merge of PR-14 into e7ca004's line) to 65c5a2b: TopK/BatchTopK, plain encoder",
            ),
            """
    5fee417 65c5a2b 6845bc2 8aecac1 9f39cf8 ea2c9f5 f5d892c
""",
        ),
        (
            Writer(
                2,
                False,
                "batch_total",
                "8d38c23 (2025-07-31, schema 2) to 2fe190b: BatchTopK still the k largest of the whole batch",
            ),
            """
    2fe190b 4ddfb89 89cb76f 8d38c23 9ecf55b afb8679
""",
        ),
        (
            Writer(
                2,
                False,
                "row",
                '00d07b7 (2025-08-07) "add encode() helper": BatchTopK becomes a per-row top-k; d_vit renamed d_model at d4cc39a',
            ),
            """
    00d07b7 01e141a 03c96ca 1462014 1d8cbda 23fd0a2 254daa0 25533b9 28fcd35 29d3347 2fb5cc2 37604e1
    3bda80a 3fac6b6 46d6966 4f0167b 52aedab 53f2fdc 5513f7d 5a30313 5b9a724 60d64d9 6245263 64e2b75
    64f9bf3 654befb 6e2a640 70cd3b4 7c24d25 7eb06eb 81e73b9 859abc7 8603345 88c4e38 8c389b4 8ff9c42
    9179aa0 99755f1 9b1dad5 9ef01be a4c2c60 ac676da afb522b b633fc7 b67891f b713a4c bdbb2ef c423ac6
    c59ad4c caf75c1 d3d769e d4cc39a dc2b4e0 dd7827d dd85df9 de5078a e43e7dd e71e43b eabb166 ef4c09c
    f8acc32 f988ee1 fa5aef9 fd0542a
""",
        ),
        (
            Writer(3, False, "row", "4ab5d33 (2025-10-03, schema 3; orjson header from c3dd0ae): per-row BatchTopK"),
            """
    00d8cec 06bd330 075ac76 09476dc 0acd72f 0c98e3f 0d5a428 1912d3f 1b28c47 222e33f 24c86c5 26e1b60
    2a0340f 2b44b1b 2d36cde 307f20b 3212b07 32b86ab 34be13e 4418450 4577b90 46b831c 489a6f1 4ab5d33
    4f95abe 53a5c4d 57003ac 5d0f89c 5f5f476 65152bf 69ba2e8 6add37d 6d98860 6fee1c7 7446dc5 7d0084c
    7e3aa73 81ed625 843e4ab 84c9a50 85b0485 8a527a8 9762670 98f3b39 a0dd2bf a233556 a34d363 a38acda
    a47c79b a5ed8ad a815be7 a91ed29 aa9d144 aff7ef6 c3dd0ae c4c888f cd35778 cf04b72 cf0a044 cf72bbb
    da3d845 dcfc8fa e404270 e5a5e08 f147e07 f22007f f952d23 fa31a9f fb82c9f
""",
        ),
        (
            Writer(4, False, "row", "513cd52 (2025-11-01, schema 4: d_sae replaces exp_factor): per-row BatchTopK"),
            """
    078973d 08d277d 0b034f5 12d0c36 1c2cff5 1fd9540 2664e70 299d016 334816e 39817d1 4692187 4d9f45f
    513cd52 56b09e1 5c7e940 6a34b69 70b3954 70dad49 7af03b8 7c09533 7fafd07 80312a9 8ca5537 986aa10
    9b9daea 9fecb88 c41650c c7954a3 dceaccf de726d7 e4a6ad2 e8c7a23 ec26fad f16bfb8 f1a82bc f7b2ff1
    f85888a f9bbb01
""",
        ),
        (
            Writer(
                4,
                False,
                "batch",
                "b94e5ea (2025-11-16) and 6e5fc00: BatchTopK is the N·k largest of the batch at inference too, no threshold",
            ),
            """
    6e5fc00 b94e5ea
""",
        ),
        (
            Writer(
                4,
                False,
                "threshold",
                "ce1add2 (2025-11-16) to 3b363b4: BatchTopK's threshold buffer (JumpReLU at inference); AbsBatchTopK exists",
                abs_batchtopk=True,
            ),
            """
    0a0c20f 1925a21 2da79cf 3b363b4 59e3791 911a493 9f1415c b278e62 ce1add2 dee9f6b ec551c9 f9812ea
    fd61a34
""",
        ),
        (
            Writer(
                5, False, "threshold", "4b43976 (2025-11-26, schema 5: params carry kind/key, sparsity, aux) to 3d73f1f"
            ),
            """
    0118e17 01e7098 027f95a 042a153 0a7e2d0 0c3e2ac 0f6b5b9 105f20a 10f7dbf 14e61b0 153ff90 1ca2bfe
    1d6251a 216a77f 21d94f5 232b68d 24c379c 27214de 3263620 342cf49 387aa94 39c4554 3c8ea60 3d73f1f
    3e6ed8f 40edb35 43b5d57 45515c2 4aebb95 4b43976 4be19a1 4e96eed 524795a 527c0df 527e5c8 5796af4
    592b226 5fb4c1d 612fdc3 628cb86 642c918 64d4544 656ba06 6d6eff5 6dfa4ba 6e76202 721c7b3 738f775
    75f9ce5 763616c 7654440 792fe80 7e01ad6 8151e53 8156ea8 81cdbb5 829486e 85e06b4 8c39ac8 916870f
    9284dfa 92e7dd3 930b051 947ad78 96971a2 98d9dcf 9912cb6 9c9053b 9dfc9a0 9f4645a 9f81b8e 9fa39a3
    a631e75 a65f7cc a7fc854 aa2a0cd ac8909b ae13415 b063862 b1f86e5 b501579 b5816e0 ba5ffb8 bc6fd00
    bc76bf0 c0bb939 c360dec c7764e1 c87cfe6 cdf9a33 d07ca01 d1a2515 d8aea97 dc12c98 dcf8d22 dd03609
    de5f96f e015571 e28b2e6 e5aa176 ea10c0f ed5fc13 eeb56a6 f178a33 f1c7b64 f577708 f889616 f8daa8a
    fa20cf6 fcd79eb ff35131
""",
        ),
    )
)

_BY_COMMIT: dict[str, Writer] = {sha: w for w in WRITERS for sha in w.commits}

SUBTRACTS_B_DEC = frozenset(sha for w in WRITERS if w.schema == 1 and w.subtracts_b_dec for sha in w.commits)
"""The schema-1 writers whose encoder subtracts ``b_dec``."""
PLAIN = frozenset(sha for w in WRITERS if w.schema == 1 and not w.subtracts_b_dec for sha in w.commits)
"""The schema-1 writers whose encoder does not subtract ``b_dec``."""


def writer(commit: object) -> Writer | None:
    """The writer era of a header's ``commit`` (full or short SHA), None when unknown or absent."""
    if not isinstance(commit, str) or len(commit.strip()) < 7:
        return None
    return _BY_COMMIT.get(commit.strip().lower()[:7])


def schema1_subtracts_b_dec(commit: str | None) -> bool | None:
    """True / False for a known schema-1 writer (full or short SHA), None when unknown or absent."""
    w = writer(commit)
    return w.subtracts_b_dec if w is not None and w.schema == 1 else None
