"""evalkit.data.prompts: every prompt-set format, the spec grammar, and the vendored files."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evalkit.data.prompts import (
    COMPBENCH_CATEGORIES,
    COMPBENCH_DEFAULT,
    PROMPTS_DIR,
    Prompt,
    PromptSet,
    compbench_prompts,
    geneval_prompts,
    jsonl_prompts,
    load_prompts,
    parti_prompts,
    shapes_prompts,
    table_prompts,
    text_prompts,
)
from evalkit.errors import UserError
from evalkit.shapes.subset import write_subset
from evalkit.shapes.world import CATEGORIES, PromptSpec, sample

SHARED_PROMPTS = Path(__file__).resolve().parents[2] / "shared/data/prompts"
LAION_META = Path(__file__).resolve().parents[2] / "shared/data/laion_meta"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_CACHE", str(tmp_path / "cache"))


# ---------------------------------------------------------------------------- vendored benchmark files


def test_vendored_files_are_byte_identical_with_licenses():
    if not SHARED_PROMPTS.is_dir():
        pytest.skip(f"upstream copies not found at {SHARED_PROMPTS} (CI expects ../shared beside the clone)")
    upstream = sorted(p.relative_to(SHARED_PROMPTS) for p in SHARED_PROMPTS.rglob("*") if p.is_file())
    assert upstream, "no upstream prompt files"
    for rel in upstream:
        assert (PROMPTS_DIR / rel).read_bytes() == (SHARED_PROMPTS / rel).read_bytes(), rel
    readme = (PROMPTS_DIR / "README.md").read_text()
    for source in ("google-research/parti", "djghosh13/geneval", "Karine-Huang/T2I-CompBench"):
        assert source in readme


def test_partiprompts_keep_category_and_challenge():
    ps = parti_prompts()
    assert ps.name == "parti" and len(ps) == 1632 and not ps.skipped
    assert len(ps.categories()) == 12 and "Food & Beverage" in ps.categories()
    assert len({p.meta["challenge"] for p in ps}) == 11
    assert ps[0] == Prompt("parti-00000", "bond", "Abstract", {"challenge": "Basic", "note": ps[0].meta["note"]})
    quoted = [p for p in ps if '"' in p.text]
    assert quoted and all(p.text.count('"') % 2 == 0 for p in quoted)  # TSV quotes kept literally
    assert sum(len(v) for v in ps.by_category().values()) == 1632
    assert load_prompts("parti:default").texts() == ps.texts() == load_prompts("parti").texts()


def test_geneval_tag_and_expectations():
    ps = geneval_prompts()
    assert len(ps) == 553
    assert ps.categories() == sorted(["single_object", "two_object", "counting", "colors", "position", "color_attr"])
    two = next(p for p in ps if p.text == "a photo of two clocks")
    assert two.category == "counting" and two.meta["include"] == [{"class": "clock", "count": 2}]
    assert two.meta["exclude"] == [{"class": "clock", "count": 3}]
    assert "exclude" not in ps[0].meta
    lines = (PROMPTS_DIR / "geneval" / "generation_prompts.txt").read_text().splitlines()
    assert ps.texts() == lines


def test_compbench_crlf_and_categories():
    raw = (COMPBENCH_DEFAULT / "color_val.txt").read_bytes()
    assert b"\r\n" in raw  # still CRLF on disk
    ps = compbench_prompts()
    assert len(ps) == 2400 and ps.categories() == sorted(COMPBENCH_CATEGORIES)
    assert all("\r" not in p.text and p.text == p.text.strip() for p in ps)
    color = load_prompts("compbench:color")
    assert color.name == "compbench-color" and len(color) == 300
    assert color[0].text == "a green bench and a blue bowl" and color[0].id == "compbench-color-00000"
    assert len(load_prompts("compbench:color,spatial")) == 600
    assert len(load_prompts(f"compbench:{COMPBENCH_DEFAULT / 'shape_val.txt'}")) == 300
    assert len(load_prompts(str(COMPBENCH_DEFAULT))) == 2400  # a bare folder of *_val.txt


# ---------------------------------------------------------------------------- generic formats


def test_text_file_crlf_blank_lines_and_bom(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_bytes("\ufeffa cat\r\n\r\n  a dog  \r\n   \r\nlast\u2028line".encode())
    ps = load_prompts(str(f))
    assert ps.texts() == ["a cat", "a dog", "last\u2028line"]
    assert [p.id for p in ps] == ["mine-00000", "mine-00002", "mine-00004"]  # ids follow line numbers
    assert ps.skipped.as_dict() == {"empty": 2}
    assert load_prompts(f"txt:{f}").texts() == ps.texts()
    tagged = text_prompts(f, name="mine", category="pets")
    assert tagged.categories() == ["pets"] and tagged[0].id == "mine-00000"


def test_jsonl_fields_ids_and_specs(tmp_path):
    f = tmp_path / "p.jsonl"
    spec = sample(1, seed=0)[0].spec.to_dict()
    rows = [
        {"prompt": "a red circle", "category": "colors", "id": "x1", "spec": spec},
        {"text": "two stars", "tag": "counting", "weight": 2},
        {"caption": ""},
        {"id": "x4"},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    ps = jsonl_prompts(f)
    assert [(p.id, p.text, p.category) for p in ps] == [
        ("x1", "a red circle", "colors"),
        ("p-00001", "two stars", "counting"),
    ]
    assert ps[0].spec == spec and ps[1].meta == {"weight": 2}
    assert ps.skipped.total == 2
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        load_prompts(str(tmp_path / "bad.jsonl"))
    (tmp_path / "dup.jsonl").write_text('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n')
    with pytest.raises(UserError, match="twice"):
        load_prompts(f"jsonl:{tmp_path / 'dup.jsonl'}")


def test_csv_drawbench_style(tmp_path):
    f = tmp_path / "drawbench.csv"
    f.write_text('Prompts,Category\n"A red colored car, parked",Colors\n,Colors\n"A storefront\nwith a sign",Text\n')
    ps = table_prompts(f)
    assert ps.texts() == ["A red colored car, parked", "A storefront\nwith a sign"] and ps.categories() == [
        "Colors",
        "Text",
    ]
    assert ps.skipped.total == 1
    (tmp_path / "nohead.tsv").write_text("just\ta row\n")
    with pytest.raises(UserError, match="no prompt column"):
        load_prompts(str(tmp_path / "nohead.tsv"))


# ---------------------------------------------------------------------------- shapes world and LAION captions


def test_shapes_prompts_carry_specs():
    ps = shapes_prompts(30, seed=2, split="test", categories=["position", "counting"])
    assert len(ps) == 30 and set(ps.categories()) <= {"position", "counting"}
    samples = sample(30, seed=2, split="test", categories=["position", "counting"])
    assert ps.texts() == [s.caption for s in samples] and ps[0].id == samples[0].key
    for p, s in zip(ps, samples):
        assert PromptSpec.from_dict(p.spec) == s.spec and p.meta == {"split": "test"}
    spec_form = load_prompts("shapes:30:2:test:position,counting")
    assert spec_form.prompts == ps.prompts
    assert load_prompts("shapes:5").texts() == [s.caption for s in sample(5, seed=0, split="test")]
    comp = load_prompts("shapes:10:compositional:7")
    assert [p.id for p in comp][:1] == ["compositional-7-000000"]
    assert set(load_prompts("shapes:200").categories()) == set(CATEGORIES)


def test_laion_captions_as_prompts(tmp_path):
    f = tmp_path / "meta.parquet"
    pq.write_table(pa.table({"URL": ["u0", "u1", "u2", "u3"], "TEXT": ["a cat", "  ", None, "a dog"]}), f)
    ps = load_prompts(f"laion:{f}")
    assert ps.texts() == ["a cat", "a dog"] and ps.skipped.as_dict() == {"empty": 2}
    assert ps[0].id == "000000000" and ps[0].meta == {"url": "u0"} and ps[0].category is None
    assert load_prompts(str(f)).texts() == ps.texts()  # bare .parquet path

    shapes = tmp_path / "shapes"
    write_subset(sample(6, seed=1, split="test"), shapes, size=16)
    sp = load_prompts(str(shapes))
    expected = sample(6, seed=1, split="test")
    assert sp.texts() == [s.caption for s in expected]
    assert [PromptSpec.from_dict(p.spec) for p in sp] == [s.spec for s in expected]
    assert [p.category for p in sp] == [s.spec.category for s in expected]
    assert load_prompts(f"laion:{shapes / 'shards'}").texts() == sp.texts()


def test_real_laion_metadata_as_prompt_set():
    f = LAION_META / "test_10000.parquet"
    if not f.exists():
        pytest.skip(f"real LAION metadata not found at {f} (CI expects ../shared beside the clone)")
    ps = load_prompts(f"laion:{f}")
    assert len(ps) + ps.skipped.total == 10000 and len(ps) > 9000
    # real data: one row of this file has shifted columns (TEXT holds a similarity, URL "UNLIKELY")
    assert sum(p.meta["url"].startswith("http") for p in ps) >= 9990
    assert len({p.id for p in ps}) == len(ps)
    few = load_prompts(f"laion:{f}", n=50, seed=3)
    assert 45 <= len(few) <= 50 and set(few.texts()) <= set(ps.texts())


# ---------------------------------------------------------------------------- the set itself and the grammar


def test_sample_filter_and_by_category():
    ps = PromptSet("t", [Prompt(f"p{i}", f"text {i}", "a" if i % 3 else None) for i in range(30)])
    s = ps.sample(10, seed=1)
    assert len(s) == 10 and [p.id for p in s] == [p.id for p in ps if p in s.prompts]  # original order
    assert s.prompts == ps.sample(10, seed=1).prompts != ps.sample(10, seed=2).prompts
    assert set(p.id for p in s) <= set(p.id for p in ps.sample(20, seed=1))
    assert len(ps.sample(99)) == 30
    groups = ps.by_category()
    assert list(groups) == ["a", "uncategorized"] and len(groups["uncategorized"]) == 10
    assert len(ps.filter(["a"])) == 20
    with pytest.raises(UserError, match="no category b"):
        ps.filter(["b"])
    assert Prompt.from_dict(json.loads(json.dumps(ps[1].to_dict()))) == ps[1]
    assert len(load_prompts("parti", n=40, seed=0)) == 40


@pytest.mark.parametrize(
    "spec, match",
    [
        ("nonsense", "shapes:N"),
        ("", "empty prompt set"),
        ("shapes:", "needs a count"),
        ("shapes:10:nosuchsplit", "not a seed, a split"),
        ("compbench:flavour", "nor categories"),
        ("laion:", "needs a path"),
        ("parti:/no/such/file.tsv", "no such prompt file"),
        ("prompts.yaml", "not a file or folder"),
    ],
)
def test_bad_specs_are_user_errors(spec, match):
    with pytest.raises(UserError, match=match):
        load_prompts(spec)


def test_unknown_file_type(tmp_path):
    (tmp_path / "p.yaml").write_text("- a cat\n")
    with pytest.raises(UserError, match="unknown prompt file type"):
        load_prompts(str(tmp_path / "p.yaml"))
