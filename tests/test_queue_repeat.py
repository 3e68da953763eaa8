"""An identical failure is logged once; a flood of distinct ones cannot grow the memory."""

from oauthmail.smtp.queue.parts import RepeatFilter


def test_the_same_text_is_new_once() -> None:
    said = RepeatFilter()
    assert said.isNew(("m1", "a@x"), "451 busy")
    assert not said.isNew(("m1", "a@x"), "451 busy")
    assert said.isNew(("m1", "a@x"), "452 full")  # a change is news
    assert said.isNew(("m1", "a@x"), "451 busy")  # and so is going back
    assert said.isNew(("m2", "a@x"), "451 busy")  # another message is its own story


def test_memory_is_bounded_oldest_first() -> None:
    said = RepeatFilter(limit=3)
    for i in range(10):
        assert said.isNew(i, "x")
    assert said.isNew(0, "x")  # forgotten long ago
    assert not said.isNew(9, "x")  # still remembered
