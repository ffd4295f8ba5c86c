"""Grammar compilation (errors naming the field, the per-spec cache), schema preparation, and
the manager's per-sample matchers against independent llguidance matchers (hypothesis), on the
bundled tokenizer; no model runs here."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.engine.helpers import make_scheduler
from triode.engine.core.request import Request, RequestStatus
from triode.engine.errors import InvalidRequestError
from triode.engine.sampling.sampling_params import SamplingParams
from triode.engine.sampling.structured_outputs import StructuredOutputsParams as Spec
from triode.engine.structured.compiler import GrammarCompiler
from triode.engine.structured.json_schema import ascii_regex, prepare_schema
from triode.engine.structured.manager import StructuredOutputManager

VOCAB = 49152
EOS = 2


@pytest.fixture(scope="module")
def compiler(tokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, VOCAB, [EOS])


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (Spec(json={"type": "foo"}), "invalid JSON schema at type"),
        (Spec(json={"type": "object", "required": "name"}), "invalid JSON schema at required"),
        (Spec(json={"$ref": "#/$defs/missing"}), "missing"),
        (Spec(json={"type": "array", "uniqueItems": True}, strict=True), "uniqueItems"),
        (Spec(json={"type": "string", "pattern": "(unclosed"}), "unclosed group"),
        (Spec(regex="(unclosed"), "unclosed group"),
        (Spec(grammar="start: undefined_rule"), "undefined_rule"),
    ],
)
def test_bad_constraints_are_refused_naming_the_field(compiler, spec, fragment):
    with pytest.raises(InvalidRequestError) as info:
        compiler.compile(spec, "response_format")
    assert info.value.param == "response_format"
    assert fragment in str(info.value)


def test_ecma_patterns_python_cannot_read_are_compiled_not_refused(compiler):
    matcher = compiler.compile(Spec(json={"type": "string", "pattern": r"^\p{Lu}\p{Ll}+$"}))
    ids = compiler._hf_tokenizer.encode('"Émile"', add_special_tokens=False)
    fresh = matcher.deep_copy()
    assert fresh.try_consume_tokens(ids) == len(ids) and fresh.is_accepting()


def test_lenient_schemas_ignore_what_cannot_be_enforced(compiler):
    compiler.compile(Spec(json={"type": "array", "uniqueItems": True}))  # no error


def test_compiled_matchers_are_cached_per_spec():
    from transformers import AutoTokenizer

    from triode.engine.models.loader import resolve_model

    tok = AutoTokenizer.from_pretrained(str(resolve_model(None).folder))
    comp = GrammarCompiler(tok, VOCAB, [EOS], cache_size=2)
    a, b, c = Spec(regex="a+"), Spec(regex="b+"), Spec(regex="c+")
    assert comp.compile(a) is comp.compile(Spec(regex="a+"))
    assert comp.num_compiled == 1
    comp.compile(b)
    comp.compile(a)  # a becomes the most recent
    comp.compile(c)  # evicts b
    assert comp.is_cached(a) and comp.is_cached(c) and not comp.is_cached(b)
    assert comp.num_compiled == 3


def test_prepare_schema_closes_listed_objects_but_not_open_or_composed_ones():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"x": {"type": "string", "pattern": r"^\d+$"}}},
            "b": {"type": "object", "properties": {}, "additionalProperties": True},
            "c": {"allOf": [{"properties": {"y": {}}}, {"properties": {"z": {}}}]},
            "properties": {"enum": [{"properties": 1}]},
        },
        "$defs": {"d": {"type": "object", "properties": {"q": {}}}},
    }
    out = prepare_schema(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["a"]["properties"]["x"]["pattern"] == r"^[0-9]+$"
    assert out["properties"]["b"]["additionalProperties"] is True
    assert all("additionalProperties" not in s for s in out["properties"]["c"]["allOf"])
    assert out["properties"]["properties"] == {"enum": [{"properties": 1}]}
    assert out["$defs"]["d"]["additionalProperties"] is False
    assert schema["properties"]["a"].get("additionalProperties") is None  # a copy


PATTERNS = [r"\d+", r"[\d-]{2,4}", r"\D\d", r"[^\d]x", r"a\\d", r"[]\d]+", r"(\d|[a-c])*"]


@settings(max_examples=200, deadline=None)
@given(pattern=st.sampled_from(PATTERNS), text=st.text(alphabet="0129abcx-]\\d٣", max_size=6))
def test_ascii_regex_means_what_python_does_with_ascii_digits(pattern, text):
    expected = re.fullmatch(pattern, text, re.ASCII) is not None
    assert (re.fullmatch(ascii_regex(pattern), text) is not None) == expected


# ---- the manager against independent matchers ------------------------------------------------

GRAMMARS = [
    Spec(regex=r"(yes|no|maybe)( [a-z]{1,5}){0,3}\."),
    Spec(regex=r"[a-z ]{30,90}\."),
    Spec(
        json={
            "type": "object",
            "properties": {"k": {"enum": ["a", "bb"]}, "n": {"type": "integer", "maximum": 99}},
            "required": ["k"],
        }
    ),
    Spec(choice=["alpha", "beta gamma", "delta"]),
]


def allowed_ids(row: np.ndarray) -> list[int]:
    bits = np.unpackbits(row.view(np.uint8), bitorder="little")[:VOCAB]
    return np.nonzero(bits)[0].tolist()


def constrained_request(
    rid: str, spec: Spec | None, n: int, prompt_len: int, max_tokens: int = 40
) -> Request:
    params = SamplingParams(temperature=0, n=n, max_tokens=max_tokens, structured_outputs=spec)
    prompt = list(range(100, 100 + prompt_len))
    return Request(rid, prompt, params, max_tokens=max_tokens, eos_token_id=EOS)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_manager_masks_equal_fresh_matchers_fed_the_same_tokens(compiler, data):
    # A small KV pool and token budget: requests get chunked and preempted (recomputed), and
    # an n>1 request forks; every mask must still equal an independent matcher's.
    scheduler = make_scheduler(
        num_blocks=data.draw(st.integers(12, 18)),
        block_size=4,
        max_num_batched_tokens=16,
        max_num_seqs=4,
    )
    manager = StructuredOutputManager(compiler)
    specs = {}
    for i in range(data.draw(st.integers(3, 5))):
        spec = data.draw(st.sampled_from([*GRAMMARS, None]))
        n = data.draw(st.sampled_from([1, 1, 2]))
        request = constrained_request(f"r{i}", spec, n, data.draw(st.integers(1, 8)))
        scheduler.add_request(request)
        if spec is not None:
            manager.add_request(request.request_id, spec)
            specs[request.request_id] = spec
    reference = {}  # sample id -> independent matcher fed every appended token
    for _ in range(200):
        if not scheduler.has_unfinished_requests():
            break
        out = scheduler.schedule()
        masks = manager.start_step(out)
        rows = {}
        if masks is not None:
            bitmask = masks.wait().numpy()
            rows = {sid: bitmask[i] for i, sid in enumerate(masks.sample_ids)}
        sampled = {}
        for item in out.scheduled:
            for sid in item.sample_ids:
                group = sid.split("#")[0]
                if group not in specs:
                    assert sid not in rows
                    sampled[sid] = 7
                    continue
                if sid not in reference:
                    reference[sid] = compiler.compile(specs[group]).deep_copy()
                # compute_bitmask has a spare word past the vocabulary; ours has none.
                expected = np.frombuffer(reference[sid].compute_bitmask(), dtype=np.int32)
                expected = expected[: len(rows[sid])]
                assert np.array_equal(rows[sid], expected), sid
                sampled[sid] = data.draw(st.sampled_from(allowed_ids(rows[sid])))
        updated, _ = scheduler.update_from_output(out, sampled)
        for request in updated:
            if request.request_id in reference and not request.is_finished:
                assert reference[request.request_id].consume_token(request.output_token_ids[-1])
        assert manager.take_rejected() == {}
    assert not scheduler.has_unfinished_requests()
    manager.start_step(scheduler.schedule())  # hands over the last finished ids
    assert manager.num_tracked == 0
    manager.close()


def test_a_token_outside_the_mask_is_reported_once(compiler):
    scheduler = make_scheduler()
    manager = StructuredOutputManager(compiler)
    request = constrained_request("r", Spec(choice=["alpha"]), 1, 3)
    scheduler.add_request(request)
    manager.add_request("r", request.sampling_params.structured_outputs)
    out = scheduler.schedule()
    assert manager.start_step(out).sample_ids == ["r"]
    scheduler.update_from_output(out, {"r": 7})  # not "alpha"'s first token
    masks = manager.start_step(scheduler.schedule())
    masks.wait()
    assert list(manager.take_rejected()) == ["r"]
    assert manager.take_rejected() == {}
    scheduler.finish_requests(["r"], RequestStatus.FINISHED_ERROR)
    manager.close()
