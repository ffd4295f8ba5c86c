"""Stop strings: matched across token boundaries, never leaked, held text released at the end."""

from __future__ import annotations

from triode.streaming.stop import StopStringMatcher


def feed_all(matcher: StopStringMatcher, pieces: list[str]) -> list[str]:
    out = []
    for piece in pieces:
        out.append(matcher.feed(piece))
        if matcher.matched:
            break
    return out


def test_stop_string_split_across_tokens_is_not_leaked():
    m = StopStringMatcher(["</end>"])
    assert feed_all(m, ["Hello ", "wor", "ld<", "/e", "nd> more"]) == [
        "Hello ",
        "wor",
        "ld",
        "",
        "",
    ]
    assert m.matched == "</end>"


def test_text_that_stops_being_a_prefix_is_released():
    m = StopStringMatcher(["STOP"])
    assert m.feed("ab ST") == "ab "
    assert m.held_text == "ST"
    assert m.feed("OX") == "STOX"
    assert m.matched is None


def test_include_stop_string_in_output():
    m = StopStringMatcher(["##"], include_in_output=True)
    assert feed_all(m, ["a #", "# b"]) == ["a ", "##"]


def test_earliest_of_several_stop_strings_wins():
    m = StopStringMatcher(["world", "lo w"])
    assert m.feed("hello world") == "hel"
    assert m.matched == "lo w"


def test_flush_releases_held_text_when_generation_ends_otherwise():
    m = StopStringMatcher(["\n\nUser:"])
    assert m.feed("answer\n\nUs") == "answer"
    assert m.flush() == "\n\nUs"


def test_no_stop_strings_is_a_pass_through():
    m = StopStringMatcher([])
    assert m.feed("anything") == "anything"


def test_concatenation_equals_text_before_the_stop():
    text = "one two three STOP four"
    for cut in range(1, len(text)):
        m = StopStringMatcher(["STOP", "xyz"])
        pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
        assert "".join(feed_all(m, pieces)) == "one two three "
