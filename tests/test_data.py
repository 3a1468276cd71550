"""Data layer: the shipped harmful pool, seeded disjoint splits, benign sets, user files."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from core.base.errors import InputError
from core.world.data import (
    BENIGN_SPLIT_SIZES,
    HARMFUL_SPLIT_SIZES,
    Example,
    benign_splits,
    borderline_splits,
    fingerprint,
    harmbench_standard,
    harmful_pool,
    harmful_splits,
    load_dataset_file,
    load_prompts_file,
    over_refusal_prompts,
    strongreject,
    task_examples,
)
from core.world.prompts import BORDERLINE_PROMPTS, GENERAL_PROMPTS


def assert_one_line_input_error(excinfo, *fragments: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg and "Fix:" in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


def uids(examples) -> list[str]:
    return [e.uid for e in examples]


# --- harmful pool and splits --------------------------------------------------------------------


def test_harmful_pool_size_and_sources():
    assert len(harmbench_standard()) == 200
    assert len(strongreject()) == 313
    pool = harmful_pool()
    assert len(pool) == 513
    assert sum(e.source == "harmbench" for e in pool) == 200
    assert sum(e.source == "strongreject" for e in pool) == 313
    assert len(set(uids(pool))) == 513
    assert all(e.prompt.strip() and e.category.strip() for e in pool)
    assert all(e.response is None for e in pool)
    assert len({e.category for e in pool if e.source == "strongreject"}) == 6
    assert pool == harmful_pool()  # fixed order


def test_harmful_splits_sizes_and_disjoint():
    splits = harmful_splits(0)
    expected = dict(HARMFUL_SPLIT_SIZES, inject=513 - sum(HARMFUL_SPLIT_SIZES.values()))
    assert {k: len(v) for k, v in splits.items()} == expected
    assert expected == {"eval": 100, "align": 96, "curvature": 32, "forget": 64, "recovery": 64, "inject": 157}
    all_uids = [u for v in splits.values() for u in uids(v)]
    assert len(all_uids) == len(set(all_uids)) == 513
    assert set(all_uids) == set(uids(harmful_pool()))


def test_harmful_splits_deterministic_per_seed_and_vary_across_seeds():
    a, b, c = harmful_splits(0), harmful_splits(0), harmful_splits(1)
    assert {k: uids(v) for k, v in a.items()} == {k: uids(v) for k, v in b.items()}
    assert set(uids(a["eval"])) != set(uids(c["eval"]))
    assert set(uids(a["forget"])) != set(uids(c["forget"]))


def test_benign_splits_sizes_and_disjoint():
    splits = benign_splits(0)
    expected = dict(BENIGN_SPLIT_SIZES, extra=len(GENERAL_PROMPTS) - sum(BENIGN_SPLIT_SIZES.values()))
    assert {k: len(v) for k, v in splits.items()} == expected
    assert BENIGN_SPLIT_SIZES == {"eval": 60, "align": 160, "retain": 128, "rollback": 62}
    all_uids = [u for v in splits.values() for u in uids(v)]
    assert len(all_uids) == len(set(all_uids)) == len(GENERAL_PROMPTS)
    assert all(e.category == "general" for v in splits.values() for e in v)


def test_benign_splits_deterministic_per_seed_and_vary_across_seeds():
    assert uids(benign_splits(3)["eval"]) == uids(benign_splits(3)["eval"])
    assert set(uids(benign_splits(0)["eval"])) != set(uids(benign_splits(1)["eval"]))


def test_harmful_and_benign_never_overlap():
    harmful = {e.prompt for e in harmful_pool()}
    benign = {e.prompt for v in benign_splits(0).values() for e in v} | set(BORDERLINE_PROMPTS)
    assert not harmful & benign


def test_over_refusal_prompts_are_held_out_general_plus_held_out_borderline():
    prompts = over_refusal_prompts(0)
    assert len(prompts) == 60 + 40
    borderline = [e for e in prompts if e.category == "borderline"]
    assert uids(borderline) == uids(borderline_splits(0)["eval"])
    assert not set(uids(borderline)) & set(uids(borderline_splits(0)["align"]))
    assert {e.prompt for e in borderline} | {e.prompt for e in borderline_splits(0)["align"]} == set(BORDERLINE_PROMPTS)
    assert uids([e for e in prompts if e.category == "general"]) == uids(benign_splits(0)["eval"])
    assert len(set(uids(prompts))) == len(prompts)


def test_task_examples_have_iso_answers():
    ex = task_examples("eval", 20, seed=0)
    assert len(ex) == 20
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", e.response) for e in ex)
    assert ex == task_examples("eval", 20, seed=0)
    assert {e.uid for e in ex} == {f"task:eval:{i}" for i in range(20)}


def test_fingerprint_depends_on_content():
    ex = [Example("a", "b"), Example("c")]
    assert fingerprint(ex) == fingerprint(list(ex))
    assert fingerprint(ex) != fingerprint([Example("a", "b!"), Example("c")])
    assert fingerprint(ex) != fingerprint([replace(ex[0], complete=False), ex[1]])
    assert fingerprint(ex) != fingerprint(ex[::-1])


# --- user dataset files -------------------------------------------------------------------------


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_load_jsonl(tmp_path):
    rows = [
        {"prompt": "Say hi", "response": "Hi!"},
        {"prompt": " Only a prompt ", "category": "c1"},
        {"prompt": "x", "response": ""},
    ]
    path = write(tmp_path, "data.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = load_dataset_file(path)
    assert [e.prompt for e in out] == ["Say hi", "Only a prompt", "x"]
    assert [e.response for e in out] == ["Hi!", None, None]
    assert [e.category for e in out] == ["user", "c1", "user"]
    assert [e.uid for e in out] == ["user:0", "user:1", "user:2"]
    assert all(e.source == "data.jsonl" for e in out)


def test_load_jsonl_custom_columns(tmp_path):
    path = write(tmp_path, "d.jsonl", json.dumps({"q": "question?", "a": "answer."}) + "\n")
    out = load_dataset_file(path, prompt_column="q", response_column="a")
    assert out == [Example("question?", "answer.", "user", "d.jsonl", "user:0")]


def test_load_csv_with_response(tmp_path):
    path = write(tmp_path, "data.csv", 'prompt,response\n"Hello, world",Hi there\nSecond,\n')
    out = load_dataset_file(path)
    assert [(e.prompt, e.response) for e in out] == [("Hello, world", "Hi there"), ("Second", None)]


def test_load_csv_without_response_column(tmp_path):
    path = write(tmp_path, "data.csv", "prompt,category\nHow do I bake bread?,cooking\n")
    out = load_dataset_file(path)
    assert out == [Example("How do I bake bread?", None, "cooking", "data.csv", "user:0")]


def test_load_csv_uppercase_extension(tmp_path):
    path = write(tmp_path, "DATA.CSV", "prompt\nhi\n")
    assert [e.prompt for e in load_dataset_file(path)] == ["hi"]


def test_wrong_prompt_column(tmp_path):
    path = write(tmp_path, "data.csv", "question,response\nhi,there\n")
    with pytest.raises(InputError) as excinfo:
        load_dataset_file(path)
    assert_one_line_input_error(excinfo, "'prompt'", "question")
    jpath = write(tmp_path, "data.jsonl", json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(InputError) as excinfo:
        load_dataset_file(jpath)
    assert_one_line_input_error(excinfo, "'prompt'", "text")


@pytest.mark.parametrize(
    "name, content", [("e.jsonl", ""), ("e.jsonl", "\n  \n"), ("e.csv", ""), ("e.csv", "prompt,response\n")]
)
def test_empty_dataset(tmp_path, name, content):
    with pytest.raises(InputError) as excinfo:
        load_dataset_file(write(tmp_path, name, content))
    assert_one_line_input_error(excinfo, "empty")


def test_empty_prompt_value(tmp_path):
    path = write(tmp_path, "d.jsonl", json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "  "}) + "\n")
    with pytest.raises(InputError) as excinfo:
        load_dataset_file(path)
    assert_one_line_input_error(excinfo, "row 2")


def test_malformed_json_line(tmp_path):
    path = write(tmp_path, "d.jsonl", json.dumps({"prompt": "ok"}) + "\n{not json\n")
    with pytest.raises(InputError) as excinfo:
        load_dataset_file(path)
    assert_one_line_input_error(excinfo, "line 2", "not valid JSON")


def test_json_line_not_an_object(tmp_path):
    path = write(tmp_path, "d.jsonl", '["prompt", "x"]\n')
    with pytest.raises(InputError) as excinfo:
        load_dataset_file(path)
    assert_one_line_input_error(excinfo, "line 1", "not a JSON object")


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.csv"])
def test_non_utf8_bytes(tmp_path, name):
    path = write(tmp_path, name, b"prompt\ncaf\xe9 au lait\n" if name.endswith(".csv") else b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(InputError) as excinfo:
        load_dataset_file(path)
    assert_one_line_input_error(excinfo, "UTF-8")


def test_unknown_extension(tmp_path):
    path = write(tmp_path, "data.txt", "prompt\nhi\n")
    with pytest.raises(InputError) as excinfo:
        load_dataset_file(path)
    assert_one_line_input_error(excinfo, "'.txt'")


def test_missing_dataset_file(tmp_path):
    with pytest.raises(InputError) as excinfo:
        load_dataset_file(tmp_path / "nope.jsonl")
    assert_one_line_input_error(excinfo, "does not exist")


# Real-world files that the loader must read correctly (or reject with an InputError).


def test_csv_with_utf8_bom(tmp_path):
    # Excel's "CSV UTF-8" export starts with a byte-order mark; the header is still "prompt".
    path = write(tmp_path, "excel.csv", "\ufeffprompt,response\nhi,there\n")
    assert [(e.prompt, e.response) for e in load_dataset_file(path)] == [("hi", "there")]


def test_jsonl_with_utf8_bom(tmp_path):
    path = write(tmp_path, "bom.jsonl", "\ufeff" + json.dumps({"prompt": "hi"}) + "\n")
    assert [e.prompt for e in load_dataset_file(path)] == ["hi"]


def test_csv_multiline_quoted_field_keeps_newlines(tmp_path):
    # Multi-line responses are normal SFT data; a quoted CSV field may contain newlines.
    path = write(tmp_path, "ml.csv", 'prompt,response\nList two fruits,"1. apple\n2. pear"\n')
    out = load_dataset_file(path)
    assert [(e.prompt, e.response) for e in out] == [("List two fruits", "1. apple\n2. pear")]


def test_jsonl_string_with_unicode_line_separator(tmp_path):
    # json.dumps(..., ensure_ascii=False) writes U+2028, U+2029 and U+0085 raw inside strings;
    # JSONL lines are separated by "\n" only, so each of these rows is still one line.
    prompts = [f"first{c}second" for c in ("\u2028", "\u2029", "\u0085")]
    lines = [json.dumps({"prompt": p, "response": "ok"}, ensure_ascii=False) for p in prompts]
    assert all("\n" not in line for line in lines)
    path = write(tmp_path, "ls.jsonl", "\n".join(lines) + "\n")
    assert [e.prompt for e in load_dataset_file(path)] == prompts


def test_csv_row_with_extra_fields_is_input_error(tmp_path):
    # An unquoted comma in a prompt gives a row with more fields than the header.
    path = write(tmp_path, "extra.csv", "prompt,response\nhello, world,hi\n")
    with pytest.raises(InputError) as excinfo:
        load_dataset_file(path)
    assert_one_line_input_error(excinfo, "extra.csv")


# --- prompts files ------------------------------------------------------------------------------


def test_load_prompts_file_skips_blank_lines(tmp_path):
    path = write(tmp_path, "p.txt", "\n  first prompt  \n\n\t\nsecond prompt\n")
    out = load_prompts_file(path)
    assert [e.prompt for e in out] == ["first prompt", "second prompt"]
    assert [e.uid for e in out] == ["file:0", "file:1"]
    assert all(e.source == "p.txt" and e.response is None and e.category == "user" for e in out)


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_load_prompts_file_empty(tmp_path, content):
    with pytest.raises(InputError) as excinfo:
        load_prompts_file(write(tmp_path, "p.txt", content))
    assert_one_line_input_error(excinfo, "no prompts")


def test_load_prompts_file_missing_and_non_utf8(tmp_path):
    with pytest.raises(InputError) as excinfo:
        load_prompts_file(tmp_path / "missing.txt")
    assert_one_line_input_error(excinfo, "does not exist")
    with pytest.raises(InputError) as excinfo:
        load_prompts_file(write(tmp_path, "latin1.txt", b"caf\xe9\n"))
    assert_one_line_input_error(excinfo, "UTF-8")
