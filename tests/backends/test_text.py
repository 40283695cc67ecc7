"""StopFilter: stop strings split across tokens, and text held back at the end of a stream."""
from backends.text import StopFilter


def feed_all(f: StopFilter, pieces: list[str]) -> tuple[str, bool]:
    out = []
    for p in pieces:
        text, hit = f.feed(p)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out), False


def test_stop_string_split_across_pieces_is_cut():
    assert feed_all(StopFilter(["END"]), ["abc E", "N", "D more"]) == ("abc ", True)


def test_possible_prefix_is_held_then_released():
    f = StopFilter(["\n\n"])
    assert f.feed("line\n") == ("line", False) and f.pending == "\n"
    assert f.feed("x") == ("\nx", False) and f.pending == ""


def test_held_text_is_what_an_engine_must_flush_at_the_end():
    f = StopFilter(["\n\n"])
    text, hit = f.feed("last line\n")
    assert (text, hit, f.pending) == ("last line", False, "\n")


def test_earliest_of_several_stops_wins_and_no_stops_passes_through():
    assert feed_all(StopFilter(["b", "a"]), ["xxab"]) == ("xx", True)
    assert StopFilter([]).feed("anything") == ("anything", False)
