"""pipeline.sae.saev_history against saev's source at every commit (issue 25 item 4).

tests/data/saev_commits.json holds, for every commit of every ref of OSU-NLP-Group/saev whose SAE
file writes a ``"schema"`` header, the source snippets that decide its forward: the ``dump``'s
schema line, the ``SparseAutoencoder`` class's ``encode`` (or ``forward``) up to the activation,
and the ``BatchTopK`` activation class. The table is checked against rules applied to those
snippets (always), and the snippets against saev's history (when a clone is present).

Regenerate the snapshot from a bare clone: ``python tests/test_saev_history.py GIT_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.sae import saev_history as H

SNAPSHOT = Path(__file__).parent / "data" / "saev_commits.json"
MIRROR = Path("/work/.mirror/OSU-NLP-Group+saev/repo")
SAE_FILES = (
    "src/saev/nn/modeling.py",
    "saev/nn/modeling.py",
    "saev/nn.py",
    "saev/modeling.py",
    "saev/sparse_autoencoder.py",
    "sae_training/sparse_autoencoder.py",
)
ACTIVATION_FILES = ("src/saev/nn/activations.py",)


# ---------------------------------------------------------------- extraction (needs a clone)


def _class(src: str, pattern: str) -> str | None:
    m = re.search(r"^class " + pattern + r".*?(?=^\S|\Z)", src, re.S | re.M)
    return m.group(0) if m else None


def _method(body: str, name: str) -> str:
    m = re.search(r"^    def " + name + r"\(.*?(?=^    (?:def|@)|^\S|\Z)", body, re.S | re.M)
    return m.group(0) if m else ""


def snippets(sae_src: str, act_src: str) -> dict | None:
    """The deciding snippets of one commit's sources; None when its dump writes no schema."""
    m = re.search(r"^def dump\(.*?(?=^\S|\Z)", sae_src, re.S | re.M)
    dump = m.group(0) if m else ""
    line = re.search(r'"schema":\s*(\d+|SCHEMA_VERSION)', dump)
    if not line:
        return None
    schema = line.group(0)
    if line.group(1) == "SCHEMA_VERSION":
        schema = re.search(r"^SCHEMA_VERSION\s*=\s*\d+", sae_src, re.M).group(0)  # pyright: ignore[reportOptionalMemberAccess]
    body = _class(sae_src, r"SparseAutoencoder\(") or ""
    enc = _method(body, "encode") or _method(body, "forward")
    cut = re.search(r"^.*(self\.activation\(|relu\().*$", enc, re.M)
    encoder = enc[: cut.end()] if cut else enc
    btk = None
    for src in (sae_src, act_src):
        btk = (
            btk
            or _class(src, r"BatchTopKActivation\(torch\.nn\.Module\)")
            or _class(src, r"BatchTopK\(torch\.nn\.Module\)")
        )
    return {"schema": schema, "encoder": encoder, "batchtopk": btk}


def extract(git_dir: Path) -> dict:
    """{short sha: snippets} for every commit of every ref whose SAE file writes a schema."""

    def git(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            ["git", "--git-dir", str(git_dir), *args], input=stdin, capture_output=True, text=True, check=True
        ).stdout

    commits = git("rev-list", "--all").split()
    paths = SAE_FILES + ACTIVATION_FILES
    queries = [f"{c}:{p}" for c in commits for p in paths]
    ids = [
        line.split()[0]
        for line in git(
            "cat-file", "--batch-check=%(objectname) %(objecttype)", stdin="\n".join(queries) + "\n"
        ).splitlines()
    ]
    blob_of = {q: (i if re.fullmatch(r"[0-9a-f]{40}", i) else None) for q, i in zip(queries, ids)}
    texts: dict[str, str] = {}
    for i in {i for i in blob_of.values() if i}:
        texts[i] = git("cat-file", "blob", i)
    out = {}
    for c in commits:
        sae_src = next(
            (
                texts[b]
                for p in SAE_FILES
                if (b := blob_of[f"{c}:{p}"]) and re.search(r"^class SparseAutoencoder\(", texts[b], re.M)
            ),
            None,
        )
        if sae_src is None:
            continue
        act_src = "".join(texts[b] for p in ACTIVATION_FILES if (b := blob_of[f"{c}:{p}"]))
        snip = snippets(sae_src, act_src)
        if snip is not None:
            out[c[:7]] = snip
    return out


def pack(per_commit: dict) -> dict:
    """Deduplicate the snippet texts (the snapshot's layout)."""
    texts: dict[str, str] = {}

    def ref(text: str | None) -> str | None:
        if text is None:
            return None
        key = hashlib.sha1(text.encode()).hexdigest()[:12]
        texts[key] = text
        return key

    commits = {c: {k: ref(v) for k, v in s.items()} for c, s in sorted(per_commit.items())}
    return {"source": "OSU-NLP-Group/saev, every ref (git rev-list --all)", "snippets": texts, "commits": commits}


def unpack(snapshot: dict) -> dict:
    t = snapshot["snippets"]
    return {c: {k: (None if v is None else t[v]) for k, v in s.items()} for c, s in snapshot["commits"].items()}


# ---------------------------------------------------------------- the rules and the tests


def derive(snip: dict) -> tuple[int, bool, str | None]:
    """(schema, encoder subtracts b_dec, BatchTopK inference meaning) from one commit's snippets."""
    schema = int(re.search(r"\d+", snip["schema"]).group(0))  # pyright: ignore[reportOptionalMemberAccess]
    subtracts = re.search(r"x\s*-\s*self\.b_dec", snip["encoder"]) is not None
    btk = snip["batchtopk"]
    if btk is None:
        meaning = None
    else:
        fwd = _method(btk, "forward")
        if 'register_buffer("threshold"' in btk:
            meaning = "threshold"
        elif "flatten" in fwd:
            meaning = "batch" if "* bsz" in fwd else "batch_total"
        else:
            meaning = "row"
    return schema, subtracts, meaning


def test_every_commit_in_the_table_matches_its_source():
    per_commit = unpack(json.loads(SNAPSHOT.read_text()))
    table = {sha for w in H.WRITERS for sha in w.commits}
    assert table == set(per_commit), "the table must list exactly the commits whose dump writes a schema"
    wrong = []
    for sha, snip in per_commit.items():
        w = H.writer(sha)
        assert w is not None
        if derive(snip) != (w.schema, w.subtracts_b_dec, w.batchtopk):
            wrong.append((sha, derive(snip), (w.schema, w.subtracts_b_dec, w.batchtopk)))
    assert not wrong


def test_the_seven_merge_line_commits_do_not_subtract():
    """Issue 25: descendants of e7ca004 whose file also holds the Matryoshka objective's ``x - self.b_dec``."""
    seven = "5fee417 65c5a2b 6845bc2 8aecac1 9f39cf8 ea2c9f5 f5d892c".split()
    per_commit = unpack(json.loads(SNAPSHOT.read_text()))
    for sha in seven:
        assert H.schema1_subtracts_b_dec(sha) is False and sha in H.PLAIN and sha not in H.SUBTRACTS_B_DEC
        assert "self.b_dec" not in per_commit[sha]["encoder"]
    assert H.schema1_subtracts_b_dec("33f4c14") is True  # the PR-14 branch itself forked before e7ca004
    assert H.schema1_subtracts_b_dec("8d38c23") is None  # schema 2: not a schema-1 writer
    assert H.writer("e7ca004660a3ab414da7002fcecfc157d5b786aa") == H.writer("e7ca004")
    assert H.writer("unknown") is None and H.writer(None) is None


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no clone of OSU-NLP-Group/saev at " + str(MIRROR))
def test_snapshot_equals_saevs_history():
    assert unpack(json.loads(SNAPSHOT.read_text())) == extract(MIRROR)


if __name__ == "__main__":
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(pack(extract(Path(sys.argv[1]))), indent=1, sort_keys=True) + "\n")
